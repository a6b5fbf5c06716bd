"""CSV export format: UTF-8, a header row, RFC 4180 quoting (CRLF line ends,
fields quoted only when they contain a comma, a quote or a line break).

Booleans are written ``true``/``false`` and ``None`` as an empty field.
"""

from __future__ import annotations

import csv
import io
from typing import Iterable, Iterator, Sequence

from guest_registration import hookimpl
from guest_registration.exports import ExportFormat, Row

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


CSV_FORMAT = ExportFormat(
    name="csv", label="CSV (spreadsheet)", media_type="text/csv; charset=utf-8",
    extension="csv", write=write_csv,
)


@hookimpl
def register_export_formats():
    return [CSV_FORMAT]
