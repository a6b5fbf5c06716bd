"""Guest registration host app.

Plugin authors need only ``hookimpl`` (and ``hookspec`` to publish hooks of
their own) from here, plus the types in ``guest_registration.exports`` /
``guest_registration.admin``; see ``guest_registration.hookspecs`` for the contract.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from flask import Flask

from .hookspecs import hookimpl, hookspec

__all__ = ["create_app", "hookimpl", "hookspec", "__version__"]
__version__ = "0.1.0"

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def _private(database: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        try:
            os.chmod(database + suffix, 0o600)
        except OSError:
            pass


def configure_engine(engine) -> None:
    """SQLite: WAL (readers such as a long export never block registrations),
    a busy timeout instead of instant "database is locked", foreign keys on."""
    if engine.dialect.name != "sqlite":
        return
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection, record):
        cur = dbapi_connection.cursor()
        if engine.url.database not in (None, "", ":memory:"):
            cur.execute("PRAGMA journal_mode=WAL")
            _private(engine.url.database)  # guest data: this user only, whatever the umask
        cur.execute("PRAGMA busy_timeout=10000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()


def _end_sessions_on_logout(app: Flask, security) -> None:
    """Logging out ends *every* session of the user: copied session cookies, the
    remember cookie and API tokens are all checked against the user's uniquifiers,
    which are rotated here."""
    from flask_login import user_logged_out

    from .extensions import db

    def rotate(sender, user=None, **extra):
        if user is None or not getattr(user, "is_authenticated", False):
            return
        security.datastore.set_uniquifier(user)
        if hasattr(user, "fs_token_uniquifier"):
            security.datastore.set_token_uniquifier(user)
        db.session.commit()

    user_logged_out.connect(rotate, app, weak=False)


def create_app(config: Mapping[str, Any] | None = None, *,
               instance_path: str | None = None,
               extra_plugins: Iterable[tuple[str, Any]] = ()) -> Flask:
    """Build the app: config, extensions, plugins, blueprints, admin, commands.

    The hooks are called in the order :mod:`guest_registration.hookspecs` documents.
    """
    from . import cli, i18n, limits, web
    from .admin import build_admin
    from .config import build_config
    from .exports import FormatRegistry
    from .extensions import csrf, db
    from .models import Role, User
    from .plugins import apply_plugin_settings, build_plugin_manager, hook_items
    from .registration import bp as registration_bp
    from flask_security import Security

    from .availability import UserDatastore

    instance_path = instance_path or os.environ.get("INSTANCE_PATH") or None
    app = Flask(__name__, instance_path=instance_path, instance_relative_config=True,
                template_folder=str(TEMPLATES))
    app.config.update(build_config(app.instance_path, config))
    from .config import ensure_private_folder

    ensure_private_folder(Path(app.instance_path))  # setup must not die on a missing folder
    pm = build_plugin_manager(app.config["DISABLED_PLUGINS"], extra_plugins)
    app.extensions["plugin_manager"] = pm
    apply_plugin_settings(app.config, pm, app.instance_path, config or {})

    db.init_app(app)
    with app.app_context():
        configure_engine(db.engine)
    csrf.init_app(app)  # before Security, so Flask-Security's CSRF handling sees it
    i18n.init_app(app)  # before Security too: it reads the translation folders
    security = Security(app, UserDatastore(db, User, Role))
    _end_sessions_on_logout(app, security)
    pm.hook.init_app(app=app)

    app.extensions["export_formats"] = FormatRegistry.from_plugins(pm)
    app.register_blueprint(registration_bp)
    for blueprint in hook_items(pm, "register_blueprints", app=app):
        app.register_blueprint(blueprint)
    app.extensions["guest_admin"] = build_admin(app)
    web.init_app(app)
    limits.init_app(app)
    cli.init_app(app)
    return app
