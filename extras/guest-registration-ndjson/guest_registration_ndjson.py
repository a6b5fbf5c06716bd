"""NDJSON export format for guest-registration: one compact JSON object per line,
keys in field order, UTF-8, every line ended by ``\\n``; an empty export is empty."""

from __future__ import annotations

import json
from typing import Iterable, Iterator, Sequence

from guest_registration import hookimpl
from guest_registration.exports import ExportFormat

CHUNK_ROWS = 1000
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def write_ndjson(rows: Iterable[Sequence], fields: Sequence[str]) -> Iterator[bytes]:
    """Stream the rows, about a thousand lines per chunk."""
    fields = list(fields)
    lines: list[str] = []
    for row in rows:
        lines.append(_encode(dict(zip(fields, row))))
        if len(lines) >= CHUNK_ROWS:
            yield ("\n".join(lines) + "\n").encode("utf-8")
            lines.clear()
    if lines:
        yield ("\n".join(lines) + "\n").encode("utf-8")


@hookimpl
def register_export_formats():
    return [ExportFormat(name="ndjson", label="NDJSON (JSON lines)",
                         media_type="application/x-ndjson", extension="ndjson",
                         write=write_ndjson)]
