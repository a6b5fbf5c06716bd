"""The application factory: config, extensions, plugins, blueprints, admin, commands.

``create_app`` is re-exported as ``guest_registration.create_app``. The hooks are
called in the order :mod:`guest_registration.hookspecs` documents.

``create_app(web=False)`` builds the *command-line app*: configuration, database,
plugins (settings, ``init_app``, export formats) and commands, without what only
pages and requests need (Flask-Security, Flask-Babel, Flask-Migrate and the schema
guard, blueprints, Flask-Admin, headers, limits, ``/metrics``). Most commands run on
it and start in a fraction of the time; :mod:`guest_registration.cli` decides which.
Both are built by the one function below, the web parts skipped, never copied.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

from flask import Flask
from jinja2 import FileSystemLoader

from .paths import default_instance_path, template_folders

#: the app's import name: its root folder, logger name and Flask's ``app.name``
APP_NAME = "guest_registration"


def _rotate_uniquifiers(sender: Flask, user=None, **extra) -> None:
    """Flask-Login's ``user_logged_out`` (sent by the app logging out): see
    :func:`_end_sessions_on_logout`."""
    from .extensions import db

    if user is None or not getattr(user, "is_authenticated", False):
        return
    datastore = sender.extensions["security"].datastore
    datastore.set_uniquifier(user)
    if hasattr(user, "fs_token_uniquifier"):
        datastore.set_token_uniquifier(user)
    db.session.commit()


def _end_sessions_on_logout(app: Flask) -> None:
    """Logging out ends *every* session of the user: copied session cookies, the
    remember cookie and API tokens are all checked against the user's uniquifiers,
    which are rotated here. A module function, not a closure over the app: the
    signal is global, and a receiver holding its app (as one connected with
    ``weak=False`` did) kept every app a process ever built alive (the test
    suite's process: 8 M objects, 8 s per full collection)."""
    from flask_login import user_logged_out

    user_logged_out.connect(_rotate_uniquifiers, app)


def _configured_flask(config: Mapping[str, Any] | None, instance_path: str | None) -> Flask:
    """The Flask object with its configuration, instance folder and template folders
    (the site's overrides first, then the package's own; see :mod:`.paths`)."""
    from .config import SharedFolderError, build_config, ensure_private_folder

    app = Flask(APP_NAME, instance_path=instance_path or default_instance_path(),
                instance_relative_config=True, template_folder="templates")
    app.config.update(build_config(app.instance_path, config))
    ensure_private_folder(Path(app.instance_path))  # setup must not die on a missing folder
    try:  # guests' photos: refused when shared (/tmp), made private, as setup does
        ensure_private_folder(Path(app.config["UPLOAD_FOLDER"]), "UPLOAD_FOLDER")
    except SharedFolderError:
        raise
    except OSError:  # not reachable now (a mount): `status` and the form say so
        pass
    folders = template_folders(app.instance_path, app.config.get("TEMPLATE_OVERRIDES"))
    app.jinja_loader = FileSystemLoader([str(folder) for folder in folders])
    return app


def _init_extensions(app: Flask) -> None:
    """CSRF, languages, Flask-Security (users and roles) and Flask-Migrate, in the
    order they need: what pages, logins and schema changes need."""
    from flask_security import Security

    from . import i18n, schema
    from .availability import UserDatastore
    from .extensions import csrf, db
    from .users import Role, User

    csrf.init_app(app)  # before Security, so Flask-Security's CSRF handling sees it
    i18n.init_app(app)  # before Security too: it reads the translation folders
    Security(app, UserDatastore(db, User, Role))
    _end_sessions_on_logout(app)
    schema.init_app(app)


def _init_web(app: Flask, pm) -> None:
    """Blueprints (the host's, then the plugins'), the admin panel, headers, limits
    and ``/metrics``."""
    from . import limits, metrics, web
    from .admin import build_admin
    from .registration import bp as registration_bp
    from .registry import hook_items

    app.register_blueprint(registration_bp)
    for blueprint in hook_items(pm, "register_blueprints", app=app):
        app.register_blueprint(blueprint)
    app.extensions["guest_admin"] = build_admin(app)
    web.init_app(app)
    limits.init_app(app)
    metrics.init_app(app)  # /metrics, request counters (guest_registration.metrics)


def create_app(config: Mapping[str, Any] | None = None, *,
               instance_path: str | None = None,
               extra_plugins: Iterable[tuple[str, Any]] = (), web: bool = True) -> Flask:
    """Build the app: config, extensions, plugins, blueprints, admin, commands.

    ``instance_path`` wins over ``INSTANCE_PATH`` and the default (:mod:`.paths`).
    ``web=False``: the command-line app (see the module doc); the plugins'
    ``register_translations``, ``register_blueprints`` and ``register_admin_views``
    are not called, and ``app.extensions["guest_web"]`` says which one was built.
    """
    from . import commands
    from .exports import FormatRegistry
    from .extensions import bind_database
    from .plugins import apply_plugin_settings, build_plugin_manager

    app = _configured_flask(config, instance_path)
    app.extensions["guest_web"] = web
    pm = build_plugin_manager(app.config["DISABLED_PLUGINS"], extra_plugins)
    app.extensions["plugin_manager"] = pm
    apply_plugin_settings(app.config, pm, app.instance_path, config or {})
    bind_database(app, now=web)  # the command-line app: on first use (extensions)
    if web:
        _init_extensions(app)
    pm.hook.init_app(app=app)

    app.extensions["export_formats"] = FormatRegistry.from_plugins(pm)
    if web:
        _init_web(app, pm)
    commands.init_app(app)
    return app
