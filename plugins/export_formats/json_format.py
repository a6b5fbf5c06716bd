"""JSON export format: one array of objects, keys in field order, one object per
line; numbers stay numbers, booleans booleans, ``None`` is ``null``; an empty
export is ``[]``. Non-ASCII text is written as UTF-8, not escaped."""

from __future__ import annotations

import json
from typing import Iterable, Iterator, Sequence

from guest_registration import hookimpl
from guest_registration.exports import ExportFormat, Row, pg_text_batches

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


def pg_json(dbapi_connection, sql: str, params, fields: Sequence[str],
            fetch_rows: int) -> Iterator[bytes]:
    """PostgreSQL fast path: ``row_to_json`` renders each object (compact, UTF-8,
    the same escapes as Python's encoder); Python only frames the array.

    Produces exactly the bytes of :func:`write_json` (tested).
    """
    first = True
    for batch in pg_text_batches(dbapi_connection, f"SELECT row_to_json(r)::text FROM ({sql}) AS r",
                                 params, fetch_rows):
        yield (b"[\n" if first else b",\n") + b",\n".join(batch)
        first = False
    yield b"[]" if first else b"\n]"


JSON_FORMAT = ExportFormat(
    name="json", label="JSON", media_type="application/json", extension="json",
    write=write_json, fast_paths={"postgresql": pg_json}, as_attachment=False,
)


@hookimpl
def register_export_formats():
    return [JSON_FORMAT]
