"""Service functions behind ``setup`` and ``status`` (no request context needed)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from flask import Flask

from .config import ensure_private_folder
from .extensions import database_engine
from .registry import hook_items, plugin_infos

ADMIN_ROLE = "admin"


@dataclass
class StatusCheck:
    """One line of ``manage.py status``."""

    name: str
    ok: bool
    detail: str


def setup(app: Flask, admin_email: str | None = None, admin_password: str | None = None,
          reset_password: bool = False) -> Iterator[str]:
    """Bring the schema up to date (migrations: ``upgrade heads``), create the admin
    role, the upload folder and optionally an admin user, then let each plugin
    prepare its own (``setup_app``). Idempotent."""
    from flask_security.utils import hash_password

    from .extensions import db
    from .schema import upgrade

    yield from upgrade(app)
    yield f"database ready: {app_database(app)}"
    datastore = app.extensions["security"].datastore
    datastore.find_or_create_role(ADMIN_ROLE, description="Full access to the admin panel")
    db.session.commit()
    yield f"role ready: {ADMIN_ROLE}"
    uploads = ensure_private_folder(Path(app.config["UPLOAD_FOLDER"]), "UPLOAD_FOLDER")
    yield f"folder ready: {uploads}"
    if admin_email:
        if not admin_password:
            raise ValueError("--admin-password (or ADMIN_PASSWORD) is required with --admin-email")
        user = datastore.find_user(email=admin_email)
        if user is None:
            user = datastore.create_user(email=admin_email, password=hash_password(admin_password),
                                         active=True)
            action = "created"
        elif reset_password:
            user.password = hash_password(admin_password)
            datastore.set_uniquifier(user)  # sessions and tokens of the old password end
            action = "password reset"
        else:  # never overwrite an existing account's password (or re-activate it) silently
            action = "exists, password unchanged (use --reset-password to change it)"
        if user.active or action == "created":
            datastore.add_role_to_user(user, ADMIN_ROLE)
        db.session.commit()
        yield f"admin user {action}: {admin_email}"
    yield from hook_items(app.extensions["plugin_manager"], "setup_app", app=app)


def _secret_keys(url) -> list[str]:
    """The query keys of a database URL that hold a secret: libpq and psycopg2 take
    ``password`` (``passfile``, ``sslpassword``) there as well as in the userinfo."""
    return [key for key in url.query if "pass" in key.lower()]


def safe_url(url) -> str:
    """The database URL (a string or SQLAlchemy's ``URL``) with any password masked,
    for display: the userinfo's and the query's (:func:`_secret_keys`). The one
    masker of a database URL shown (status, setup, restore, pitr)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    keys = _secret_keys(parsed)
    if keys:
        parsed = parsed.update_query_dict({key: "***" for key in keys})
    return parsed.render_as_string(hide_password=True).replace("%2A%2A%2A", "***")


def app_database(app: Flask) -> str:
    """The app's database as its engine opens it, password masked: a relative SQLite
    path (``sqlite:///app.db``) is shown as the instance folder's file it is, not as
    a name the reader would look for in the working folder."""
    try:
        return safe_url(database_engine().url)
    except Exception:  # no engine to be had: the setting as it is
        return safe_url(app.config["DATABASE_URL"])


def unreachable(app: Flask, exc: Exception) -> str:
    """One line: which database (passwords masked) and the driver's first line of why
    (any password of the URL in it masked too)."""
    from sqlalchemy.engine import make_url

    text_ = str(getattr(exc, "orig", exc)).strip()
    reason = text_.splitlines()[0] if text_ else type(exc).__name__
    url = make_url(app.config["DATABASE_URL"])
    values = [url.query[key] for key in _secret_keys(url)]
    secrets = [url.password] + [v for value in values
                                for v in ((value,) if isinstance(value, str) else value)]
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        reason = reason.replace(secret, "***")
    return f"cannot connect to {app_database(app)}: {reason}"


def database_version() -> str:
    """Server name and version of the configured database (raises if unreachable)."""
    from sqlalchemy import text

    engine = database_engine()
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            return conn.execute(text("SHOW server_version")).scalar_one().split()[0]
        if engine.dialect.name == "sqlite":
            return conn.execute(text("select sqlite_version()")).scalar_one()
        return str(engine.dialect.server_version_info or "?")


def folder_check(name: str, path: str) -> StatusCheck:
    p = Path(path)
    if not p.is_dir():
        return StatusCheck(name, False, f"{p} is missing (run `python manage.py setup`)")
    if not os.access(p, os.W_OK | os.X_OK):
        return StatusCheck(name, False, f"{p} is not writable by this user")
    return StatusCheck(name, True, f"{p} present and writable")


def status_checks(app: Flask) -> Iterator[StatusCheck]:
    """Core checks, then every plugin's ``report_status`` lines."""
    engine = database_engine().dialect.name
    try:
        version = database_version()
        yield StatusCheck("database", True,
                          f"{engine} {version} reachable at {app_database(app)}")
        db_ok = True
    except Exception as exc:  # the message names the cause without the password
        yield StatusCheck("database", False, unreachable(app, exc))
        db_ok = False
    if db_ok:
        from sqlalchemy import inspect

        missing = {"trip", "registration", "guest", "user", "role"} - set(
            inspect(database_engine()).get_table_names())
        yield StatusCheck("schema", not missing,
                          "tables present" if not missing else
                          f"missing tables {', '.join(sorted(missing))} (run `python manage.py setup`)")
    yield folder_check("upload folder", app.config["UPLOAD_FOLDER"])
    redis = redis_check(app)
    if redis is not None:
        yield redis
    pm = app.extensions["plugin_manager"]
    loaded = [f"{i.name} ({i.distribution} {i.version})" for i in plugin_infos(pm) if not i.disabled]
    yield StatusCheck("plugins", True, ", ".join(loaded) or "none")
    formats = app.extensions["export_formats"].names()
    yield StatusCheck("export formats", bool(formats), ", ".join(formats) or "none installed")
    yield from hook_items(pm, "report_status", app=app)


def redis_check(app: Flask) -> StatusCheck | None:
    """Redis, when ``REDIS_URL`` is set: the export limits, the login limit, the
    backup lock and the queued jobs live there, so every backup, drill and pruning
    fails while it cannot be reached (None without it). Its password is masked."""
    url = (app.config.get("REDIS_URL") or "").strip()
    if not url:
        return None
    shown = _redis_shown(url)
    from .redis_link import redis_client

    try:
        redis_client(app).ping()
    except Exception as exc:  # redis' own errors, the missing package: one line
        return StatusCheck("redis", False, f"{shown} cannot be reached ({type(exc).__name__}): "
                           "backups, drills, pruning and queued jobs fail until it can")
    return StatusCheck("redis", True, f"reachable at {shown}")


def _redis_shown(url: str) -> str:
    """``REDIS_URL`` without its secrets: scheme, host, port and database only (redis-py
    splits the userinfo at its last ``@``, so a password may hold one: nothing of the
    userinfo or the query is shown)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
        masked = "***@" if "@" in parts.netloc else ""
    except ValueError:
        return "REDIS_URL"
    return f"{parts.scheme}://{masked}{host}{parts.path}"
