"""JSON export format: one array of objects, keys in field order, one object per
line; numbers stay numbers, booleans booleans, ``None`` is ``null``; an empty
export is ``[]``. Non-ASCII text is written as UTF-8, not escaped."""

from __future__ import annotations

import json
from typing import Iterable, Iterator, Sequence

from guest_registration import hookimpl
from guest_registration.exports import ExportFormat, Row

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


JSON_FORMAT = ExportFormat(
    name="json", label="JSON", media_type="application/json", extension="json",
    write=write_json, as_attachment=False,
)


@hookimpl
def register_export_formats():
    return [JSON_FORMAT]
