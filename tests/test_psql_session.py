"""Statements on a psql inside its open transaction (engines/psqlsession.py), on a
real psql and PostgreSQL: rows come back with their types and every character a
value may hold, a row cannot end a result early, an UPDATE reports its row
count, and psql stopping at an error is PsqlEnded with nothing committed."""

from __future__ import annotations

import os
import subprocess
from datetime import datetime

import pytest
import sqlalchemy as sa

from guest_backup.engines.libpq import pg_environment
from guest_backup.engines.psqlsession import PsqlEnded, PsqlOutput, PsqlSession

T = sa.table("t", sa.column("id", sa.Integer), sa.column("name", sa.String),
             sa.column("at", sa.DateTime), sa.column("ok", sa.Boolean))


@pytest.fixture
def psql(new_pg_database):
    url = new_pg_database()
    proc = subprocess.Popen(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=pg_environment(url))
    output = PsqlOutput(proc.stdout, lambda line: line.startswith(b"kept"))
    proc.stdin.write(b"BEGIN;\nCREATE TABLE t (id int, name text, at timestamp, ok boolean);\n"
                     b"SELECT 1 AS dropped;\n\\echo kept\n"
                     b"SET DateStyle = 'German';\n")  # a server whose default is not ISO
    yield proc, output, url
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    output.printed()


def rows_of(url: str) -> list:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("t"):
                return []
            return conn.execute(sa.select(T)).all()
    finally:
        engine.dispose()


def test_rows_come_back_typed_with_any_character_and_updates_count(psql):
    proc, output, url = psql
    session = PsqlSession.open(proc.stdin, output)
    nasty = "tab\there\nnew line \\N back\\slash 50% ž \r\x0b end"
    insert = sa.insert(T).values([
        {"id": 1, "name": nasty, "at": datetime(2026, 12, 5, 17, 38, 45, 123456), "ok": True},
        {"id": 2, "name": None, "at": None, "ok": False}])
    assert session.execute(insert).rowcount == 2
    rows = session.execute(sa.select(T).order_by(T.c.id)).all()
    assert rows == [(1, nasty, datetime(2026, 12, 5, 17, 38, 45, 123456), True),
                    (2, None, None, False)]
    assert rows[0].name == nasty and rows[1].ok is False
    assert list(session.execute(sa.select(T.c.id).order_by(T.c.id)).scalars()) == [1, 2]
    assert session.execute(sa.update(T).where(T.c.id > 5).values(ok=True)).rowcount == 0
    assert session.execute(sa.select(T.c.id).where(T.c.id == 7)).scalar_one_or_none() is None
    proc.stdin.write(b"COMMIT;\n")
    proc.stdin.close()
    assert proc.wait() == 0 and output.printed() == b"kept\n"  # the SELECT's table dropped
    assert len(rows_of(url)) == 2


def test_a_value_that_looks_like_the_end_of_a_result_is_only_a_value(psql):
    """A value holding a line that looks like a result's end (here even with the
    session's nonce, which an archive cannot know) is escaped by COPY onto its own
    row's line and cannot end the result early."""
    proc, output, _ = psql
    session = PsqlSession.open(proc.stdin, output)
    fake = f"\n{session._nonce} 0\n"
    session.execute(sa.insert(T).values([{"id": 1, "name": fake}, {"id": 2, "name": "two"}]))
    assert list(session.execute(sa.select(T.c.name).order_by(T.c.id)).scalars()) == \
        [fake, "two"]


def test_psql_stopping_at_an_error_is_psql_ended_and_nothing_commits(psql):
    proc, output, url = psql
    session = PsqlSession.open(proc.stdin, output)
    session.execute(sa.insert(T).values(id=1, name="kept?"))
    with pytest.raises(PsqlEnded):
        session.execute("SELECT 1 / 0")
    with pytest.raises(PsqlEnded):  # and every statement after it
        session.execute(sa.select(T))
    assert proc.wait() == 3 and b"division by zero" in proc.stderr.read()
    assert rows_of(url) == []


def test_what_psql_printed_after_the_session_is_whole_lines_only():
    """What the restore reads its COMMIT's marker from: the lines kept before the
    session and the whole lines nobody read after it, never the line psql was cut
    off in (a row's value that happens to read ``gr-restore-committed``)."""
    read, write = os.pipe()
    output = PsqlOutput(os.fdopen(read, "rb"), lambda line: line.startswith(b"gr-"))
    output.expect(b"START")
    os.write(write, b"gr-restore-xid 5\nnoise\nSTART\nread\nunread\tx\ngr-restore-committed")
    assert output.line() == b"read"
    os.close(write)
    assert output.printed() == b"gr-restore-xid 5\nunread\tx\n"
