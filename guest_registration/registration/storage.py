"""Guest document photos: content validation and UUID-named storage.

Photos are stored as ``<uuid4>.<ext>`` directly under ``UPLOAD_FOLDER``; the
extension comes from the content, never from the client's file name. The system
backup relies on this naming to leave guest photos out.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..i18n import N_

SIGNATURES = (
    (b"\xff\xd8\xff", "jpg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"%PDF-", "pdf"),
)
PNG_TRAILER = b"IEND\xaeB`\x82"
#: markup or active content that has no business inside a photo or a scan: a file
#: carrying it is a polyglot (valid image *and* HTML/script/PDF-JavaScript)
ACTIVE_MARKERS = (b"<script", b"<html", b"<!doctype", b"<?php", b"<svg", b"<iframe", b"<body",
                  b"javascript:")
PDF_ACTIVE_MARKERS = (b"/javascript", b"/js", b"/launch", b"/embeddedfile", b"/openaction",
                      b"/richmedia", b"/xfa")


class PhotoError(ValueError):
    """The upload is not an acceptable document photo; the message says why
    (in English; :meth:`translated` in the page's language)."""

    def __init__(self, message: str, **params: object) -> None:
        super().__init__(message % params if params else message)
        self.message, self.params = message, params

    def translated(self) -> str:
        from flask_babel import gettext

        return gettext(self.message, **self.params)


@dataclass
class CheckedPhoto:
    stream: BinaryIO
    extension: str
    size: int


def _tail(stream: BinaryIO, size: int, n: int = 1024) -> bytes:
    stream.seek(max(0, size - n))
    return stream.read(n)


def check_filename(filename: str) -> None:
    """The client's file name is never used for storage, but one carrying a path
    is an attack or a broken client: refuse it."""
    if "/" in filename or "\\" in filename or ".." in filename or "\x00" in filename:
        raise PhotoError(N_("the file name must be a plain name, without a path"))


def _has_marker(stream: BinaryIO, markers: tuple[bytes, ...]) -> bool:
    stream.seek(0)
    overlap = max(len(m) for m in markers)
    previous = b""
    while chunk := stream.read(256 * 1024):
        window = (previous + chunk).lower()
        if any(m in window for m in markers):
            return True
        previous = window[-overlap:]
    return False


def check_photo(stream: BinaryIO, max_bytes: int) -> CheckedPhoto:
    """Check a photo by its content: JPEG, PNG or PDF, non-empty, at most ``max_bytes``.

    Besides the magic number at the start, the format's end marker must be at the
    end (refusing text files renamed ``.jpg`` and files with something appended),
    and no markup, script or PDF active content may appear anywhere (refusing
    polyglots that a browser or viewer would also run as HTML or JavaScript).
    """
    stream.seek(0, os.SEEK_END)
    size = stream.tell()
    stream.seek(0)
    if size == 0:
        raise PhotoError(N_("the file is empty"))
    if size > max_bytes:
        raise PhotoError(N_("the file is larger than %(mb)s MB"), mb=max_bytes // (1024 * 1024) or 1)
    head = stream.read(16)
    for magic, ext in SIGNATURES:
        if head.startswith(magic):
            break
    else:
        raise PhotoError(N_("only JPEG, PNG or PDF files are accepted"))
    tail = _tail(stream, size).rstrip(b"\r\n\t \x00")
    ok = {
        "jpg": tail.endswith(b"\xff\xd9"),
        "png": tail.endswith(PNG_TRAILER),
        "pdf": b"%%EOF" in tail,
    }[ext]
    if not ok:
        raise PhotoError(N_("the file is not a complete %(kind)s file"), kind=ext.upper())
    markers = ACTIVE_MARKERS + (PDF_ACTIVE_MARKERS if ext == "pdf" else ())
    if _has_marker(stream, markers):
        raise PhotoError(N_("the file contains markup or script and is not accepted"))
    stream.seek(0)
    return CheckedPhoto(stream, ext, size)


def store_photo(photo: CheckedPhoto, folder: str | os.PathLike) -> str:
    """Write a checked photo as ``<uuid4>.<ext>`` (mode 0600) and return the name.

    Written under a temporary name and renamed, so a half-written photo never
    carries a real photo name.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{uuid.uuid4()}.{photo.extension}"
    tmp = folder / f".tmp-{name}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            photo.stream.seek(0)
            while chunk := photo.stream.read(1024 * 1024):
                out.write(chunk)
        os.replace(tmp, folder / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return name


def remove_photos(names: list[str], folder: str | os.PathLike) -> None:
    """Best-effort removal of photos stored for a registration that did not commit."""
    for name in names:
        try:
            (Path(folder) / name).unlink()
        except FileNotFoundError:
            pass
