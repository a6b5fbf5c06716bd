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
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


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
_COPY_ESCAPES = {b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t",
                 b"v": b"\v", b"\\": b"\\"}


def _unescape_copy_text(field: bytes) -> bytes:
    return re.sub(rb"\\(.)", lambda m: _COPY_ESCAPES.get(m.group(1), m.group(1)), field)


def _row_text(fields: Sequence[str], kinds: Sequence[str]):
    """The fixed text of a row: a ``%`` template for rows rendered one by one, and
    for whole chunks the text before each value (``opens``), after a row's last
    value (``row_end``), and between values (``cycle``: one row's worth, the last
    entry running into the next row)."""
    parts = []
    for i, (name, kind) in enumerate(zip(fields, kinds)):
        key = _encode(name).replace("%", "%%")
        parts.append(("{" if i == 0 else ",") + key + ":" + ('"%b"' if kind == "string" else "%b"))
    careful_template = "".join(parts).encode().replace(b'"%b"', b"%b") + b"}"
    opens = [(("{" if i == 0 else ",") + _encode(name) + ":" + ('"' if kind == "string" else ""))
             .encode() for i, (name, kind) in enumerate(zip(fields, kinds))]
    closes = [b'"' if kind == "string" else b"" for kind in kinds]
    row_end = closes[-1] + b"},\n"
    cycle = [closes[i] + opens[i + 1] for i in range(len(fields) - 1)] + [row_end + opens[0]]
    return careful_template, opens, row_end, cycle


def pg_json(dbapi_connection, sql: str, params, fields: Sequence[str],
            fetch_rows: int) -> Iterator[bytes]:
    """PostgreSQL fast path: plain ``COPY ... TO STDOUT`` (text format, the
    cheapest output PostgreSQL has) and the JSON around its values in Python.

    COPY's text escapes coincide with JSON's for backslash, ``\\b \\f \\n \\r
    \\t``; a quote only needs a backslash. So a chunk without NULLs, ``\\v`` or raw
    control characters becomes JSON with one ``replace``, one split of the whole
    chunk into its values, and one join of the values interleaved with the fixed
    text between them (keys, quotes, braces). Other chunks are decoded and
    encoded row by row with the same encoder as :func:`write_json`. Produces
    exactly the bytes of :func:`write_json` (tested). Building the objects inside
    PostgreSQL measured slower: ``row_to_json``/``to_json`` two to three times,
    string concatenation with ``replace()`` twice the plain COPY's time.
    """
    kinds = [kind if kind in ("number", "bool", "float") else "string"
             for kind in column_kinds(dbapi_connection, sql, params)]
    careful_template, opens, row_end, cycle = _row_text(fields, kinds)
    columns = select_columns(fields, kinds)  # bool::text is true/false
    all_careful = "float" in kinds

    def careful(row: bytes) -> bytes:
        values = []
        for raw, kind in zip(row[:-1].split(b"\t"), kinds):
            if raw == b"\\N":
                values.append(b"null")
            elif kind == "string":
                values.append(_encode(_unescape_copy_text(raw).decode("utf-8")).encode("utf-8"))
            elif kind == "float":
                values.append(_encode(float(raw)).encode())
            else:
                values.append(raw)
        return careful_template % tuple(values)

    def render(rows: list[bytes]) -> bytes:
        chunk = b"".join(rows)
        # one-byte searches first (memchr): two-byte ones scan 500 times slower
        if (all_careful or (b"\\" in chunk and (b"\\N" in chunk or b"\\v" in chunk))
                or b"\0" in chunk.translate(_CONTROL_TABLE)):
            return b",\n".join([careful(row) for row in rows]) + b",\n"
        # every row has len(fields) tab-separated fields: one flat split of the
        # chunk, then the values and the text between them interleaved and joined,
        # all C-level loops (a tenth less CPU than a % over a repeated row template)
        values = chunk.replace(b'"', b'\\"').replace(b"\n", b"\t").split(b"\t")
        values.pop()  # after the last terminator
        pieces = [b""] * (2 * len(values))
        pieces[0::2] = values
        separators = cycle * len(rows)
        separators[-1] = row_end
        pieces[1::2] = separators
        return opens[0] + b"".join(pieces)

    opened = False
    for chunk in pg_copy_chunks(dbapi_connection, f"SELECT {columns} FROM ({sql}) AS r", params,
                                transform=render):
        yield (b",\n" if opened else b"[\n") + chunk[:-2]
        opened = True
    yield b"\n]" if opened else b"[]"


JSON_FORMAT = ExportFormat(
    name="json", label="JSON", media_type="application/json", extension="json",
    write=write_json, fast_paths={"postgresql": pg_json}, as_attachment=False,
)


@hookimpl
def register_export_formats():
    return [JSON_FORMAT]
