"""CSV export format: UTF-8, a header row, RFC 4180 quoting (CRLF line ends,
fields quoted only when they contain a comma, a quote or a line break).

Booleans are written ``true``/``false`` and ``None`` as an empty field.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from guest_registration import hookimpl
from guest_registration.i18n import N_, Catalog
from guest_registration.exports import ExportFormat, Row, pg_copy_chunks

CHUNK_CHARS = 64 * 1024


def _cells(row: Row) -> list:
    return [("true" if v else "false") if v is True or v is False else v for v in row]


def write_csv(rows: Iterable[Row], fields: Sequence[str]) -> Iterator[bytes]:
    """Yield the CSV document in chunks of about 64 KB."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(fields)
    for row in rows:
        writer.writerow(_cells(row))
        if buf.tell() >= CHUNK_CHARS:
            yield buf.getvalue().encode("utf-8")
            buf.seek(0)
            buf.truncate()
    if buf.tell():
        yield buf.getvalue().encode("utf-8")


def _crlf(rows: list[bytes]) -> bytes:
    """COPY ends rows with LF; RFC 4180 (and ``csv.writer``) with CRLF. Line feeds
    inside quoted fields stay as they are, so the rows are fixed one by one."""
    rows.append(b"\n")
    return b"\r\n".join([row[:-1] for row in rows])


def pg_csv(dbapi_connection, sql: str, params, fields: Sequence[str],
           fetch_rows: int) -> Iterator[bytes]:
    """PostgreSQL fast path: ``COPY ... TO STDOUT WITH (FORMAT csv)``.

    PostgreSQL's CSV quoting is the same as ``csv.writer``'s QUOTE_MINIMAL (a
    field is quoted when it holds a comma, a quote, CR or LF). The differences
    are removed: every column is sent as text with ``''`` turned into NULL (both
    are an empty, unquoted field), booleans come out as ``true``/``false``, and
    each row's ``\\n`` terminator becomes ``\\r\\n``. Produces exactly the bytes
    of :func:`write_csv` (tested).
    """
    columns = ", ".join(f'NULLIF(r."{f}"::text, \'\') AS "{f}"' for f in fields)
    yield b"".join(write_csv(iter(()), fields))
    yield from pg_copy_chunks(dbapi_connection, f"SELECT {columns} FROM ({sql}) AS r", params,
                              options="FORMAT csv", transform=_crlf)


CSV_FORMAT = ExportFormat(
    # the label in English here; pages translate it (this plugin's catalogue)
    name="csv", label=N_("CSV (spreadsheet)"), media_type="text/csv; charset=utf-8",
    extension="csv", write=write_csv, fast_paths={"postgresql": pg_csv},
)


@hookimpl
def register_export_formats():
    return [CSV_FORMAT]


@hookimpl
def register_translations():
    """This plugin's own catalogue (domain ``csv_format``): its label on pages."""
    return [Catalog(Path(__file__).resolve().parent / "translations", "csv_format")]
