"""What the PostgreSQL fast paths of the built-in formats need to know about the
export's columns: their kind, read from the query's result description, and a
plain server-side cursor for the cases COPY cannot render byte for byte."""

from __future__ import annotations

from typing import Any, Collection, Iterator, Mapping

# PostgreSQL type OIDs
_INTEGERS = {20, 21, 23, 26}  # int8, int2, int4, oid: same digits in PostgreSQL and Python
_FLOATS = {700, 701}  # float4, float8: PostgreSQL writes 1.0 as "1", Python as "1.0"
_BOOL = 16  # COPY writes t/f; the writers true/false
_TEXT = {25, 1043}  # text, varchar: COPY writes the string itself


def column_kinds(dbapi_connection: Any, sql: str, params: Mapping[str, Any]) -> list[str]:
    """One of ``number``, ``bool``, ``float``, ``text`` or ``other`` per column of
    ``sql`` (planned with ``LIMIT 0``: no row is read)."""
    with dbapi_connection.cursor() as cur:
        cur.execute(f"SELECT * FROM ({sql}) AS r LIMIT 0", params)
        return ["number" if d.type_code in _INTEGERS else "bool" if d.type_code == _BOOL
                else "float" if d.type_code in _FLOATS
                else "text" if d.type_code in _TEXT else "other"
                for d in cur.description]


_BOOL_TEXT = 'CASE WHEN r.{0} THEN \'true\' WHEN NOT r.{0} THEN \'false\' END AS {0}'


def identifier(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def select_columns(fields, kinds, raw_bools: Collection[int] = ()) -> str:
    """The select list over ``(sql) AS r``: every column as it is (COPY renders
    integers and strings as Python does), booleans as ``true``/``false`` (NULL
    stays NULL) except those at the positions ``raw_bools`` (left as they are, for a
    format that renders them itself). A ``CASE`` over the bare boolean returns
    one of two constants: the server does no per-row work for it, where
    ``::text`` calls a cast function and makes a new string per row (0.03 s more
    per 500,000 rows); but it makes the process that writes the COPY project
    every row again (about 0.08 s per 500,000 rows, docs/performance.md)."""
    return ", ".join(_BOOL_TEXT.format(identifier(f)) if kind == "bool" and i not in raw_bools
                     else f"r.{identifier(f)}" for i, (f, kind) in enumerate(zip(fields, kinds)))


def cursor_rows(dbapi_connection: Any, sql: str, params: Mapping[str, Any],
                fetch_rows: int) -> Iterator[tuple]:
    """The rows of ``sql`` as Python values through a server-side cursor, for a
    writer's own rendering (memory bounded by ``fetch_rows``)."""
    with dbapi_connection.cursor(name="export_rows") as cur:
        cur.itersize = max(1, fetch_rows)
        cur.execute(sql, params)
        yield from cur


__all__ = ["column_kinds", "identifier", "select_columns", "cursor_rows"]
