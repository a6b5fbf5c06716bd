"""Guest document photos: content validation and UUID-named storage.

Photos are stored as ``<uuid4>.<ext>`` directly under ``UPLOAD_FOLDER``; the
extension comes from the content, never from the client's file name. The system
backup relies on this naming to leave guest photos out.
"""

from __future__ import annotations

import os
import re
import uuid
import zlib
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
#: markup with no business inside a photo or a scan: a file carrying it is a polyglot (valid
#: image *and* HTML a browser would render). Whole tag names only (``<img`` then a blank, ``/``
#: or ``>``): compressed image data holds runs such as ``<a`` by chance; and any tag's event
#: handler or link. Searched in lower case, a pattern at a time (a literal start is fast).
MARKUP_TAGS = tuple(b"script img svg iframe frame frameset object embed applet meta link base style"
                    b" form html body head math template input button textarea isindex marquee"
                    b" details video audio portal noscript".split())
ACTIVE_MARKERS = (b"<!doctype", b"<?php", b"javascript:", b"vbscript:")
_MARKUP = (re.compile(rb"<(?:" + b"|".join(MARKUP_TAGS) + rb")[\s/>]"),
           re.compile(rb"on(?<=[\s/\"']on)[a-z]{3,32}\s{0,8}="),  # any tag's event handler
           re.compile(rb"href(?<=[\s/\"':]href)\s{0,8}="),  # a link
           *(re.compile(re.escape(marker)) for marker in ACTIVE_MARKERS))
#: PDF names (after ``#XX`` escapes are decoded, as readers do) that run script, act on
#: opening, carry files or send data out; ``/Encrypt``: encrypted content cannot be checked
PDF_ACTIVE_NAMES = frozenset((b"/JavaScript", b"/JS", b"/Launch", b"/EmbeddedFile", b"/EF",
                              b"/EmbeddedFiles", b"/OpenAction", b"/AA", b"/RichMedia", b"/XFA",
                              b"/SubmitForm", b"/ImportData", b"/GoToR", b"/GoToE", b"/Encrypt"))
#: a PDF's streams may inflate to at most this many times the upload limit, all together
PDF_INFLATE_FACTOR = 16
_REGULAR = rb"[^\x00\t\n\x0c\r ()<>\[\]{}/%]"  # PDF's regular characters
_WS = rb"(?:[\x00\t\n\x0c\r ]|%[^\r\n]*+)"       # PDF white space, comments included
_PDF_TOKEN = re.compile(rb"%s*(?:(?P<open><<)|(?P<close>>>)|(?P<hex><[^>]*>?)|(?P<str>\()|(?P<name>/"
                        rb"%s*)|(?P<word>%s+)|(?P<other>.))" % (_WS, _REGULAR, _REGULAR), re.DOTALL)
_PDF_NAME = re.compile(rb"/" + _REGULAR + rb"*")
_NAME_ESCAPE = re.compile(rb"#([0-9A-Fa-f]{2})")
_PAREN = re.compile(rb"\\[\s\S]|[()]")
_LINE = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n)")
_OBJ = re.compile(rb"(?<!" + _REGULAR + rb")obj(?!" + _REGULAR + rb")")
#: an object or a trailer a reader could be sent to inside another stream's data
_HIDDEN = re.compile(rb"[0-9]" + _WS + rb"+[0-9]+" + _WS + rb"+obj(?!" + _REGULAR + rb")|trailer")
_SPAN = 64  # longer than any markup match and any active PDF name, however escaped


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
    is an attack or a broken client: refuse it. Dots inside a name (``Jan..Novak.png``)
    are no path: only a ``..`` (or ``.``) part is."""
    if "/" in filename or "\\" in filename or "\x00" in filename or filename in (".", ".."):
        raise PhotoError(N_("the file name must be a plain name, without a path"))


def _has_markup(stream: BinaryIO) -> bool:
    stream.seek(0)
    previous = b""
    while chunk := stream.read(256 * 1024):
        window = previous + chunk.lower()
        if any(pattern.search(window) for pattern in _MARKUP):
            return True
        previous = window[-_SPAN:]
    return False


def _refuse_script() -> PhotoError:
    return PhotoError(N_("the file contains markup or script and is not accepted"))


def _pdf_name(raw: bytes) -> bytes:
    return _NAME_ESCAPE.sub(lambda m: bytes((int(m.group(1), 16),)), raw) if b"#" in raw else raw


def _has_active_names(text: bytes) -> bool:
    return any(_pdf_name(m.group()) in PDF_ACTIVE_NAMES for m in _PDF_NAME.finditer(text))


def _string_end(data: bytes, pos: int) -> int:
    depth = 1
    for m in _PAREN.finditer(data, pos):
        depth += {b"(": 1, b")": -1}.get(m.group(), 0)
        if not depth:
            return m.end()
    return len(data)


def _pdf_walk(data: bytes) -> tuple[list, list, set]:
    """Lex a PDF as a reader does, stepping over stream data (to ``endstream``): the streams
    (dictionary entries, data start, end), the stretches between them, the ``obj`` keywords."""
    streams, stretches, objs, tokens, last = [], [], set(), [], None
    pos = start = depth = 0
    while m := _PDF_TOKEN.match(data, pos):
        kind, pos = m.lastgroup, m.end()
        word = m.group(kind)
        if kind == "str":
            pos = _string_end(data, pos)
        if depth == 1:  # the dictionary's own entries; a nested one is a value ("<<")
            tokens.append((kind, _pdf_name(word) if kind == "name" else word))
        if kind == "open":
            tokens, depth = (tokens if depth else []), depth + 1
            continue
        if kind == "close" and depth:
            depth -= 1
            last = None if depth else tokens[:-1]
            continue
        if word == b"obj" and kind == "word":
            objs.add(m.start(kind))
            depth = 0
        elif word == b"stream" and kind == "word" and last is not None and not depth:
            begin = line.end() if (line := _LINE.match(data, pos)) else len(data)
            end = data.find(b"endstream", begin) % (len(data) + 1)  # -1: to the end
            streams.append((last, begin, end))
            stretches.append((start, begin))
            pos = start = end
        if not depth:
            last = None
    stretches.append((start, len(data)))
    return streams, stretches, objs


def _stream_kind(tokens: list) -> tuple[bool, list | None, bool]:
    """From a stream's dictionary: is it (possibly) an object stream, its filters
    (None when not plain names), does it have decode parameters."""
    top, array = [], None
    for kind, word in tokens:
        if array is not None and word == b"]":
            top.append(("array", array))
            array = None
        elif array is not None:
            array.append(word if kind == "name" else None)
        elif word == b"[":
            array = []
        else:
            top.append((kind, word))
    names = [word for kind, word in top if kind == "name"]
    keys = [i for i, (kind, word) in enumerate(top) if word in (b"/Filter", b"/F")]
    filters = [] if not keys else None
    if len(keys) == 1 and keys[0] + 1 < len(top):
        kind, value = top[keys[0] + 1]
        filters = [value] if kind == "name" else None
        filters = value if kind == "array" and None not in value else filters
    objstm = bool({b"/N", b"/First", b"/ObjStm"} & set(names))
    return objstm, filters, bool({b"/DecodeParms", b"/DP"} & set(names))


def _inflate(data: bytes, begin: int, end: int, budget: int, scan: bool) -> int:
    """Inflate a stream in steps, at most ``budget`` bytes (OverflowError past it); return
    what is left. With ``scan`` (an object stream) its text is checked for active names
    and it must inflate; other data that is not zlib is left alone."""
    inflater, previous, step, pending, full = zlib.decompressobj(), b"", 256 * 1024, b"", False
    try:
        while not inflater.eof and (pending or begin < end or full):
            if not pending and begin < end:
                pending, begin = memoryview(data)[begin:min(begin + step, end)], begin + step
            out = inflater.decompress(pending, step)
            pending, full, budget = inflater.unconsumed_tail, len(out) == step, budget - len(out)
            if budget < 0:
                raise OverflowError
            if scan and _has_active_names(window := previous + out):
                raise _refuse_script()
            previous = window[-_SPAN:] if scan else b""
    except zlib.error:
        if scan:
            raise _refuse_script() from None
    return budget


def _check_pdf(stream: BinaryIO, max_bytes: int) -> None:
    """No active name anywhere in the PDF's syntax or its object streams (where
    compressed PDFs keep dictionaries); no object a reader could be sent to hidden in
    stream data; streams inflate to at most ``PDF_INFLATE_FACTOR`` x the upload limit."""
    stream.seek(0)
    data = stream.read(max_bytes + 1)
    streams, stretches, objs = _pdf_walk(data)
    for begin, end in stretches:
        # an object header the lexer did not meet as one would be read differently by a reader
        if _has_active_names(data[begin:end]) or any(
                m.start() not in objs for m in _OBJ.finditer(data, begin, end)):
            raise _refuse_script()
    budget = PDF_INFLATE_FACTOR * max_bytes
    for tokens, begin, end in streams:
        if _HIDDEN.search(data, begin, end):
            raise _refuse_script()
        objstm, filters, parms = _stream_kind(tokens)
        readable = filters == [] or filters in ([b"/FlateDecode"], [b"/Fl"]) and not parms
        if objstm and (not readable or not filters and _has_active_names(data[begin:end])):
            raise _refuse_script()  # active, or an object stream this check cannot read
        try:
            # to zlib's own end, as a reader inflates: ``endstream`` may be in the data
            budget = _inflate(data, begin, len(data), budget, scan=objstm and bool(filters))
        except OverflowError:
            raise PhotoError(N_("the file is larger than %(mb)s MB"),
                             mb=max_bytes // (1024 * 1024) or 1) from None


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
    if _has_markup(stream):
        raise _refuse_script()
    if ext == "pdf":
        _check_pdf(stream, max_bytes)
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
