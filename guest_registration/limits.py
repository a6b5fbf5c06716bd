"""Rate limits (Flask-Limiter): password guessing and registration floods.

Failed logins are limited per address and per account (only failures count, so
an admin who types the password right is never locked out by the limit); new
registrations per address. A client over a limit gets 429 with ``Retry-After``.
Limits are counted for every server process: in an SQLite file in the instance
folder (:mod:`.limit_store`), or in Redis when ``REDIS_URL`` is set
(``RATELIMIT_STORAGE_URI`` can name another store).
"""

from __future__ import annotations

from flask import Flask, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_security import current_user

from . import limit_store  # noqa: F401  (registers the gr-sqlite:// store)


def _account() -> str:
    data = request.get_json(silent=True) if request.is_json else None
    email = (data or {}).get("email") if isinstance(data, dict) else request.form.get("email")
    return f"account:{str(email or '').strip().lower()[:255]}"


def _login_failed(response) -> bool:
    return not current_user.is_authenticated


def init_app(app: Flask) -> Limiter:
    limiter = Limiter(key_func=get_remote_address, app=app, default_limits=[],
                      headers_enabled=True, storage_uri=app.config["RATELIMIT_STORAGE_URI"],
                      key_prefix=app.config["REDIS_PREFIX"] + "limits")
    login = app.view_functions["security.login"]
    login = limiter.limit(app.config["LOGIN_LIMIT_PER_ADDRESS"], methods=["POST"],
                          deduct_when=_login_failed)(login)
    login = limiter.limit(app.config["LOGIN_LIMIT_PER_ACCOUNT"], key_func=_account,
                          methods=["POST"], deduct_when=_login_failed)(login)
    app.view_functions["security.login"] = login
    register = app.view_functions["public.register"]
    app.view_functions["public.register"] = limiter.limit(
        app.config["REGISTRATION_LIMIT_PER_ADDRESS"], methods=["POST"])(register)
    app.extensions["guest_limiter"] = limiter
    return limiter
