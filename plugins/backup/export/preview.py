"""The Backup page's Preview: the first lines of a monthly export, read on the
server, which then stops the export; audited as a ``preview``, not an export."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine

from guest_backup.engines import DatabaseEngine
from guest_backup.export.request import ExportRequest
from guest_backup.export.stream import open_export


@dataclass
class Preview:
    """The first lines of an export, as the API would send them."""

    rows: int
    media_type: str
    lines: list[str]


def preview(engine: Engine, req: ExportRequest, *, db_engine: DatabaseEngine | None,
            actor: str | None, via: str, lines: int = 20, fetch_rows: int = 2000,
            on_close=None) -> Preview:
    """Read only the first ``lines`` lines of an export and stop; audited as a
    ``preview`` (not as an export: nothing was downloaded). ``on_close`` as for
    :func:`~.stream.open_export` (the caller's export slot is given back)."""
    stream = open_export(engine, req, db_engine=db_engine, actor=actor, via=via,
                         action="preview", fetch_rows=fetch_rows, on_close=on_close)
    body = bytearray()
    try:
        for chunk in stream.chunks:
            body += chunk
            if body.count(b"\n") >= lines:
                break
    finally:
        shown = body.split(b"\n")[:lines]
        stream.chunks.close("ok", f"first {len(shown)} lines shown")
    return Preview(stream.rows, stream.media_type,
                   [line.decode("utf-8", "replace").rstrip("\r") for line in shown])
