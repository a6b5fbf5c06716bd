"""``GET /api/openapi.json``: the OpenAPI 3.1 document of every ``/api`` endpoint.

Built per request from this app (the export formats are the installed ones),
and kept honest by tests: every ``/api`` rule of the URL map must be in it
(``tests/test_openapi.py``), real responses are validated against it, and
Schemathesis generates requests from it. Public: it holds no data.
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from guest_registration import __version__

from guest_backup.archive.format import ARCHIVE_RE
from guest_backup.export.request import MAX_YEAR, MIN_YEAR
from guest_backup.export.stream import FIELDS

bp = Blueprint("openapi", __name__)

TIMESTAMP = {"type": "string",
             "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$"}
SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
NAME = {"type": "string", "pattern": f"^{ARCHIVE_RE.pattern}$"}
NULLABLE_TEXT = {"type": ["string", "null"]}
JOB_ID = {"type": "string", "pattern": "^[0-9a-f]{32}$"}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str, header: str | None = None) -> dict:
    """A JSON error answer; ``header``: one it always carries."""
    response = {"description": description,
                "content": {"application/json": {"schema": _ref("Error")}}}
    if header:
        response["headers"] = {header: {"schema": {"type": "string"}, "required": True}}
    return response


def _json(description: str, schema: dict) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


#: what every request is refused with before any work (docs/api.md): tokens go in
#: the header only (URLs end up in logs); PostgreSQL cannot store a NUL byte
MALFORMED = _error("a token in the query string (?auth_token=), or a parameter holding a "
                   "NUL byte")
#: the answers any token endpoint may give besides its own
COMMON = {
    "400": MALFORMED,
    "401": _error("no token, or one that is not valid", "WWW-Authenticate"),
    "403": _error("the token's user is not an active admin"),
    "503": _error("the database cannot be reached now, or its schema is not the code's "
                  "(run setup); retry", "Retry-After"),
}


def _schemas() -> dict:
    archive = {
        "type": "object", "additionalProperties": False,
        "required": ["name", "size", "created", "storages", "sha256", "signed", "encrypted",
                     "verified", "url"],
        "properties": {
            "name": NAME, "size": {"type": "integer", "minimum": 0},
            "created": {**TIMESTAMP, "description": "the signed creation time (UTC)"},
            "storages": {"type": "array", "minItems": 1, "items": {"type": "string"},
                         "description": "where it is: local (BACKUP_FOLDER), remote"},
            "sha256": {"oneOf": [SHA256, {"type": "null"}],
                       "description": "the SHA-256 its trusted seal signs (the ETag)"},
            "signed": {"type": "boolean", "const": True},
            "encrypted": {"type": "boolean"},
            "verified": {"oneOf": [_ref("Verification"), {"type": "null"}],
                         "description": "the latest verify in the audit log"},
            "url": {"type": "string", "format": "uri"},
        },
    }
    job = {
        "type": "object", "additionalProperties": False,
        "required": ["id", "state", "stage", "bytes", "started_at", "finished_at", "archive",
                     "error", "warning", "url", "archive_url"],
        "properties": {
            "id": JOB_ID, "state": {"enum": ["queued", "running", "done", "failed"]},
            "stage": NULLABLE_TEXT, "bytes": {"type": ["integer", "null"], "minimum": 0},
            "started_at": TIMESTAMP, "finished_at": {"oneOf": [TIMESTAMP, {"type": "null"}]},
            "archive": {"oneOf": [NAME, {"type": "null"}]}, "error": NULLABLE_TEXT,
            "warning": NULLABLE_TEXT, "url": {"type": "string", "format": "uri"},
            "archive_url": {"type": ["string", "null"]},
        },
    }
    return {
        "Error": {"type": "object", "required": ["error"], "additionalProperties": False,
                  "properties": {"error": {"type": "string", "minLength": 1}}},
        "Verification": {"type": "object", "additionalProperties": False,
                         "required": ["ok", "at", "message"],
                         "properties": {"ok": {"type": "boolean"},
                                        "at": {"oneOf": [TIMESTAMP, {"type": "null"}]},
                                        "message": NULLABLE_TEXT}},
        "Archive": archive,
        "ArchiveList": {"type": "object", "additionalProperties": False,
                        "required": ["archives", "problems"],
                        "properties": {"archives": {"type": "array", "items": _ref("Archive")},
                                       "problems": {"type": "array",
                                                    "items": {"type": "string"}}}},
        "Job": job,
        "GuestRow": {"type": "object", "additionalProperties": False,
                     "required": list(FIELDS),
                     "properties": {f: {} for f in FIELDS}},
    }


def _guests(formats) -> dict:
    content = {}
    for fmt in formats:
        media = fmt.media_type.split(";")[0].strip()
        schema = ({"type": "array", "items": _ref("GuestRow")} if media == "application/json"
                  else {"type": "string"})
        content.setdefault(media, {"schema": schema})
    return {"get": {
        "operationId": "exportGuests", "tags": ["export"],
        "summary": "The guests registered in one month, streamed in an export format",
        "description": "Also allowed for a logged-in admin's session (the Backup page's "
                       "link). Audited as an export. X-Export-Rows is the number of rows "
                       "sent: an export that reads another number fails, its body cut "
                       "short. HEAD answers the same checks and the headers sent first "
                       "(Content-Type, Content-Disposition, Cache-Control) without running "
                       "the export: no X-Export-Rows, no 429, not audited.",
        "parameters": [
            {"name": "year", "in": "query", "required": True,
             "schema": {"type": "integer", "minimum": MIN_YEAR, "maximum": MAX_YEAR}},
            {"name": "month", "in": "query", "required": True,
             "schema": {"type": "integer", "minimum": 1, "maximum": 12}},
            {"name": "format", "in": "query", "required": False,
             "schema": {"type": "string", "enum": [f.name for f in formats],
                        "default": "csv"}},
        ],
        "responses": {
            "200": {"description": "the export", "content": content,
                    "headers": {"X-Export-Rows": {"required": True, "schema": {
                        "type": "string", "pattern": "^[0-9]+$"}}}},
            "429": _error("too many exports are running", "Retry-After"),
            **COMMON,
            "400": _error("a parameter is missing, malformed or unknown, or a token is in "
                          "the query string (?auth_token=)"),
        },
    }}


def _download() -> dict:
    binary = {"schema": {"type": "string", "format": "binary"}}
    headers = {
        "ETag": {"schema": {"type": "string", "pattern": '^"[0-9a-f]{64}"$'},
                 "description": "the archive's signed SHA-256, quoted"},
        "Accept-Ranges": {"required": True, "schema": {"const": "bytes"}},
    }
    content = {"application/zip": binary, "application/octet-stream": binary}
    return {"get": {
        "operationId": "downloadArchive", "tags": ["archives"],
        "summary": "One archive, streamed; one byte range; conditional on its ETag",
        "parameters": [
            {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
             "description": "an archive's name, e.g. system_backup_20260601_020000.zip.age"},
            {"name": "Range", "in": "header", "required": False,
             "schema": {"type": "string"}, "example": "bytes=0-99"},
            {"name": "If-None-Match", "in": "header", "required": False,
             "schema": {"type": "string"}},
            {"name": "If-Range", "in": "header", "required": False,
             "schema": {"type": "string"}},
        ],
        "responses": {
            "200": {"description": "the whole archive", "headers": headers, "content": content},
            "206": {"description": "one range of it", "content": content,
                    "headers": {**headers, "Content-Range": {"required": True, "schema": {
                        "type": "string", "pattern": "^bytes [0-9]+-[0-9]+/[0-9]+$"}}}},
            "304": {"description": "If-None-Match matched the ETag"},
            "404": _error("no archive of that name"),
            "416": {**_error("no requested range lies within the archive"),
                    "headers": {"Content-Range": {"required": True, "schema": {
                        "type": "string", "pattern": r"^bytes \*/[0-9]+$"}}}},
            "502": _error("the storage holding it could not be read"),
            **COMMON,
            "503": _error("the database, or a storage that may hold it, cannot be reached "
                          "now; retry (never 404 while a storage does not answer)",
                          "Retry-After"),
        }}}


def _archive_paths() -> dict:
    return {
        "/api/backup/archives": {
            "get": {"operationId": "listArchives", "tags": ["archives"],
                    "summary": "The recognised archives of every storage, newest first",
                    "responses": {"200": _json("the archives", _ref("ArchiveList")),
                                  "502": _error("the remote storage is misconfigured"),
                                  **COMMON}},
            "post": {"operationId": "startBackup", "tags": ["archives"],
                     "summary": "Start a backup (a background job)",
                     "responses": {
                         "202": {**_json("started; poll the job's URL", _ref("Job")),
                                 "headers": {"Location": {"required": True,
                                                          "schema": {"type": "string"}}}},
                         "409": _error("a backup is already running"),
                         **COMMON}},
        },
        "/api/backup/archives/{name}": _download(),
        "/api/backup/jobs/{job_id}": {"get": {
            "operationId": "readJob", "tags": ["archives"],
            "summary": "A backup job's state (only the latest job is kept)",
            "parameters": [{"name": "job_id", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": {"200": _json("the job", _ref("Job")),
                          "404": _error("no such job"), **COMMON}}},
    }


def document(app) -> dict:
    """The OpenAPI document of ``app``'s API."""
    paths = {"/api/backup/guests": _guests(list(app.extensions["export_formats"])),
             **_archive_paths(),
             "/api/openapi.json": {"get": {
                 "operationId": "openapi", "tags": ["meta"], "security": [],
                 "summary": "This document",
                 "responses": {"200": _json("the OpenAPI document", {"type": "object"}),
                               "400": MALFORMED}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "guest-registration API", "version": __version__,
                 "description": "Admin token API: see docs/api.md."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {"token": []}],
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "an admin's Flask-Security authentication token"},
                "token": {"type": "apiKey", "in": "header",
                          "name": app.config["SECURITY_TOKEN_AUTHENTICATION_HEADER"]},
            },
        },
    }


@bp.get("/api/openapi.json")
def openapi_json():
    response = jsonify(document(current_app))
    response.headers["Cache-Control"] = "no-cache"
    return response
