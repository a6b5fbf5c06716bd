"""An SQLite archive must not plant stored code: a trigger written straight into
``sqlite_master`` (``PRAGMA writable_schema=ON``) would run as the app on every
later write; the one below copies an erased guest's name aside before erasure
overwrites it. Found by the review of 2026-12-05 with a trusted (stolen) key:
verify and restore accepted it, and ``erase`` reported success while the name
survived in a hidden table. Refused now by the screen, by the authorizer (no
``writable_schema``), and after the load (no schema object but tables, indexes
and views)."""

from __future__ import annotations

import io
import sqlite3
import time

import pytest

import guest_backup.engines.sqlitescreen as sqlitescreen
from guest_backup.engines import DumpRefused, EngineSettings
from guest_backup.engines.sqlite import SQLiteEngine
from guest_backup.engines.sqlitescreen import SQLiteDumpScreen, _authorizer
from tests.test_archive_trust import after_first_line, archive, forge, restore  # noqa: F401

TRIGGER = ("CREATE TRIGGER keep BEFORE UPDATE OF first_name ON guest BEGIN "
           "INSERT INTO stash SELECT old.id, old.first_name; END")
PLANT = ("CREATE TABLE stash (id INTEGER, first_name TEXT);\n"
         "PRAGMA writable_schema=ON;\n"
         f"INSERT INTO sqlite_master VALUES('trigger','keep','guest',0,'{TRIGGER}');\n"
         "PRAGMA writable_schema=OFF;\n")


@pytest.fixture
def backend() -> str:
    return "sqlite"


def test_a_resigned_archive_cannot_plant_a_trigger(app, runner, archive, tmp_path):  # noqa: F811
    bad = forge(app, archive, tmp_path / "system_backup_20250101_000000.zip", sign=True,
                dump=after_first_line(PLANT.encode()))
    verified = runner.invoke(args=["verify", str(bad)])
    assert verified.exit_code == 1 and "schema" in verified.output, verified.output
    target = tmp_path / "restored.db"
    restored = restore(runner, bad, f"sqlite:///{target}", tmp_path / "u")
    assert restored.exit_code == 1 and "Traceback" not in restored.output
    assert not target.exists()


@pytest.mark.parametrize("statement", [
    "INSERT INTO sqlite_master VALUES('trigger','t','guest',0,'x');\n",
    'INSERT INTO "sqlite_master" VALUES(\'view\',\'v\',\'v\',0,\'x\');\n',
    "insert into SQLITE_SCHEMA values('trigger','t','guest',0,'x');\n",
    "INSERT INTO sqlite_temp_master VALUES('trigger','t','guest',0,'x');\n",
    "PRAGMA writable_schema=ON;\n",
    "PRAGMA writable_schema = ON;\n",
])
def test_the_screen_refuses_writes_to_the_schema_table(statement):
    screen = SQLiteDumpScreen()
    with pytest.raises(DumpRefused):
        screen.feed(f"BEGIN TRANSACTION;\n{statement}COMMIT;\n".encode())
    # what iterdump writes for an AUTOINCREMENT table stays allowed
    SQLiteDumpScreen().feed(b'BEGIN TRANSACTION;\nDELETE FROM "sqlite_sequence";\n'
                            b'INSERT INTO "sqlite_sequence" VALUES(\'guest\',12);\nCOMMIT;\n')


def test_the_authorizer_refuses_writable_schema(tmp_path):
    con = sqlite3.connect(tmp_path / "new.db")
    con.set_authorizer(_authorizer)
    with pytest.raises(sqlite3.DatabaseError, match="not authorized|prohibited"):
        con.execute("PRAGMA writable_schema=ON")
    con.execute("PRAGMA foreign_keys=ON")


def test_a_load_that_leaves_a_trigger_is_refused(tmp_path, monkeypatch):
    """Behind the screen and the authorizer (both switched off here), the loaded
    schema itself is checked before the new file replaces anything."""
    monkeypatch.setattr(SQLiteDumpScreen, "check", lambda self, statement: setattr(
        self, "committed", statement.strip().upper().startswith("COMMIT")))
    monkeypatch.setattr(sqlitescreen, "_authorizer", lambda *args: sqlite3.SQLITE_OK)
    target = tmp_path / "app.db"
    url = f"sqlite:///{target}"
    dump = ("BEGIN TRANSACTION;\nCREATE TABLE guest (id INTEGER PRIMARY KEY, first_name TEXT);\n"
            + PLANT + "COMMIT;\n").encode()
    with pytest.raises(DumpRefused, match="leaves a trigger in the database"):
        SQLiteEngine().restore(EngineSettings(url), url, io.BytesIO(dump))
    assert not target.exists()


# ---------------------------------------------------------------- splitting a dump
# The screen and the load split a dump into statements; across lines they carried
# the whole text so far to sqlite3.complete_statement on every line: time quadratic
# in a statement's lines (160 KB over 80,000 lines: 22 s; found by the review).

@pytest.mark.parametrize("line", ["a\n", "'';\n", "x;\n"])
def test_a_statement_over_many_lines_is_screened_in_linear_time(line):
    dump = ("BEGIN TRANSACTION;\nINSERT INTO \"t\" VALUES('" + line * 80_000
            + "');\nCOMMIT;\n").encode()
    start = time.process_time()  # CPU seconds: steady on a busy machine
    screen = SQLiteDumpScreen()
    screen.feed(dump)
    screen.finish()
    assert time.process_time() - start < 2
    assert screen.committed


def test_statements_split_where_sqlite_splits_them(tmp_path):
    """Quotes, doubled quotes, identifiers in brackets and backticks, comments with
    quotes and semicolons, values holding ``;`` and line breaks: one load, the
    rows as written."""
    dump = ("BEGIN TRANSACTION;\n"
            "CREATE TABLE \"we;ird\" (a TEXT, -- it's a comment; with a quote\n"
            "  [b;c] TEXT /* a ; in a comment */, `d``e` TEXT);\n"
            "INSERT INTO \"we;ird\" VALUES('one;\n''two'';\n', 'x', 'y');\n"
            "INSERT INTO \"we;ird\" VALUES('three', ';', '\n;\n');\n"
            "COMMIT;\n")
    screen = SQLiteDumpScreen()
    screen.feed(dump.encode())
    screen.finish()
    target = tmp_path / "app.db"
    url = f"sqlite:///{target}"
    SQLiteEngine().restore(EngineSettings(url), url, io.BytesIO(dump.encode()))
    rows = sqlite3.connect(target).execute('SELECT * FROM "we;ird"').fetchall()
    assert rows == [("one;\n'two';\n", "x", "y"), ("three", ";", "\n;\n")]


def test_a_statement_longer_than_the_cap_is_refused():
    dump = ("BEGIN TRANSACTION;\nINSERT INTO \"t\" VALUES('" + ("a" * 1000 + "\n") * 5000
            + "');\nCOMMIT;\n")
    with pytest.raises(DumpRefused, match="longer than 4 MiB"):
        SQLiteDumpScreen().feed(dump.encode())


@pytest.mark.parametrize("line", [
    "CREATE TABLE t(a); CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END;\n",
    "INSERT INTO t VALUES(1); INSERT INTO sqlite_master VALUES('trigger','x','t',0,'x');\n",
    "CREATE TABLE t(a /* ; */); DROP TABLE guest;\n",
])
def test_several_statements_on_one_line_are_refused(line):
    """The screen matched the line's first statement only: verify called such a dump
    clean, and only the load (one statement per execute) refused it."""
    with pytest.raises(DumpRefused, match="several statements in one"):
        SQLiteDumpScreen().feed(f"BEGIN TRANSACTION;\n{line}COMMIT;\n".encode())


def test_semicolons_in_values_names_and_comments_are_not_statements():
    SQLiteDumpScreen().feed(
        b"BEGIN TRANSACTION;\nCREATE TABLE \"a;b\" (\"c;\" TEXT, [d;] TEXT); -- a note; here\n"
        b"INSERT INTO \"a;b\" VALUES('x;y','it''s; fine');\n"
        b"INSERT INTO \"a;b\" VALUES('multi\nline; text','');\nCOMMIT;\n")
