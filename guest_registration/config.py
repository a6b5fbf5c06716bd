"""Configuration: safe defaults that need nothing installed, every value overridable
from the environment.

The defaults put everything under the Flask instance folder (where that is:
:mod:`guest_registration.paths`): an SQLite database
and ``uploads/``. Plugins declare their own settings (the ``register_settings``
hook); the host fills them in the same way, see :mod:`guest_registration.plugins`.
``SECRET_KEY`` and ``SECURITY_PASSWORD_SALT`` are generated once into the instance
folder (mode 0600, :mod:`guest_registration.instance_folder`) when the environment
does not give them, so a fresh checkout runs without a hand-written secret and no
secret is ever committed.
"""

from __future__ import annotations

import copy
import os
from datetime import timedelta
from pathlib import Path
from typing import Any, Mapping

from .config_errors import ConfigError, SharedFolderError  # noqa: F401 (their home for importers)
from .instance_folder import (ensure_private_folder, refuse_shared_folder,  # noqa: F401
                              secret_from_file)

#: Settings read from the environment as plain strings.
STRING_SETTINGS = (
    "DATABASE_URL",
    "LOGIN_LIMIT_PER_ADDRESS",
    "LOGIN_LIMIT_PER_ACCOUNT",
    "REGISTRATION_LIMIT_PER_ADDRESS",
    "RATELIMIT_STORAGE_URI",
    "REDIS_URL",
    "REDIS_PREFIX",
    "UPLOAD_FOLDER",
    "SECRET_KEY",
    "SECURITY_PASSWORD_SALT",
    "TEMPLATE_OVERRIDES",
    "METRICS_TOKEN",
    "METRICS_ALLOW",
    "PROMETHEUS_MULTIPROC_DIR",
)
#: Settings read from the environment as integers.
INT_SETTINGS = ("MAX_PHOTO_BYTES", "DATABASE_POOL_SIZE", "DATABASE_MAX_OVERFLOW",
                "DATABASE_POOL_TIMEOUT", "DATABASE_IDLE_TRANSACTION_TIMEOUT", "TRUSTED_PROXIES",
                "HSTS_MAX_AGE", "CLIENT_IO_TIMEOUT", "MAX_FORM_MEMORY_SIZE")
#: Whole-number settings that must be at least 1 (MAX_FORM_MEMORY_SIZE: 0 or less
#: refuses every filled-in form field with 413, and no form could be sent)
POSITIVE_SETTINGS = ("MAX_FORM_MEMORY_SIZE",)


#: Settings read from the environment as true/false (1/0, yes/no, on/off).
BOOL_SETTINGS = ("DATABASE_SCHEMA_CHECK",)


def parse_bool(name: str, raw: str) -> bool:
    """``raw`` (from the environment) as true or false; ConfigError otherwise."""
    if raw.strip().lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.strip().lower() in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


#: Fixed defaults of Flask-Security-Too, Flask-WTF and Flask (overridable like the rest).
STATIC_DEFAULTS: dict[str, Any] = {
    # Flask-Security-Too: sessions for browsers, tokens for the API.
    "SECURITY_PASSWORD_HASH": "argon2",
    "SECURITY_TOKEN_AUTHENTICATION_HEADER": "Authentication-Token",
    "SECURITY_TOKEN_MAX_AGE": 7 * 24 * 3600,
    "SECURITY_REGISTERABLE": False,
    "SECURITY_SEND_REGISTER_EMAIL": False,
    "SECURITY_TRACKABLE": False,
    "SECURITY_POST_LOGIN_VIEW": "/admin/",
    "SECURITY_POST_LOGOUT_VIEW": "/",
    "SECURITY_CSRF_PROTECT_MECHANISMS": ["session", "basic"],
    "SECURITY_CSRF_IGNORE_UNAUTH_ENDPOINTS": False,
    "SECURITY_RETURN_GENERIC_RESPONSES": True,
    "SECURITY_LOGOUT_CSRF": True,  # logout is a POST with a CSRF token
    # servers here may have no DNS: check address syntax, not deliverability
    "SECURITY_EMAIL_VALIDATOR_ARGS": {"check_deliverability": False},
    # CSRFProtect is initialised but checks only where we (or Flask-Security) ask,
    # so token-authenticated API calls need no CSRF token.
    "WTF_CSRF_CHECK_DEFAULT": False,
    "WTF_CSRF_TIME_LIMIT": None,
    "SESSION_COOKIE_HTTPONLY": True,
    "SESSION_COOKIE_SAMESITE": "Lax",
    "REMEMBER_COOKIE_SAMESITE": "Lax",
    # "remember me" lasts two weeks, not Flask-Login's year
    "REMEMBER_COOKIE_DURATION": timedelta(days=14),
    # rate limits (Flask-Limiter notation); only failed logins count
    "LOGIN_LIMIT_PER_ADDRESS": "20 per 10 minutes",
    "LOGIN_LIMIT_PER_ACCOUNT": "10 per 10 minutes",
    "REGISTRATION_LIMIT_PER_ADDRESS": "20 per hour",
    # 503 while the database's schema is behind or ahead of the code
    "DATABASE_SCHEMA_CHECK": True,
}
#: Every setting name the host owns: a plugin declaring one of these is refused.
HOST_SETTINGS = frozenset(STRING_SETTINGS + INT_SETTINGS + BOOL_SETTINGS + tuple(STATIC_DEFAULTS) + (
    "DATABASE_URL", "DISABLED_PLUGINS", "SQLALCHEMY_DATABASE_URI", "SQLALCHEMY_TRACK_MODIFICATIONS",
    "SQLALCHEMY_ENGINE_OPTIONS", "MAX_CONTENT_LENGTH"))



def as_list(value: Any) -> list[str]:
    """A list setting: a list, or one comma-separated string (the environment's
    form); blanks dropped. The one parser of list settings, the host's and the
    plugins' (``apply_plugin_settings`` hands plugins lists)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return [str(v).strip() for v in value or () if str(v).strip()]

def normalise_database_url(url: str) -> str:
    """Make ``postgres://`` and bare ``postgresql://`` URLs use psycopg2.

    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, which we do not ship.
    """
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    return url


def _defaults(instance: Path) -> dict[str, Any]:
    """The host's own defaults, everything under the instance folder."""
    return {
        "DATABASE_URL": f"sqlite:///{instance / 'guest_registration.db'}",
        "UPLOAD_FOLDER": str(instance / "uploads"),
        "MAX_PHOTO_BYTES": 5 * 1024 * 1024,
        # pooled connections per process: the server's threads plus a few; a request
        # waits DATABASE_POOL_TIMEOUT seconds for one, then gets 503 with Retry-After
        "DATABASE_POOL_SIZE": 10,
        "DATABASE_MAX_OVERFLOW": 5,
        "DATABASE_POOL_TIMEOUT": 5,
        # PostgreSQL ends a session left idle inside a transaction this long (seconds;
        # 0: never): a second line behind reading request bodies before database work.
        # Exports and backups lift it for their own snapshot transaction.
        "DATABASE_IDLE_TRANSACTION_TIMEOUT": 60,
        "DISABLED_PLUGINS": [],
        # reverse proxies in front whose X-Forwarded-* headers count (0: none, ignore them)
        "TRUSTED_PROXIES": 0,
        # Strict-Transport-Security on HTTPS responses (0: none)
        "HSTS_MAX_AGE": 365 * 24 * 3600,
        # `manage.py serve`: seconds a client's socket may make no progress (a stalled
        # upload, a reader that stopped reading) before its request ends (0: never)
        "CLIENT_IO_TIMEOUT": 30,
        # Redis (optional): shared rate limits, background jobs on `manage.py worker`,
        # locks and limits across processes; every key starts with REDIS_PREFIX
        "REDIS_URL": "",
        "REDIS_PREFIX": "guest-registration:",
        # a folder of the site's own templates, searched first (guest_registration.paths)
        "TEMPLATE_OVERRIDES": "",
    }


def _from_environment(cfg: dict[str, Any], environ: Mapping[str, str]) -> None:
    """Fill ``cfg`` from the environment: strings, whole numbers, plugin names."""
    for key in STRING_SETTINGS:
        if environ.get(key):
            cfg[key] = environ[key]
    for key in INT_SETTINGS:
        if environ.get(key):
            try:
                cfg[key] = int(environ[key])
            except ValueError:
                raise ConfigError(f"{key} must be a whole number, got {environ[key]!r}") from None
            if key in POSITIVE_SETTINGS and cfg[key] < 1:
                raise ConfigError(f"{key} must be a whole number of at least 1, "
                                  f"got {environ[key]!r}")
    for key in BOOL_SETTINGS:
        if key in environ:
            cfg[key] = parse_bool(key, environ[key])
    if environ.get("DISABLED_PLUGINS"):
        cfg["DISABLED_PLUGINS"] = as_list(environ["DISABLED_PLUGINS"])


def _engine_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """SQLAlchemy's engine options for ``DATABASE_URL``: pool sizes, driver settings."""
    engine_options: dict[str, Any] = {
        "pool_pre_ping": True,
        "pool_size": int(cfg["DATABASE_POOL_SIZE"]),
        "max_overflow": int(cfg["DATABASE_MAX_OVERFLOW"]),
        "pool_timeout": int(cfg["DATABASE_POOL_TIMEOUT"]),
    }
    if cfg["DATABASE_URL"].startswith("sqlite") and ":memory:" in cfg["DATABASE_URL"]:
        engine_options = {"pool_pre_ping": True}  # one shared in-memory database: no pool sizes
    if cfg["DATABASE_URL"].startswith("postgresql+psycopg2://"):
        # UTF-8 on the wire whatever the server's default; fail fast when unreachable
        engine_options["connect_args"] = {"client_encoding": "utf8", "connect_timeout": 10}
        idle = int(cfg["DATABASE_IDLE_TRANSACTION_TIMEOUT"])
        if idle > 0:
            engine_options["connect_args"]["options"] = (
                f"-c idle_in_transaction_session_timeout={idle * 1000}")
    return engine_options


def build_config(instance_path: str, overrides: Mapping[str, Any] | None = None,
                 environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Return the app configuration: defaults, then environment, then ``overrides``."""
    environ = os.environ if environ is None else environ
    instance = Path(instance_path)
    cfg = _defaults(instance)
    _from_environment(cfg, environ)
    if overrides:
        cfg.update(overrides)
    cfg["DISABLED_PLUGINS"] = as_list(cfg["DISABLED_PLUGINS"])

    if not cfg.get("RATELIMIT_STORAGE_URI"):  # counted for every process of the machine,
        # or of every machine with Redis (guest_registration.limit_store)
        cfg["RATELIMIT_STORAGE_URI"] = cfg["REDIS_URL"] or (
            f"gr-sqlite://{instance.resolve() / 'ratelimits.sqlite'}")
    cfg.setdefault("SECRET_KEY", None)
    cfg.setdefault("SECURITY_PASSWORD_SALT", None)
    if not cfg["SECRET_KEY"]:
        cfg["SECRET_KEY"] = secret_from_file(instance, "secret_key")
    if not cfg["SECURITY_PASSWORD_SALT"]:
        cfg["SECURITY_PASSWORD_SALT"] = secret_from_file(instance, "password_salt")

    cfg["DATABASE_URL"] = normalise_database_url(cfg["DATABASE_URL"])
    cfg["SQLALCHEMY_DATABASE_URI"] = cfg["DATABASE_URL"]
    cfg["SQLALCHEMY_TRACK_MODIFICATIONS"] = False
    cfg.setdefault("SQLALCHEMY_ENGINE_OPTIONS", _engine_options(cfg))
    # Uploads larger than a whole registration can never be valid: refuse early.
    cfg.setdefault("MAX_CONTENT_LENGTH", cfg["MAX_PHOTO_BYTES"] * 25 + 1024 * 1024)

    for key, value in STATIC_DEFAULTS.items():
        cfg.setdefault(key, copy.deepcopy(value))  # no list or dict shared between apps
    return cfg
