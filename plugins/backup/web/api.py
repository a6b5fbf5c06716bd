"""The token API for system backups, for scripts (``docs/api.md``):

- ``GET /api/backup/archives``: the recognised archives, newest first;
- ``GET /api/backup/archives/NAME``: one archive, streamed (ranges, ETag:
  :mod:`guest_backup.web.download`), audited as a download ``via=api``;
- ``POST /api/backup/archives``: start a backup (202, its job's URL in
  ``Location``; 409 while one runs);
- ``GET /api/backup/jobs/ID``: that job's state.

Admin token only, sent as ``Authentication-Token`` or ``Authorization: Bearer``
(the host copies the second into the first). A session cookie alone is not
enough, so no request of a browser can be made to start a backup: the API
needs no CSRF token. Every error is JSON.
"""

from __future__ import annotations

import re
from functools import wraps

from flask import Blueprint, current_app, jsonify, request, url_for
from flask_security import current_user

from guest_registration.availability import database_unavailable, unavailable_response

from guest_backup.archive.format import is_archive_name
from guest_backup.archive.manifest import format_time
from guest_backup.errors import BackupBusy, BackupError
from guest_backup.export.api import header_token_user, json_error
from guest_backup.ops.jobs import read_job
from guest_backup.ops.listing import list_everywhere, storages_holding
from guest_backup.storages import StorageError, StorageUnreachable
from guest_backup.tasks import start_job
from guest_backup.web.download import audit_download, send_archive, storage_unreachable
from guest_backup.web.views import _verifications
from guest_backup.wiring import backup_context

bp = Blueprint("archive_api", __name__, url_prefix="/api/backup")
JOB_ID_RE = re.compile(r"[0-9a-f]{32}", re.ASCII)
JOB_FIELDS = ("id", "state", "stage", "bytes", "started_at", "finished_at", "archive", "error",
              "warning")


def token_admin(view):
    """An active admin's token in a header, else 401/403 JSON. The user is looked
    up from the token alone, whatever session cookie comes with it."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        user = header_token_user()  # never a token in the body
        if user is None or not current_user.is_authenticated:
            if database_unavailable():  # a busy database is no wrong token
                return unavailable_response()
            return json_error(401, "an admin token is required: send it as "
                                   "'Authorization: Bearer TOKEN' or in an "
                                   "Authentication-Token header")
        if not (current_user.active and current_user.has_role("admin")):
            return json_error(403, "admin role required")
        return view(*args, **kwargs)

    return wrapper


def _archive_json(archive, sha256: str | None, verified: dict | None) -> dict:
    check = None
    if verified is not None:
        check = {"ok": verified["ok"], "at": format_time(verified["at"]),
                 "message": verified["message"]}
    return {"name": archive.name, "size": archive.size, "created": format_time(archive.created),
            "storages": list(archive.locations), "sha256": sha256, "signed": True,
            "encrypted": archive.encrypted, "verified": check,
            "url": url_for(".archive", name=archive.name, _external=True)}


@bp.get("/archives")
@token_admin
def archives():
    """Recognised archives only (each has a trusted signature); storages that
    could not be listed are named in ``problems``."""
    ctx = backup_context()
    try:
        listing = list_everywhere(ctx)
    except StorageError as exc:  # a BACKUP_REMOTE_URL that cannot work at all
        return json_error(502, str(exc))
    except BackupError as exc:  # a setting no archive is recognised with (a bad key)
        return json_error(500, f"the backups are misconfigured: {exc}")
    verified = _verifications([a.name for a in listing.archives])
    rows = [_archive_json(a, a.sha256, verified.get(a.name)) for a in listing.archives]
    return jsonify(archives=rows, problems=listing.problems)


@bp.get("/archives/<path:name>")
@token_admin
def archive(name: str):
    """One archive, from this machine's folder if it is there, else the remote."""
    if not is_archive_name(name):
        return json_error(404, "no such archive")
    ctx = backup_context()
    unreachable: list = []
    found = storages_holding(ctx, name, unreachable=unreachable)
    if not found:  # not "no such archive" when a storage that may hold it did not answer
        if not unreachable:
            return json_error(404, "no such archive")
        if isinstance(unreachable[0][1], StorageUnreachable):
            return storage_unreachable(unreachable[0][1])
        return json_error(502, f"the storage that may hold the archive cannot be used "
                               f"({unreachable[0][1]})")
    try:
        sent = send_archive(found[0], name, ctx.settings.trusted())
    except StorageUnreachable as exc:
        return storage_unreachable(exc)
    except StorageError:
        return json_error(502, "the archive could not be read from its storage")
    if sent.bytes and request.method == "GET":
        audit_download(found[0], name, sent, current_user.email, "api")
    return sent.response


@bp.post("/archives")
@token_admin
def start():
    """Start a backup (the same job as the Backup page's button)."""
    try:
        job = start_job(current_app._get_current_object(), current_user.email, via="api")
    except BackupBusy:
        return json_error(409, "a backup is already running; wait for it to finish")
    except BackupError as exc:
        return json_error(503, f"the backup could not start: {exc}")
    body = _job_json(job)
    response = jsonify(body)
    response.status_code = 202
    response.headers["Location"] = body["url"]
    return response


@bp.get("/jobs/<path:job_id>")
@token_admin
def job(job_id: str):
    """The state of a backup job: only the latest one is kept (404 for others)."""
    found = read_job(backup_context()) if JOB_ID_RE.fullmatch(job_id) else None
    if not found or found.get("id") != job_id:
        return json_error(404, "no such job (only the latest backup job is kept)")
    return jsonify(_job_json(found))


def _job_json(job: dict) -> dict:
    body = {k: job.get(k) for k in JOB_FIELDS}
    body["url"] = url_for(".job", job_id=job["id"], _external=True)
    body["archive_url"] = None
    if body["state"] == "done" and body["archive"] and storages_holding(backup_context(),
                                                                         body["archive"]):
        body["archive_url"] = url_for(".archive", name=body["archive"], _external=True)
    return body
