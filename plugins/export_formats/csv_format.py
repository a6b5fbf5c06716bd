"""CSV export format: UTF-8, a header row, RFC 4180 quoting (CRLF line ends,
fields quoted only when they contain a comma, a quote or a line break).

Booleans are written ``true``/``false`` and ``None`` as an empty field.
"""

from __future__ import annotations

import csv
import io
from typing import Iterable, Iterator, Sequence

from guest_registration import hookimpl
from guest_registration.exports import ExportFormat, Row, pg_text_batches

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


def _pg_cell(column: str) -> str:
    """SQL rendering one column exactly as ``csv.writer`` (QUOTE_MINIMAL) would."""
    c = f'r."{column}"::text'
    return (f"CASE WHEN {c} IS NULL THEN '' "
            f"WHEN strpos({c}, ',') > 0 OR strpos({c}, '\"') > 0 "
            f"OR strpos({c}, chr(10)) > 0 OR strpos({c}, chr(13)) > 0 "
            f"THEN '\"' || replace({c}, '\"', '\"\"') || '\"' ELSE {c} END")


def pg_csv(dbapi_connection, sql: str, params, fields: Sequence[str],
           fetch_rows: int) -> Iterator[bytes]:
    """PostgreSQL fast path: the database renders each CSV line; Python joins them.

    Produces exactly the bytes of :func:`write_csv` (tested), several times faster.
    """
    line = " || ',' || ".join(_pg_cell(f) for f in fields)
    header = b"".join(write_csv(iter(()), fields))
    yield header
    for batch in pg_text_batches(dbapi_connection, f"SELECT {line} FROM ({sql}) AS r",
                                 params, fetch_rows):
        batch.append(b"")
        yield b"\r\n".join(batch)


CSV_FORMAT = ExportFormat(
    name="csv", label="CSV (spreadsheet)", media_type="text/csv; charset=utf-8",
    extension="csv", write=write_csv, fast_paths={"postgresql": pg_csv},
)


@hookimpl
def register_export_formats():
    return [CSV_FORMAT]
