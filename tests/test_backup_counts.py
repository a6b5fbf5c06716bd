"""The manifest's row counts: from the dump's own snapshot, taken beside the dump
on PostgreSQL (a second connection importing the snapshot), on the dump's
connection when that cannot be done."""

from __future__ import annotations

import json
import logging
import threading
import time
import zipfile

import pytest
import sqlalchemy as sa

import guest_backup.ops.row_counts as row_counts
from guest_backup.archive.format import DATABASE_MEMBER
from guest_backup.engines.postgresql import PostgresEngine
from guest_backup.errors import BackupError
from tests.helpers import make_backup, waiting_exclusive


@pytest.fixture
def backend() -> str:
    return "postgresql"


def guests_in_dump(archive) -> int:
    """The rows of the guest table's COPY block in the archive's dump."""
    lines = zipfile.ZipFile(archive).read(DATABASE_MEMBER).split(b"\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(b"COPY public.guest "))
    return lines.index(b"\\.", start) - start - 1


def guests_now(app) -> int:
    engine = sa.create_engine(app.config["DATABASE_URL"])
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT count(*) FROM guest")).scalar_one()
    finally:
        engine.dispose()


def add_guest_after_the_snapshot(app) -> None:
    """A committed guest the backup's snapshot must not see."""
    engine = sa.create_engine(app.config["DATABASE_URL"])
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO guest (registration_id, first_name, last_name, age_category, "
                "document_type, document_number, gdpr_consent) SELECT min(id), 'Late', "
                "'Comer', 'adult', 'passport', 'LATE1', true FROM registration"))
    finally:
        engine.dispose()


def backup_with_a_late_guest(app, runner, monkeypatch, caplog):
    """A backup whose dump adds a guest after the snapshot: its archive and manifest."""
    real_dump = PostgresEngine.dump

    def dump(self, settings, conn, write):
        add_guest_after_the_snapshot(app)
        return real_dump(self, settings, conn, write)

    monkeypatch.setattr(PostgresEngine, "dump", dump)
    with caplog.at_level(logging.WARNING, logger="guest_backup.ops.row_counts"):
        archive = make_backup(runner)
    return archive, json.loads(zipfile.ZipFile(archive).read("manifest.json"))


def test_the_counts_run_beside_the_dump_in_its_snapshot(app, runner, monkeypatch):
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    events: list[tuple[str, str]] = []
    real_count, real_dump = row_counts._count, PostgresEngine.dump

    def slow_count(conn, tables):
        events.append(("counting", threading.current_thread().name))
        time.sleep(0.5)  # longer than the dump: a dump waiting for the counts comes after
        counts = real_count(conn, tables)
        events.append(("counted", threading.current_thread().name))
        return counts

    def dump(self, settings, conn, write):
        events.append(("dump", threading.current_thread().name))
        add_guest_after_the_snapshot(app)
        return real_dump(self, settings, conn, write)

    monkeypatch.setattr(row_counts, "_count", slow_count)
    monkeypatch.setattr(PostgresEngine, "dump", dump)
    archive = make_backup(runner)
    kinds = [kind for kind, _ in events]
    assert kinds.index("dump") < kinds.index("counted"), events  # beside, not before
    assert events[kinds.index("counting")][1].startswith("row-counts"), events
    assert events[kinds.index("dump")][1] == threading.current_thread().name
    manifest = json.loads(zipfile.ZipFile(archive).read("manifest.json"))
    in_dump = guests_in_dump(archive)
    # the counts and the dump: one snapshot, without the guest added meanwhile
    assert manifest["row_counts"]["guest"] == in_dump == guests_now(app) - 1 > 50


def test_the_counts_fall_back_to_the_dumps_connection(app, runner, monkeypatch, caplog):
    """No second connection (a pool of one, say): counted on the dump's own
    connection before the dump, still in its snapshot."""
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    real_share = PostgresEngine.share_snapshot

    def share_snapshot(self, conn):
        real_share(self, conn)

        def join(other, tables):
            raise sa.exc.TimeoutError("QueuePool limit of size 1 overflow 0 reached")
        return join

    monkeypatch.setattr(PostgresEngine, "share_snapshot", share_snapshot)
    archive, manifest = backup_with_a_late_guest(app, runner, monkeypatch, caplog)
    assert manifest["row_counts"]["guest"] == guests_in_dump(archive) == guests_now(app) - 1
    assert "row counts beside the dump failed (TimeoutError); counted before it" in caplog.text


def test_counts_that_fail_beside_the_dump_are_taken_after_it(app, runner, monkeypatch,
                                                              caplog):
    """The second connection joined, then counting on it failed (the connection
    lost, say): counted on the dump's own connection after the dump, in its snapshot."""
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    real_count = row_counts._count

    def count(conn, tables):
        if threading.current_thread().name.startswith("row-counts"):
            raise sa.exc.OperationalError("SELECT count(*)", {}, Exception("connection lost"))
        return real_count(conn, tables)

    monkeypatch.setattr(row_counts, "_count", count)
    archive, manifest = backup_with_a_late_guest(app, runner, monkeypatch, caplog)
    assert manifest["row_counts"]["guest"] == guests_in_dump(archive) == guests_now(app) - 1
    assert "row counts beside the dump failed (OperationalError); counted after it" in caplog.text


def test_a_snapshot_id_is_checked_before_it_goes_into_sql(app, monkeypatch):
    """``SET TRANSACTION SNAPSHOT`` takes no parameter: the id is a literal, so
    anything but pg_export_snapshot()'s shape is refused."""
    from guest_backup.errors import EngineError

    class Conn:
        def __init__(self, answer):
            self.answer = answer

        def exec_driver_sql(self, statement):
            return type("R", (), {"scalar_one": lambda _: self.answer})()

    assert callable(PostgresEngine().share_snapshot(Conn("00000003-0000001B-1")))
    for bad in ("x'; DROP TABLE guest; --", "", "00000003-0000001B-1'"):
        with pytest.raises(EngineError, match="unexpected snapshot id"):
            PostgresEngine().share_snapshot(Conn(bad))


def test_a_failed_dump_waits_for_the_counts(app, runner, monkeypatch):
    """A dump failing while the counts still run beside it: the command ends only
    once the counting connection is given back (before, it went on counting in its
    transaction after the command had returned: a CI run caught it at teardown)."""
    from tests.helpers import terminate_open_transactions

    assert runner.invoke(args=["demo-data"]).exit_code == 0
    real_count = row_counts._count

    def slow_count(conn, tables):
        time.sleep(0.5)
        return real_count(conn, tables)

    def dump(self, settings, conn, write):
        raise BackupError("pg_dump not found")

    monkeypatch.setattr(row_counts, "_count", slow_count)
    monkeypatch.setattr(PostgresEngine, "dump", dump)
    result = runner.invoke(args=["backup"])
    assert result.exit_code == 1 and "pg_dump not found" in result.output
    assert not [t for t in threading.enumerate() if t.name.startswith("row-counts")]
    engine = sa.create_engine(app.config["DATABASE_URL"])
    try:
        assert terminate_open_transactions(engine) == []
    finally:
        engine.dispose()


def test_a_table_rewritten_during_the_dump_is_counted_as_the_dump_has_it(app, runner,
                                                                          monkeypatch):
    """A migration rewriting a table (``ALTER TABLE … TYPE``: not MVCC-safe) while
    the dump runs commits as soon as pg_dump's lock is gone; counts that had not
    taken their lock by then read the rewritten table in the old snapshot and saw
    it empty (``guest: 0`` in the manifest beside a dump of every guest, and a
    drill of that archive failing). The counting connection now takes its locks
    before the dump starts, as pg_dump does, so the rewrite waits for both."""
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    url = app.config["DATABASE_URL"]
    queued = threading.Event()
    real_count, real_dump = row_counts._count, PostgresEngine.dump
    errors: list[BaseException] = []

    def rewrite():
        engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("ALTER TABLE guest ALTER COLUMN age_category TYPE "
                                     "varchar(15)"))  # a shorter type: a rewrite
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            engine.dispose()

    def late_count(conn, tables):
        assert queued.wait(30)  # the rewrite is waiting before anything is counted
        return real_count(conn, tables)

    def dump(self, settings, conn, write):
        started = []

        def first_write(data):
            if not started:  # pg_dump has started (and may have ended: a small database)
                started.append(threading.Thread(target=rewrite))
                started[0].start()
                deadline = time.monotonic() + 30
                while started[0].is_alive() and not waiting_exclusive(url):  # done, or waiting
                    assert time.monotonic() < deadline, "the rewrite neither ran nor waited"
                    time.sleep(0.05)
                queued.set()
            write(data)
        try:
            return real_dump(self, settings, conn, first_write)
        finally:
            queued.set()

    monkeypatch.setattr(row_counts, "_count", late_count)
    monkeypatch.setattr(PostgresEngine, "dump", dump)
    archive = make_backup(runner)
    deadline = time.monotonic() + 30
    while waiting_exclusive(url) and time.monotonic() < deadline:
        time.sleep(0.05)
    manifest = json.loads(zipfile.ZipFile(archive).read("manifest.json"))
    assert manifest["row_counts"]["guest"] == guests_in_dump(archive) == guests_now(app) > 50
    assert errors == []
