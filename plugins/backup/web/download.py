"""Sending one archive over HTTP, for the Backup page and the token API alike (the
one owner of it): streamed in chunks from this machine's folder or from the
remote storage, with the archive's signed SHA-256 as its strong ``ETag``,
``If-None-Match``, and byte ranges (``Range``, ``If-Range``; RFC 9110 §13, §14).

- One satisfiable range: 206 with ``Content-Range``; a remote storage that can
  read a range (``open_range``: S3's GetObject ``Range``) is asked for just it.
- No satisfiable range (every one starts past the end): 416 with
  ``Content-Range: bytes */SIZE``.
- Several ranges, a header that cannot be parsed, another unit, or an
  ``If-Range`` that does not match the ETag: the whole archive (200). A server
  may ignore Range; ``multipart/byteranges`` buys a backup client nothing.

The SHA-256 is the one the seal (the signed ``.sig`` beside the archive) claims,
checked against the trusted keys: never recomputed per request. An archive
without a trusted seal is sent without an ETag.

A storage that cannot be reached (:class:`StorageUnreachable`) is a 503 with
``Retry-After`` (:func:`storage_unreachable`), never a 404 saying the archive is
not there: it may well be.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import IO, Iterator

from flask import Response, make_response, render_template, request
from flask_babel import gettext as _

from guest_registration import audit
from guest_registration.extensions import db

from guest_backup.archive.seal import sealed_sha256
from guest_backup.archive.signing import SignatureError, TrustedKeys
from guest_backup.export.api import json_error
from guest_backup.storages import Storage, StorageError, size_of

CHUNK = 1024 * 1024
MAX_RANGES = 32  # more parts than this: the header is ignored (the whole archive)
DIGITS_RE = re.compile(r"[0-9]{1,19}", re.ASCII)
RETRY_AFTER = 60  # seconds: an outage of the storage is not over in five


def signed_sha256(storage: Storage, name: str, size: int, trusted: TrustedKeys) -> str | None:
    """The SHA-256 the archive's trusted seal claims for this name and size, else None."""
    try:
        envelope = storage.read_sidecar(name)
    except StorageError:
        return None
    sha = sealed_sha256(envelope) if envelope else None
    if sha is None:
        return None
    try:
        trusted.check_file(envelope, name, size, sha)  # name, size and the signature
    except (SignatureError, ValueError, KeyError, TypeError):
        return None
    return sha


def parse_ranges(header: str, size: int) -> list[tuple[int, int]] | None:
    """The satisfiable ranges (first, last byte, inclusive) of a ``Range`` header
    for ``size`` bytes; ``[]`` when none is; None when the header is to be ignored
    (malformed, another unit, too many parts)."""
    unit, equals, spec = header.partition("=")
    parts = spec.split(",")
    if not equals or unit.strip(" \t").lower() != "bytes" or len(parts) > MAX_RANGES:
        return None
    found = []
    for part in parts:
        first, dash, last = part.strip(" \t").partition("-")
        if not dash or (first and not DIGITS_RE.fullmatch(first)) \
                or (last and not DIGITS_RE.fullmatch(last)) or not (first or last):
            return None
        if not first:  # a suffix: the last N bytes
            if int(last) > 0 and size > 0:
                found.append((max(size - int(last), 0), size - 1))
            continue
        if last and int(last) < int(first):
            return None
        if int(first) < size:
            found.append((int(first), min(int(last), size - 1) if last else size - 1))
    return found


def _tags(header: str) -> list[str]:
    """The entity tags of an ``If-None-Match``/``If-Range`` value, as sent."""
    return [t.strip() for t in header.split(",") if t.strip()]


def _none_match(etag: str | None) -> bool:
    """Whether ``If-None-Match`` matches (weak comparison): 304."""
    header = request.headers.get("If-None-Match")
    if not header or etag is None:
        return False
    quoted = f'"{etag}"'
    return any(t == "*" or t.removeprefix("W/") == quoted for t in _tags(header))


def _range_allowed(etag: str | None) -> bool:
    """``If-Range``: the range only when it names this ETag (strong comparison);
    a date, a weak tag or another tag get the whole archive."""
    header = request.headers.get("If-Range")
    return header is None or (etag is not None and header.strip() == f'"{etag}"')


@dataclass
class Sent:
    """A download's response and what it sends (for the audit log)."""

    response: Response
    bytes: int
    range: str | None = None  # ``bytes 0-99/1234`` for a 206


def archive_size(storage: Storage, name: str) -> int:
    """The size of archive ``name``: its file's here, its listed size elsewhere."""
    path = storage.local_path(name)
    try:
        size = path.stat().st_size if path is not None else size_of(storage, name)
    except OSError:
        size = None
    if size is None:
        raise StorageError(f"{name} is not in {storage.url}")
    return size


def send_archive(storage: Storage, name: str, trusted: TrustedKeys) -> Sent:
    """The response for archive ``name`` of ``storage`` (StorageError when it
    cannot be read), with the conditional and range handling above."""
    size = archive_size(storage, name)
    sha256 = signed_sha256(storage, name, size, trusted)
    path = storage.local_path(name)
    headers = {"Accept-Ranges": "bytes", "Cache-Control": "no-store",
               "Content-Disposition": f"attachment; filename={name}"}
    if sha256:
        headers["ETag"] = f'"{sha256}"'
    if request.method in ("GET", "HEAD") and _none_match(sha256):
        return Sent(Response(status=304, headers=headers), 0)
    first, last, status = 0, size - 1, 200
    ranges = parse_ranges(request.headers["Range"], size) \
        if "Range" in request.headers and _range_allowed(sha256) else None
    if ranges == []:
        headers["Content-Range"] = f"bytes */{size}"
        return Sent(Response(json.dumps({"error": "no requested range lies within the archive"}),
                             status=416, mimetype="application/json", headers=headers), 0)
    if ranges is not None and len(ranges) == 1:
        (first, last), status = ranges[0], 206
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    length = max(last - first + 1, 0)
    body = None if request.method == "HEAD" else _open(storage, name, path, first, last,
                                                       status == 206)
    mimetype = "application/octet-stream" if name.endswith(".age") else "application/zip"
    response = Response(_chunks(body, length) if body is not None else b"", status=status,
                        mimetype=mimetype, headers=headers, direct_passthrough=True)
    if body is not None:
        response.call_on_close(body.close)  # also when the client goes away
    response.content_length = length
    return Sent(response, length if body is not None else 0, headers.get("Content-Range"))


def storage_unreachable(exc: StorageError) -> Response:
    """503 for an archive whose storage cannot be reached: the API's JSON (naming
    the storage and why, never a credential) or the error page, with Retry-After.
    Not a 404: the archive may well be there."""
    if request.path.startswith("/api/"):
        response = json_error(503, f"the storage that holds the archive cannot be reached "
                                   f"({exc}); try again later")
    else:
        response = make_response(render_template("error.html", code=503, message=_(
            "The storage that holds this archive cannot be reached, so it cannot be "
            "downloaded now. Try again later.")), 503)
    response.headers["Retry-After"] = str(RETRY_AFTER)
    response.headers["Cache-Control"] = "no-store"
    return response


def _open(storage: Storage, name: str, path, first: int, last: int, ranged: bool) -> IO[bytes]:
    """A stream positioned at byte ``first``: a seek here, a ranged read of a
    storage that offers one, else the storage's stream with the start skipped."""
    if path is not None:
        try:
            body = open(path, "rb")
        except OSError:
            raise StorageError(f"{name} cannot be read from {storage.url}") from None
        body.seek(first)
        return body
    open_range = getattr(storage, "open_range", None)
    if ranged and open_range is not None:
        return open_range(name, first, last)
    body = storage.open(name)
    for _skipped in _chunks(body, first):
        pass
    return body


def _chunks(body: IO[bytes], length: int) -> Iterator[bytes]:
    remaining = length
    while remaining > 0:
        data = body.read(min(CHUNK, remaining))
        if not data:
            return
        remaining -= len(data)
        yield data


def audit_download(storage: Storage, name: str, sent: Sent, actor: str | None,
                   via: str) -> None:
    """The audit row of a download that sends bytes (a 304, a 416 or a HEAD sends
    none): its size, the range and the remote storage it came from."""
    remote = storage.local_path(name) is None
    message = "; ".join(p for p in (sent.range, f"from {storage.url}" if remote else None) if p)
    audit.record(db.engine, "download", "ok", actor=actor, via=via, target=name,
                 bytes=sent.bytes, message=message or None)
