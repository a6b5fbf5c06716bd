"""CSV export format: UTF-8, a header row, RFC 4180 quoting (CRLF line ends,
fields quoted only when they contain a comma, a quote or a line break).

Booleans are written ``true``/``false`` and ``None`` as an empty field.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from guest_registration import hookimpl
from guest_registration.i18n import N_, Catalog
from guest_registration.exports import ExportFormat, Row, pg_copy_chunks

from .pg_columns import column_kinds, cursor_rows, identifier, select_columns

CHUNK_CHARS = 64 * 1024

try:  # the rows' fix-up in C (_copyrender.c), built at install where a compiler is found
    from ._copyrender import csv_rows as native_csv
except ImportError:  # pragma: no cover - the same bytes, by whole-chunk passes in Python
    native_csv = None
_DIALECT = {"lineterminator": "\r\n", "quoting": csv.QUOTE_MINIMAL}


def _cells(row: Row) -> list:
    return [("true" if v else "false") if v is True or v is False else v for v in row]


def write_csv(rows: Iterable[Row], fields: Sequence[str]) -> Iterator[bytes]:
    """Yield the CSV document in chunks of about 64 KB."""
    buf = io.StringIO()
    writer = csv.writer(buf, **_DIALECT)
    writer.writerow(fields)
    for row in rows:
        writer.writerow(_cells(row))
        if buf.tell() >= CHUNK_CHARS:
            yield buf.getvalue().encode("utf-8")
            buf.seek(0)
            buf.truncate()
    if buf.tell():
        yield buf.getvalue().encode("utf-8")


#: COPY's NULL marker: a NULL comes out as a bare ``\N``; a value that *is* ``\N``
#: comes quoted. Not the default empty string, which makes COPY quote every empty
#: value (``""``) where :func:`write_csv` writes nothing.
_NULL = b"\\N"
#: one field of COPY's CSV and what follows it (a quoted field may hold line breaks)
_FIELD = re.compile(rb'("(?:[^"]|"")*"|[^,"\n]*)([,\n])')


def _line(values: Row) -> bytes:
    """One row as :func:`write_csv` writes it (same writer settings)."""
    buf = io.StringIO()
    csv.writer(buf, **_DIALECT).writerow(_cells(values))
    return buf.getvalue().encode("utf-8")


def _with_null(row: bytes, bools: frozenset[int] = frozenset()) -> bytes:
    r"""A COPY row holding ``\N``, parsed field by field (a bare ``\N`` is NULL, a
    quoted one is text; the fields at ``bools`` are forced-quoted booleans) and
    written again as :func:`write_csv` writes it, but ending in ``\n`` like the
    other COPY rows."""
    values: list = []
    for match in _FIELD.finditer(row):
        field = match.group(1)
        if field == _NULL:
            values.append(None)
        elif len(values) in bools:
            values.append(field == b'"t"')
        elif field[:1] == b'"':
            values.append(field[1:-1].replace(b'""', b'"').decode("utf-8"))
        else:
            values.append(field.decode("utf-8"))
        if match.group(2) == b"\n":
            break
    return _line(values)[:-2] + b"\n"


def _to_rfc4180(rows: list[bytes], bools: frozenset[int] = frozenset()) -> bytes:
    r"""COPY's rows (each ending in ``\n``) as :func:`write_csv` writes them.

    Rows holding the NULL marker are rewritten one by one (for the export's NOT
    NULL columns: only when a value contains ``\N``). Then every row terminator
    becomes CRLF: with one C-level ``replace`` when no value in the chunk holds a
    line break (it replaced as many ``\n`` as there are rows), else row by row,
    so that a line feed inside a quoted value stays as it is. Last, the booleans
    at ``bools`` (columns neither first nor last, forced-quoted by COPY) become
    ``true``/``false``: ``,"t",`` can stand nowhere else in CSV, since inside a
    quoted value every quote is doubled. Whole-chunk C-level operations only,
    on the common path: about 0.05 CPU s per 500,000 rows, 0.2 with a boolean."""
    chunk = b"".join(rows)
    # a one-byte search is memchr; searching b"\\N" at once is 500 times slower
    if b"\\" in chunk and _NULL in chunk:
        rows = [_with_null(row, bools) if _NULL in row else row for row in rows]
        chunk = b"".join(rows)
    crlf = chunk.replace(b"\n", b"\r\n")
    if len(crlf) - len(chunk) != len(rows):  # a line feed inside a value: row by row
        rows.append(b"\n")
        crlf = b"\r\n".join([row[:-1] for row in rows])
    if bools:
        crlf = crlf.replace(b',"t",', b",true,").replace(b',"f",', b",false,")
    return crlf


def _forced_bools(kinds: Sequence[str]) -> frozenset[int]:
    """The boolean columns COPY is to force-quote: those between two columns that
    are not such booleans (``,"t",`` needs its own commas; one ``replace`` pass
    does not see a second match that shares the first one's comma)."""
    bools: set[int] = set()
    for i in range(1, len(kinds) - 1):
        if kinds[i] == "bool" and i - 1 not in bools:
            bools.add(i)
    return frozenset(bools)


def pg_csv(dbapi_connection, sql: str, params, fields: Sequence[str],
           fetch_rows: int) -> Iterator[bytes]:
    r"""PostgreSQL fast path: ``COPY ... TO STDOUT WITH (FORMAT csv)``.

    PostgreSQL's CSV quoting is the same as ``csv.writer``'s QUOTE_MINIMAL (a
    field is quoted when it holds a comma, a quote, CR or LF). The differences
    are removed without costing the server anything per value: ``\N`` is the
    NULL marker (so an empty string stays an empty, unquoted field; the rare row
    holding ``\N`` is rewritten in Python), booleans become ``true``/``false``
    (forced-quoted by COPY and replaced in Python where they stand between two
    other columns, else by a ``CASE``), and each row's ``\n`` terminator
    becomes ``\r\n``: in one pass in C (``_copyrender.c``) where it was built,
    else by :func:`_to_rfc4180`'s whole-chunk passes.
    Columns whose text COPY writes differently from Python (floats, other
    types) and one-column exports go through :func:`write_csv` over a
    server-side cursor instead. Produces exactly the bytes of :func:`write_csv`
    (tested, also against tricky values).
    """
    kinds = column_kinds(dbapi_connection, sql, params)
    if len(fields) < 2 or any(kind in ("float", "other") for kind in kinds):
        yield from write_csv(cursor_rows(dbapi_connection, sql, params, fetch_rows), fields)
        return
    yield _line(fields)
    # a CASE makes the one process writing the COPY project every row again (9 %
    # of its time); FORCE_QUOTE costs the server nothing (docs/performance.md)
    bools = _forced_bools(kinds)
    options = "FORMAT csv, NULL '\\N'" + (
        f", FORCE_QUOTE ({', '.join(identifier(fields[i]) for i in sorted(bools))})"
        if bools else "")
    flags = bytes(i in bools for i in range(len(fields)))

    def transform(rows: list[bytes]) -> bytes:
        if native_csv is not None:  # one pass in C; None where a row holds \N
            rendered = native_csv(b"".join(rows), flags)
            if rendered is not None:
                return rendered
        return _to_rfc4180(rows, bools)

    yield from pg_copy_chunks(
        dbapi_connection, f"SELECT {select_columns(fields, kinds, bools)} FROM ({sql}) AS r",
        params, options=options, transform=transform)


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
