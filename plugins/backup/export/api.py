"""``GET /api/backup/guests``: the monthly guest backup, admin-only, streamed.

Answers are JSON whenever something is wrong (401, 403, 400), whatever the
``Accept`` header: an API never answers curl with an HTML login page.
"""

from __future__ import annotations

from functools import wraps

from flask import Blueprint, Response, current_app, g, jsonify, request
from flask_security import current_user
from flask_security.utils import get_request_attr

from guest_registration.admin import is_admin
from guest_registration.availability import database_unavailable, unavailable_response
from guest_registration.extensions import db

from guest_backup.ops.slots import RETRY_BUSY
from guest_backup.wiring import backup_context
from guest_backup.export.request import ExportRequestError, parse_request
from guest_backup.export.settings import check_settings
from guest_backup.export.stream import open_export

bp = Blueprint("backup_api", __name__, url_prefix="/api/backup")
# the web app does not start with an EXPORT_* setting that cannot work
bp.record_once(lambda state: check_settings(state.app.config))


def json_error(status: int, message: str) -> Response:
    response = jsonify(error=message)
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Token realm="guest-registration"'
    return response


def _token_in_body() -> bool:
    key = current_app.config.get("SECURITY_TOKEN_AUTHENTICATION_KEY", "auth_token")
    body = request.get_json(silent=True) if request.is_json else None
    return isinstance(body, dict) and key in body


def header_token_user():
    """The user of the request's ``Authentication-Token`` header (``Authorization:
    Bearer`` is copied there), looked up from that token alone, whatever session
    cookie comes with it; None without the header, for a wrong token, and when the
    JSON body carries a token too (Flask-Security takes the body's, even over the
    header's: never a credential of these APIs)."""
    header = current_app.config.get("SECURITY_TOKEN_AUTHENTICATION_HEADER",
                                    "Authentication-Token")
    if not request.headers.get(header) or _token_in_body():
        return None
    manager = current_app.login_manager
    user = manager.request_callback(request)  # Flask-Security's token check
    if user is not None:
        manager._update_request_context_with_user(user)  # noqa: SLF001
    return user


def _loaded_via() -> str | None:
    """How the request's user is known: ``api`` by its token header
    (:func:`header_token_user`), ``admin`` by a session login (the page's export
    link); None otherwise (a token in the query string is refused by the host)."""
    header = current_app.config.get("SECURITY_TOKEN_AUTHENTICATION_HEADER",
                                    "Authentication-Token")
    if request.headers.get(header):
        return "api" if header_token_user() is not None else None
    if current_user.is_authenticated and get_request_attr("fs_authn_via") == "session":
        return "admin"
    return None


def admin_api(view):
    """``Authentication-Token`` header or session login of an active admin (never a
    token in the body), else 401/403 JSON; ``g.export_via`` says which."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        g.export_via = _loaded_via()
        if g.export_via is None or not current_user.is_authenticated:
            if database_unavailable():  # a busy database is no wrong token
                return unavailable_response()
            return json_error(401, "authentication required: log in as an admin or send an "
                                   "Authentication-Token header")
        if not is_admin():
            return json_error(403, "admin role required")
        return view(*args, **kwargs)

    return wrapper


def export_response(stream) -> Response:
    """A streamed HTTP response for an :class:`~.guest_export.ExportStream`."""
    response = _export_headers(stream.request, stream.chunks)
    response.headers["X-Export-Rows"] = str(stream.rows)
    return response


def _export_headers(req, chunks) -> Response:
    """The headers a request's export is sent with, known before it is opened."""
    disposition = "attachment" if req.format.as_attachment else "inline"
    response = Response(chunks, content_type=req.format.media_type, direct_passthrough=True)
    response.headers["Content-Disposition"] = f'{disposition}; filename="{req.filename}"'
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/guests")
@admin_api
def guests():
    try:
        req = parse_request(request.args.to_dict(flat=False),
                            current_app.extensions["export_formats"])
    except ExportRequestError as exc:
        return json_error(400, str(exc))
    if request.method == "HEAD":  # no body: no export is opened, counted or audited
        return _export_headers(req, iter(()))  # an iterator: no Content-Length: 0
    actor = current_user.email
    ctx = backup_context()
    slot = ctx.export_slots.acquire(int(current_app.config["EXPORT_MAX_CONCURRENT"]))
    if slot is None:
        response = json_error(429, "too many exports are running; retry in a few seconds")
        response.headers["Retry-After"] = str(RETRY_BUSY)
        return response
    # Give the request's own connection (the user lookup) back to the pool now: the
    # export takes exactly one connection, and holds it while it streams.
    db.session.close()
    logger = current_app.logger  # the body is sent after the app context is gone
    stream = open_export(
        db.engine, req, db_engine=ctx.engine_for(db.engine.dialect.name, required=False),
        actor=actor, via=g.export_via, on_close=slot.release,
        fetch_rows=current_app.config["EXPORT_FETCH_ROWS"],
        on_error=lambda exc: logger.error("export %s failed: %s", req.filename,
                                          type(exc).__name__),
    )
    return export_response(stream)
