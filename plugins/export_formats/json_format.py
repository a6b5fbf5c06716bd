"""JSON export format: one array of objects, keys in field order, one object per
line; numbers stay numbers, booleans booleans, ``None`` is ``null``; an empty
export is ``[]``. Non-ASCII text is written as UTF-8, not escaped."""

from __future__ import annotations

import json
import re
from typing import Iterable, Iterator, Sequence

from guest_registration import hookimpl
from guest_registration.exports import ExportFormat, Row, pg_copy_chunks

from .pg_columns import column_kinds, select_columns

CHUNK_ROWS = 500
#: COPY text rendered per chunk on the fast path. The render's whole-chunk passes
#: (split, join) stay in the CPU's cache at this size: 0.86-0.88 CPU s per
#: 500,000 rows at 32-64 KiB against 1.07 at 256 KiB (7 alternated rounds), and
#: the whole export in-process 9 % faster (docs/performance.md)
RENDER_CHUNK_BYTES = 64 * 1024
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

try:  # the render in C (_copyrender.c), built at install where a compiler is found
    from ._copyrender import json_rows as native_render
except ImportError:  # pragma: no cover - the same bytes, rendered in Python
    native_render = None


def write_json(rows: Iterable[Row], fields: Sequence[str]) -> Iterator[bytes]:
    """Yield ``[\\n{...},\\n{...}\\n]`` in chunks of a few hundred rows."""
    fields = list(fields)
    parts: list[str] = []
    first = True
    for row in rows:
        parts.append(("[\n" if first else ",\n") + _encode(dict(zip(fields, row))))
        first = False
        if len(parts) >= CHUNK_ROWS:
            yield "".join(parts).encode("utf-8")
            parts.clear()
    parts.append("[]" if first else "\n]")
    yield "".join(parts).encode("utf-8")


# raw control characters (COPY writes all but \b \f \n \r \t \v unescaped); JSON
# needs \u00XX for them, so a chunk holding one goes the careful way
_RAW_CONTROL = bytes(range(0x00, 0x09)) + bytes(range(0x0B, 0x20))
#: every byte to 1, a raw control character to 0: ``b"\0" in chunk.translate(...)``
#: finds one faster than deleting them and comparing lengths
_CONTROL_TABLE = bytes(0 if b in _RAW_CONTROL else 1 for b in range(256))
#: COPY's text for a boolean, as JSON writes it
_JSON_BOOL = {b"t": b"true", b"f": b"false"}
_COPY_ESCAPES = {b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t",
                 b"v": b"\v", b"\\": b"\\"}


def _unescape_copy_text(field: bytes) -> bytes:
    return re.sub(rb"\\(.)", lambda m: _COPY_ESCAPES.get(m.group(1), m.group(1)), field)


def _careful(row: bytes, kinds: Sequence[str], template: bytes) -> bytes:
    """One COPY text row as :func:`write_json` writes it, value by value."""
    values = []
    for raw, kind in zip(row[:-1].split(b"\t"), kinds):
        if raw == b"\\N":
            values.append(b"null")
        elif kind == "string":
            values.append(_encode(_unescape_copy_text(raw).decode("utf-8")).encode("utf-8"))
        elif kind == "float":
            values.append(_encode(float(raw)).encode())
        elif kind == "bool":  # COPY's t/f (see pg_json)
            values.append(_JSON_BOOL[raw])
        else:
            values.append(raw)
    return template % tuple(values)


def _row_text(fields: Sequence[str], kinds: Sequence[str]):
    """The fixed text of a row: a ``%`` template for rows rendered one by one, and
    for whole chunks the text before the first value (``opens[0]``), between a
    row's values (``inner``: one entry per tab), between rows (``boundary``, which
    replaces a row's line feed) and after the last value (``tail``)."""
    parts = []
    for i, (name, kind) in enumerate(zip(fields, kinds)):
        key = _encode(name).replace("%", "%%")
        parts.append(("{" if i == 0 else ",") + key + ":" + ('"%b"' if kind == "string" else "%b"))
    careful_template = "".join(parts).encode().replace(b'"%b"', b"%b") + b"}"
    opens = [(("{" if i == 0 else ",") + _encode(name) + ":" + ('"' if kind == "string" else ""))
             .encode() for i, (name, kind) in enumerate(zip(fields, kinds))]
    closes = [b'"' if kind == "string" else b"" for kind in kinds]
    inner = [closes[i] + opens[i + 1] for i in range(len(fields) - 1)]
    tail = closes[-1] + b"}"
    return careful_template, opens[0], inner, tail + b",\n" + opens[0], tail


def _columns(dbapi_connection, sql: str, params, fields: Sequence[str]):
    """Each column's kind for the render (``number``, ``bool``: COPY's t/f,
    ``float`` or ``string``), the positions of the booleans mapped in Python
    (between two other columns) and the COPY's select list (the other booleans
    as true/false, written as they are, like numbers)."""
    kinds = [kind if kind in ("number", "bool", "float") else "string"
             for kind in column_kinds(dbapi_connection, sql, params)]
    raw_bools = [i for i, kind in enumerate(kinds) if kind == "bool" and 0 < i < len(kinds) - 1]
    columns = select_columns(fields, kinds, raw_bools)
    kinds = [("number" if kind == "bool" and i not in raw_bools else kind)
             for i, kind in enumerate(kinds)]
    return kinds, raw_bools, columns


class ChunkRender:
    """COPY text rows in chunks as JSON: in C where ``_copyrender`` was built, else by
    whole-chunk operations in Python, and value by value where a chunk holds what
    neither renders whole (a NULL, ``\\v``, a raw control character, any float)."""

    def __init__(self, fields: Sequence[str], kinds: Sequence[str], raw_bools: Sequence[int]):
        self.kinds, self.raw_bools, self.step = kinds, raw_bools, len(fields) - 1
        self.template, self.first_open, self.inner, self.boundary, self.tail = \
            _row_text(fields, kinds)
        self.all_careful = "float" in kinds
        self.native = native_render if len(fields) > 1 else None
        self.native_args = (self.first_open, tuple(self.inner), self.boundary, self.tail,
                            bytes(i in raw_bools for i in range(len(fields))))
        self.lead = b"[\n"  # before the next chunk's first row: "[" once, then ","

    def next_chunk(self, rows: list[bytes]) -> bytes:
        start, self.lead = self.lead, b",\n"
        if self.all_careful:
            return self.careful(start, rows)
        if self.native is not None:
            rendered = self.native(start, b"".join(rows), *self.native_args)
            return self.careful(start, rows) if rendered is None else rendered
        return self.python(start, rows)

    def careful(self, start: bytes, rows: list[bytes]) -> bytes:
        return start + b",\n".join([_careful(row, self.kinds, self.template) for row in rows])

    def python(self, start: bytes, rows: list[bytes]) -> bytes:
        chunk = b"".join(rows)
        # one-byte searches first (memchr): two-byte ones scan 500 times slower
        if ((b"\\" in chunk and (b"\\N" in chunk or b"\\v" in chunk))
                or b"\0" in chunk.translate(_CONTROL_TABLE)):
            return self.careful(start, rows)
        # every row has len(fields) tab-separated values and ends in a line feed
        # (raw tabs and line feeds are never inside a value in COPY's text format)
        if b'"' in chunk:
            chunk = chunk.replace(b'"', b'\\"')
        values = chunk.replace(b"\n", self.boundary).split(b"\t")
        values[-1] = values[-1][:-len(self.boundary)]  # the last row's is the chunk's end
        for i in self.raw_bools:
            values[i::self.step] = [_JSON_BOOL[value] for value in values[i::self.step]]
        pieces = [b""] * (2 * len(values) + 1)
        pieces[0] = start + self.first_open
        pieces[1::2] = values
        separators = self.inner * len(rows)
        separators.append(self.tail)
        pieces[2::2] = separators
        return b"".join(pieces)


def pg_json(dbapi_connection, sql: str, params, fields: Sequence[str],
            fetch_rows: int) -> Iterator[bytes]:
    """PostgreSQL fast path: plain ``COPY ... TO STDOUT`` (text format, the
    cheapest output PostgreSQL has) and the JSON around its values, by
    :class:`ChunkRender`: one pass in C (``_copyrender.c``) where it was built,
    else whole-chunk operations in Python, described here.

    COPY's text escapes coincide with JSON's for backslash, ``\\b \\f \\n \\r
    \\t``; a quote only needs a backslash. So a chunk without NULLs, ``\\v`` or raw
    control characters becomes JSON with whole-chunk operations: quotes escaped,
    each row's line feed replaced by the text between two rows, one split at the
    tabs into the values, and one join of the values interleaved with the fixed
    text between them (keys, quotes, braces). Each chunk starts with what comes
    before its first row (``[`` or ``,``), so no chunk is copied again on its way
    out. Other chunks are decoded and encoded row by row with the same encoder as
    :func:`write_json`. Produces exactly the bytes of :func:`write_json` (tested).
    Booleans between two other columns come as COPY's ``t``/``f`` and are mapped
    in Python, value by value but only those (a ``CASE`` in the query made the
    process writing the COPY project every row again); the first or last
    column's value is joined to the text between rows, so there the server
    writes ``true``/``false``.
    Building the objects inside PostgreSQL measured slower: ``row_to_json``,
    ``json_build_object`` or ``concat`` of the values and keys two to three times
    the plain COPY's time, even in parallel workers.
    """
    kinds, raw_bools, columns = _columns(dbapi_connection, sql, params, fields)
    render = ChunkRender(fields, kinds, raw_bools)
    opened = False
    for chunk in pg_copy_chunks(dbapi_connection, f"SELECT {columns} FROM ({sql}) AS r", params,
                                transform=render.next_chunk, chunk_bytes=RENDER_CHUNK_BYTES):
        yield chunk
        opened = True
    yield b"\n]" if opened else b"[]"


JSON_FORMAT = ExportFormat(
    name="json", label="JSON", media_type="application/json", extension="json",
    write=write_json, fast_paths={"postgresql": pg_json}, as_attachment=False,
)


@hookimpl
def register_export_formats():
    return [JSON_FORMAT]
