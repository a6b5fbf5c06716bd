"""The PostgreSQL COPY paths of the export formats produce exactly the bytes of the
generic writers, on values chosen to break them, and cost the database no more
than the export's own SELECT (no per-value expressions, no joined count)."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime

import psycopg2
import pytest
from sqlalchemy import event

from guest_backup.export.request import parse_request
from guest_backup.export.stream import open_export
from guest_formats.csv_format import pg_csv, write_csv
from guest_formats.json_format import pg_json, write_json
from guest_registration.extensions import db
from guest_registration.models import Guest, Registration, Trip
from guest_formats import csv_format, json_format
from tests.helpers import db_engine_of, missing

pytestmark = pytest.mark.parametrize("backend", ["postgresql"])  # COPY is PostgreSQL's

#: values that differ between COPY's CSV and csv.writer, or that a careless
#: rewrite of COPY's output would break
TRICKY = [
    "plain", "", " ", '"', '""', '"""abc"', 'a,"",b', ',"",', 'say "hi"', "comma, here",
    "line\nfeed", "cr\rreturn", "crlf\r\nend", "\n", "tab\there", "=1+2", "+41 79", "-3",
    "@SUM(A1)", "=HYPERLINK(\"x\")", "Nováková", "Žluťoučký kůň", "😀", "\\N", '"\\N"',
    "a\\Nb", "\\N,\\N", "\\", "\\.", "%s", "%(x)s", "{}", "ctl\x01\x1f", "\x7f", "ä\nö",
    # what the forced-quoted booleans look like in COPY's CSV, inside values
    "t", "f", '"t"', '"f"', ',"t",', ',"f",', 't",', ',"t', "a,t,", '"t","f"',
]


@pytest.fixture(params=["c", "python"])
def native(request, monkeypatch):
    """The formats' whole-chunk render in C (``_copyrender``) and the one in
    Python, used where the C one was not built."""
    if request.param == "python":
        monkeypatch.setattr(json_format, "native_render", None)
        monkeypatch.setattr(csv_format, "native_csv", None)
    elif json_format.native_render is None or csv_format.native_csv is None:
        missing("REQUIRE_NATIVE", "guest_formats._copyrender was not built")
    return request.param


def _month(app, year: int, month: int, names: list[tuple[str, str, str]],
           title: str = 'Tatras, "High"') -> None:
    with app.app_context():
        trip = Trip(title=title, max_guests=5)
        reg = Registration(trip=trip, email="x@example.com", language="de")
        db.session.add_all([trip, reg])
        db.session.add_all([
            Guest(registration=reg, first_name=first, last_name=last or "-",
                  age_category="adult", document_type="passport", document_number=number,
                  gdpr_consent=bool(i % 2), created_at=datetime(year, month, 1 + i % 28, i % 24))
            for i, (first, last, number) in enumerate(names)])
        db.session.commit()


def _chunks(app, year: int, month: int, fmt: str, fast: bool) -> list[bytes]:
    with app.app_context():
        req = parse_request({"year": [str(year)], "month": [str(month)], "format": [fmt]},
                            app.extensions["export_formats"])
        stream = open_export(db.engine, req, db_engine=db_engine_of(app), actor="t", via="cli",
                             use_fast_path=fast)
        return list(stream.chunks)


def _export(app, year: int, month: int, fmt: str, fast: bool) -> bytes:
    return b"".join(_chunks(app, year, month, fmt, fast))


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_copy_path_equals_generic_path_on_tricky_values(app, fmt, native):
    """Every tricky value as first name, last name and document number, alone and
    next to each other, through the whole export: the same bytes both ways."""
    names = [(a, b, a + b) for a in TRICKY for b in (a, "x", "", '"', "\\N")]
    _month(app, 2025, 3, names, title="\\N, \"a\nb\"")
    fast, slow = _export(app, 2025, 3, fmt, True), _export(app, 2025, 3, fmt, False)
    assert fast == slow
    if fmt == "csv":
        rows = list(csv.reader(io.StringIO(fast.decode("utf-8"), newline="")))
        assert len(rows) == len(names) + 1
        assert [r[2] for r in rows[1:]] == [first for first, _, _ in names]
        assert "=1+2" in {r[3] for r in rows}  # no formula defusing: the backup is faithful
    else:
        assert [r["document_number"] for r in json.loads(fast)] == [n for _, _, n in names]


def test_copy_csv_equals_generic_over_many_chunks_with_line_breaks(app, native):
    """Chunks with and without a line break inside a value (the two ways the row
    ends become CRLF), and a month of plain rows, over many COPY chunks."""
    names = [(("a\nb" if i % 997 == 0 else f"n{i}"), 'x "y"', str(i)) for i in range(6000)]
    _month(app, 2025, 4, names)
    chunks = _chunks(app, 2025, 4, "csv", True)
    fast = b"".join(chunks)
    assert len(fast) > 300_000 and fast == _export(app, 2025, 4, "csv", False)
    # streamed in COPY chunks of about 256 KiB (+ CR per row), never the month at once
    assert len(chunks) >= 3 and max(len(c) for c in chunks) < 300_000
    assert fast.count(b"\r\n") == 6001 and fast.count(b"a\nb") == 7


def test_copy_json_equals_generic_over_many_chunks_fast_and_careful(app, native):
    """JSON over many COPY chunks: plain chunks (rendered whole), chunks holding a
    raw control character (rendered row by row) and the joins between them."""
    names = [(("ctl\x01" if i % 4500 == 2300 else f"n{i}"), 'x "y"', f"\\{i}")
             for i in range(9000)]
    _month(app, 2025, 4, names)
    chunks = _chunks(app, 2025, 4, "json", True)
    fast = b"".join(chunks)
    assert len(fast) > 1_000_000 and fast == _export(app, 2025, 4, "json", False)
    # COPY text rendered in chunks of about 64 KiB (json_format.RENDER_CHUNK_BYTES:
    # the render's passes stay in the CPU's cache), about 3 times that as JSON
    assert len(chunks) >= 10 and max(len(c) for c in chunks) < 300_000
    # each chunk starts with what comes before its first row ("[" or ",")
    assert chunks[0].startswith(b'[\n{"id":') and chunks[-1] == b"\n]"
    assert all(c.startswith(b',\n{"id":') and c.endswith(b'"}') for c in chunks[1:-1])
    parsed = json.loads(fast)
    assert [g["first_name"] for g in parsed] == [first for first, _, _ in names]
    assert parsed[9]["document_number"] == "\\9"


def _direct(fast, write, sql: str, params, fields, database_url: str,
            statements: list[str] | None = None) -> tuple[bytes, bytes]:
    """A format's fast path and its generic writer over any SELECT (not only the
    export's NOT NULL columns), each in its own transaction; the fast path's COPY
    statements are added to ``statements`` when it is given."""

    class Spy(psycopg2.extensions.cursor):
        def copy_expert(self, sql, file, *args):
            if statements is not None:
                statements.append(sql)
            return super().copy_expert(sql, file, *args)

    conn = psycopg2.connect(database_url.replace("+psycopg2", ""), cursor_factory=Spy)
    try:
        copied = b"".join(fast(conn, sql, params, fields, 3))
        conn.rollback()
        with conn.cursor() as cur:
            cur.execute(sql, params)
            generic = b"".join(write(iter(cur.fetchall()), fields))
        return copied, generic
    finally:
        conn.close()


NULLS_SQL = """SELECT * FROM (VALUES
    (1, %(a)s, NULL::text, true, NULL::int), (2, NULL, '', false, 7),
    (3, %(b)s, %(c)s, NULL::boolean, NULL), (4, '\\N', 'x', true, 1),
    (5, NULL, '"\\N"', false, NULL)) AS v(id, a, b, ok, n) ORDER BY id"""


@pytest.mark.parametrize("fast,write", [(pg_csv, write_csv), (pg_json, write_json)])
def test_nulls_and_the_null_marker(database_url, fast, write, native):
    """NULLs (which the export's columns never hold) next to empty strings and
    values that look like COPY's NULL marker."""
    params = {"a": "\\N", "b": 'q,"\\N"\n', "c": "\\N\\N"}
    copied, generic = _direct(fast, write, NULLS_SQL, params, ["id", "a", "b", "ok", "n"],
                              database_url)
    assert copied == generic
    assert b"1,\\N,,true,\r\n" in copied or write is write_json


@pytest.mark.parametrize("sql", [
    "SELECT x::float8 AS f, 'a' AS s FROM (VALUES (1.0), (0.1), (1e300)) AS v(x)",
    "SELECT DATE '2025-06-01' + x AS d, x FROM generate_series(0, 2) AS x",
    "SELECT '' AS only_one",
])
def test_csv_columns_copy_cannot_render_take_the_writer(database_url, sql):
    """Floats (COPY writes 1.0 as ``1``), other types and a single column (an
    empty value is ``""`` there) go through csv.writer: still the same bytes."""
    fields = ["f", "s"] if "float8" in sql else ["d", "x"] if "DATE" in sql else ["only_one"]
    copied, generic = _direct(pg_csv, write_csv, sql, {}, fields, database_url)
    assert copied == generic and copied.startswith(",".join(fields).encode())


BOOLS_SQL = """SELECT * FROM (VALUES
    (%(a)s, true, false, NULL::boolean, %(b)s, true, %(c)s, false),
    (%(c)s, false, false, true, %(a)s, NULL, %(b)s, true),
    (%(b)s, true, true, true, '\\N', false, %(a)s, NULL),
    (NULL, NULL, false, false, %(c)s, true, '"t"', false)
    ) AS v(a, b1, b2, b3, s, b4, t, b5)"""
BOOLS_PARAMS = {"a": ',"t",', "b": 't","f', "c": '"f"'}
BOOLS_FIELDS = ["a", "b1", "b2", "b3", "s", "b4", "t", "b5"]


def test_booleans_between_columns_are_forced_quoted_and_replaced(database_url, native):
    """Booleans side by side, first, last and NULL, next to text that looks like
    COPY's forced-quoted ``"t"``: the same bytes as csv.writer; the COPY statement
    force-quotes every boolean between two other columns (no ``CASE`` for them:
    it made the process writing the COPY project every row again) and keeps a
    ``CASE`` only where a boolean touches the row's end or another such boolean."""
    statements: list[str] = []
    copied, generic = _direct(pg_csv, write_csv, BOOLS_SQL, BOOLS_PARAMS, BOOLS_FIELDS,
                              database_url, statements)
    assert copied == generic
    assert copied.split(b"\r\n")[1] == b'",""t"",",true,false,,"t"",""f",true,"""f""",false'
    assert statements[0].endswith("""WITH (FORMAT csv, NULL '\\N', FORCE_QUOTE ("b1", "b3", "b4"))""")
    assert statements[0].count("CASE") == 2  # b2 (after b1) and b5 (last)


BOOLS_PLAIN_SQL = """SELECT * FROM (VALUES
    (%(a)s, true, false, true, %(b)s, true, %(c)s, false),
    (%(c)s, false, false, true, %(a)s, false, %(b)s, true)
    ) AS v(a, b1, b2, b3, s, b4, t, b5)"""


@pytest.mark.parametrize("sql", [BOOLS_PLAIN_SQL, BOOLS_SQL], ids=["whole-chunk", "careful"])
def test_json_maps_booleans_between_columns_itself(database_url, sql, native):
    """The same kind of rows through the JSON fast path: booleans between two
    columns come as COPY's t/f (no ``CASE``) and are mapped in Python, on the
    whole-chunk path and on the careful one (rows holding NULL or ``\\N``); the
    last column keeps its ``CASE``, its value being joined to the text between
    rows."""
    statements: list[str] = []
    copied, generic = _direct(pg_json, write_json, sql, BOOLS_PARAMS, BOOLS_FIELDS,
                              database_url, statements)
    assert copied == generic
    assert json.loads(copied)[1] == {
        "a": '"f"', "b1": False, "b2": False, "b3": True, "s": ',"t",',
        "b4": None if sql is BOOLS_SQL else False, "t": 't","f', "b5": True}
    assert statements[0].count("CASE") == 1 and 'END AS "b5"' in statements[0]


def test_count_does_not_join_on_postgresql(app):
    """``X-Export-Rows`` comes from the guests alone (NOT NULL foreign keys make it
    equal to the joined rows): the joined count cost a tenth of a large export."""
    _month(app, 2025, 5, [("a", "b", "1"), ("c", "d", "2")])
    statements: list[str] = []

    def seen(conn, cursor, statement, *args):
        if "count(" in statement.lower():
            statements.append(statement)

    with app.app_context():
        event.listen(db.engine, "before_cursor_execute", seen)
        try:
            req = parse_request({"year": ["2025"], "month": ["5"], "format": ["csv"]},
                                app.extensions["export_formats"])
            stream = open_export(db.engine, req, db_engine=db_engine_of(app), actor="t",
                                 via="cli")
            body = b"".join(stream.chunks)
        finally:
            event.remove(db.engine, "before_cursor_execute", seen)
    assert stream.rows == 2 == body.count(b"\r\n") - 1
    assert len(statements) == 1 and "join" not in statements[0].lower()


def test_copy_queries_have_no_per_value_expressions(database_url):
    """The COPY statement selects the columns as they are (booleans become ``true``/``false`` by a ``CASE``)
    and sets ``\\N`` as the NULL marker, so the server does what a plain
    ``COPY (SELECT ...) TO STDOUT WITH (FORMAT csv)`` does."""
    statements: list[str] = []
    sql = "SELECT 1 AS id, 'x'::varchar AS name, true AS ok"
    copied, _ = _direct(pg_csv, write_csv, sql, {}, ["id", "name", "ok"], database_url,
                        statements)
    assert copied == b"id,name,ok\r\n1,x,true\r\n"
    assert len(statements) == 1 and "NULLIF" not in statements[0]
    assert statements[0].endswith("WITH (FORMAT csv, NULL '\\N')")
    assert ('r."id", r."name", '
            'CASE WHEN r."ok" THEN \'true\' WHEN NOT r."ok" THEN \'false\' END AS "ok"'
            ) in statements[0]


@pytest.mark.parametrize("fast,write", [(pg_csv, write_csv), (pg_json, write_json)],
                         ids=["csv", "json"])
def test_random_rows_of_text_and_booleans_give_the_writers_bytes(database_url, fast, write,
                                                                 native):
    """Random rows (fixed seed) of short texts made of the bytes that matter to
    the fast paths (comma, quote, t, f, CR, LF, tab, backslash, N) around
    booleans, NULLs among both, chunked small: the same bytes as the writers."""
    import random

    rng = random.Random(26)
    alphabet = [",", '"', "t", "f", "\n", "\r", "\t", "\\", "N", " ", "é"]
    columns = ["a", "b1", "b2", "s", "b3", "z"]
    rows, params = [], []
    for _ in range(400):
        values = []
        for name in columns:
            if name.startswith("b"):
                params.append(rng.choice([True, False, True, False, None]))
                values.append("%s::boolean")
            else:
                params.append(None if rng.random() < 0.05 else
                              "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6))))
                values.append("%s::text")
        rows.append("(" + ", ".join(values) + ")")
    sql = f"SELECT * FROM (VALUES {', '.join(rows)}) AS v({', '.join(columns)})"
    copied, generic = _direct(fast, write, sql, tuple(params), columns, database_url)
    assert copied == generic
