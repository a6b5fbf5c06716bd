"""``GET /api/backup/guests``: the monthly guest backup, admin-only, streamed.

Answers are JSON whenever something is wrong (401, 403, 400), whatever the
``Accept`` header: an API never answers curl with an HTML login page.
"""

from __future__ import annotations

from functools import wraps

from flask import Blueprint, Response, current_app, jsonify, request
from flask_security import current_user

from guest_registration.admin import is_admin
from guest_registration.availability import database_unavailable, unavailable_response
from guest_registration.extensions import db

from guest_backup.ops.slots import RETRY_BUSY
from guest_backup.wiring import backup_context
from guest_backup.export.request import ExportRequestError, parse_request
from guest_backup.export.stream import open_export

bp = Blueprint("backup_api", __name__, url_prefix="/api/backup")


def json_error(status: int, message: str) -> Response:
    response = jsonify(error=message)
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Token realm="guest-registration"'
    return response


def admin_api(view):
    """Session or ``Authentication-Token`` of an active admin, else 401/403 JSON."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        if not current_user.is_authenticated:
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
    disposition = "attachment" if stream.request.format.as_attachment else "inline"
    response = Response(stream.chunks, content_type=stream.media_type, direct_passthrough=True)
    response.headers["Content-Disposition"] = f'{disposition}; filename="{stream.filename}"'
    response.headers["X-Export-Rows"] = str(stream.rows)
    response.headers["Cache-Control"] = "no-store"
    return response


def _via() -> str:
    """``api`` for a request authenticated by its token header, ``admin`` for the
    logged-in page (its export link), so the audit log tells them apart."""
    header = current_app.config.get("SECURITY_TOKEN_AUTHENTICATION_HEADER",
                                    "Authentication-Token")
    return "api" if request.headers.get(header) else "admin"


@bp.get("/guests")
@admin_api
def guests():
    try:
        req = parse_request(request.args.to_dict(flat=False),
                            current_app.extensions["export_formats"])
    except ExportRequestError as exc:
        return json_error(400, str(exc))
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
    stream = open_export(
        db.engine, req, db_engine=ctx.engine_for(db.engine.dialect.name, required=False),
        actor=actor, via=_via(), on_close=slot.release,
        fetch_rows=current_app.config["EXPORT_FETCH_ROWS"],
        on_error=lambda exc: current_app.logger.error("export %s failed: %s", req.filename,
                                                      type(exc).__name__),
    )
    return export_response(stream)
