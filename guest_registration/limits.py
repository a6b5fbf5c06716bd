"""Rate limits (Flask-Limiter): password guessing and registration floods.

Failed logins are limited per address and per account (only failures count, so
an admin who types the password right is never locked out by the limit); new
registrations per address. A client over a limit gets 429 with ``Retry-After``.
Limits are counted for every server process: in an SQLite file in the instance
folder (:mod:`.limit_store`), or in Redis when ``REDIS_URL`` is set
(``RATELIMIT_STORAGE_URI`` can name another store).
"""

from __future__ import annotations

import unicodedata

from flask import Flask, current_app, jsonify, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_security import current_user
from flask_security.utils import get_identity_attribute
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.datastructures import MultiDict

from . import limit_store  # noqa: F401  (registers the gr-sqlite:// store)
from .metrics import count_login_failure

#: seconds a client is told to wait when the rate-limit store (Redis) is down
STORE_DOWN_RETRY = 30


def _login_email() -> object:
    """The ``email`` field as Flask-Security's login form reads it: the first value
    in the form, or in the JSON object (a JSON list gives its first item too)."""
    if request.is_json:
        data = request.get_json(silent=True)  # malformed: the view's own 400
        try:
            fields = MultiDict(data)
        except (TypeError, ValueError):
            return None
    else:
        fields = request.form
    values = fields.getlist("email")
    return values[0] if values else None


def _login_user(value: object):
    """The user the login form finds for ``value``, by the same one query:
    Flask-Security's e-mail normalisation, then ``lower(email) = lower(value)``
    when the identity attribute is case-insensitive (PostgreSQL's lower() maps more
    than Python's casefold() does, e.g. U+0130 'İ' to 'i')."""
    details = get_identity_attribute("email")
    if not details or not isinstance(value, str) or not value:
        return None
    security = current_app.extensions["security"]
    try:
        email = security.mail_util.normalize(value)
    except ValueError:  # not an address: the form finds no one
        return None
    return security.datastore.find_user(
        case_insensitive=details.get("case_insensitive", False), email=email)


def _address_key(value: object) -> str:
    """An address that names no account: normalised (Flask-Security's e-mail
    normalisation, NFKC, case-folded, 'İ' as SQL lower() has it) so its spellings
    share one key."""
    text = str(value if value is not None else "").strip()[:255]
    try:
        text = current_app.extensions["security"].mail_util.normalize(text)
    except ValueError:  # not an address at all: still one key per spelling
        pass
    text = unicodedata.normalize("NFKC", text.replace("\u0130", "I")).casefold()
    return unicodedata.normalize("NFKC", text)


def _account() -> str:
    """The key of the per-account limit: the id of the user the login form would
    log in (every spelling that logs in as a user is counted as that user), else
    the normalised address."""
    value = _login_email()
    try:
        user = _login_user(value)
    except SQLAlchemyError:  # the database is busy: the address is the key
        user = None
    return f"user:{user.id}" if user is not None else f"account:{_address_key(value)}"


def _verifying_user() -> str:
    """``/verify`` (re-authentication) is limited per logged-in user."""
    return f"user:{current_user.id}" if current_user.is_authenticated else "user:anonymous"


def _store_down(exc):
    """The rate-limit store (Redis) cannot be reached: 503 with Retry-After, never 500
    (a limit that cannot be counted is not waived either)."""
    current_app.logger.warning("rate-limit store unreachable (%s)", type(exc).__name__)
    if request.path.startswith("/api/"):
        response = jsonify(error="temporarily unavailable; retry shortly")
    else:
        response = current_app.response_class(
            "Temporarily unavailable; please retry in a moment.", mimetype="text/plain")
    response.status_code = 503
    response.headers["Retry-After"] = str(STORE_DOWN_RETRY)
    return response


def _store_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = []
    try:
        import redis

        errors.append(redis.exceptions.RedisError)
    except ImportError:
        pass
    try:
        from limits.errors import StorageError

        errors.append(StorageError)
    except ImportError:
        pass
    return tuple(errors)


def _login_failed(response) -> bool:
    """A failed login counts; a 503 (the store itself is down) cannot be counted."""
    return response.status_code != 503 and not current_user.is_authenticated


def _verify_failed(response) -> bool:
    """A re-authentication that did not succeed: an error (JSON), or the form
    shown again instead of the redirect that follows success."""
    if response.status_code == 503:
        return False
    if request.is_json:
        return response.status_code >= 400
    return not (300 <= response.status_code < 400)


def _count_failure(response):
    """A failed login or re-authentication, for /metrics (one per request; a request
    refused by the limit, 429, guessed nothing)."""
    checks = {"security.login": _login_failed, "security.verify": _verify_failed}
    check = checks.get(request.endpoint) if request.method == "POST" else None
    if check is not None and response.status_code != 429 and check(response):
        count_login_failure(request.endpoint.split(".")[-1])
    return response


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
    verify = app.view_functions.get("security.verify")
    if verify is not None:  # re-authentication guesses count like login guesses
        verify = limiter.limit(app.config["LOGIN_LIMIT_PER_ADDRESS"], methods=["POST"],
                               deduct_when=_verify_failed)(verify)
        verify = limiter.limit(app.config["LOGIN_LIMIT_PER_ACCOUNT"], key_func=_verifying_user,
                               methods=["POST"], deduct_when=_verify_failed)(verify)
        app.view_functions["security.verify"] = verify
    for error in _store_errors():
        app.register_error_handler(error, _store_down)
    register = app.view_functions["public.register"]
    app.view_functions["public.register"] = limiter.limit(
        app.config["REGISTRATION_LIMIT_PER_ADDRESS"], methods=["POST"])(register)
    app.extensions["guest_limiter"] = limiter
    app.after_request(_count_failure)
    return limiter
