"""A backup and the other sessions' table locks: the snapshot's transaction holds
every table against a rewrite to its end, and a table another session keeps
locked is waited for at most BACKUP_LOCK_WAIT seconds, then the backup fails
plainly (before, it waited without limit, and behind a rewrite queued for its
own locks it waited for ever: PostgreSQL sees no deadlock through our client)."""

from __future__ import annotations

import threading
import time
import zipfile
from pathlib import Path

import pytest
import sqlalchemy as sa

import guest_backup.ops.uploads as uploads
from guest_backup.engines import TABLES_LOCKED
from guest_backup.engines.postgresql import PostgresEngine
from guest_registration.extensions import db
from guest_registration.models import AuditEntry
from tests.helpers import make_backup, terminate_open_transactions, waiting_exclusive
from tests.test_backup import no_leftovers


@pytest.fixture
def backend() -> str:
    return "postgresql"


def start_rewrite(url: str, errors: list) -> threading.Thread:
    """``ALTER TABLE guest … TYPE`` (a rewrite) in a thread; returned once it has
    finished or is waiting for a lock."""
    def rewrite():
        engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("ALTER TABLE guest ALTER COLUMN age_category TYPE "
                                     "varchar(15)"))
        except BaseException as exc:  # pragma: no cover - asserted by the caller
            errors.append(exc)
        finally:
            engine.dispose()

    thread = threading.Thread(target=rewrite)
    thread.start()
    deadline = time.monotonic() + 30
    while thread.is_alive() and not waiting_exclusive(url):
        assert time.monotonic() < deadline, "the rewrite neither ran nor waited"
        time.sleep(0.05)
    return thread


def backup_in_time(runner, seconds: float = 60):
    """``manage.py backup`` that fails the test instead of hanging it."""
    result: list = []
    thread = threading.Thread(target=lambda: result.append(runner.invoke(args=["backup"])),
                              daemon=True)
    began = time.monotonic()
    thread.start()
    thread.join(seconds)
    assert result, f"the backup was still waiting after {seconds} s"
    return result[0], time.monotonic() - began


def test_a_photo_named_only_by_a_guest_stays_out_when_guest_is_rewritten_meanwhile(
        app, runner, monkeypatch):
    """The uploads are sorted after the dump, by the guest rows of its snapshot. A
    rewrite of guest committed in between (nothing held it off once pg_dump and
    the counts had let go) emptied guest in that snapshot, and a photo named only
    by a guest row went into the archive."""
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    url = app.config["DATABASE_URL"]
    (Path(app.config["UPLOAD_FOLDER"]) / "legacy-scan.jpg").write_bytes(b"\xff\xd8photo")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE guest SET document_photo = 'legacy-scan.jpg' "
                             "WHERE id = (SELECT min(id) FROM guest)"))
    engine.dispose()
    errors: list = []
    threads: list[threading.Thread] = []
    real = uploads._photo_names_in_db

    def photo_names(conn, names):
        if not threads:
            threads.append(start_rewrite(url, errors))
        return real(conn, names)

    monkeypatch.setattr(uploads, "_photo_names_in_db", photo_names)
    archive = make_backup(runner)
    threads[0].join(30)
    assert not threads[0].is_alive() and errors == []  # it ran once the backup let go
    assert "uploads/legacy-scan.jpg" not in zipfile.ZipFile(archive).namelist()


def test_a_backup_gives_up_on_a_table_another_session_keeps(app, runner):
    """A session holding guest (a migration's open transaction): the backup waits
    BACKUP_LOCK_WAIT, then fails with a plain reason; nothing is written and the
    audit log says why."""
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    app.config["BACKUP_LOCK_WAIT"] = 1
    engine = sa.create_engine(app.config["DATABASE_URL"])
    holder = engine.connect()
    try:
        holder.execute(sa.text("LOCK TABLE guest IN ACCESS EXCLUSIVE MODE"))
        result, took = backup_in_time(runner)
    finally:
        holder.rollback()
        holder.close()
    assert result.exit_code == 1, result.output
    assert TABLES_LOCKED in result.output and "ERROR" not in result.output
    assert 0.9 < took < 20
    no_leftovers(app)
    with app.app_context():
        entry = db.session.query(AuditEntry).order_by(AuditEntry.id.desc()).first()
        assert (entry.action, entry.outcome, entry.message) == ("backup", "failed",
                                                                TABLES_LOCKED)
    assert terminate_open_transactions(engine) == []
    engine.dispose()
    app.config["BACKUP_LOCK_WAIT"] = 60
    make_backup(runner)  # and the next one works


def test_pg_dump_gives_up_behind_a_rewrite_queued_for_the_backups_locks(app, runner,
                                                                         monkeypatch):
    """A rewrite arriving after the snapshot's locks waits for them, and pg_dump's
    own lock waits behind the rewrite: a wait PostgreSQL cannot see as a deadlock
    (it goes through our process). pg_dump gives up after BACKUP_LOCK_WAIT, the
    backup fails plainly, and the rewrite then runs."""
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    app.config["BACKUP_LOCK_WAIT"] = 1
    url = app.config["DATABASE_URL"]
    errors: list = []
    threads: list[threading.Thread] = []
    real_dump = PostgresEngine.dump

    def dump(self, settings, conn, write):
        threads.append(start_rewrite(url, errors))
        assert threads[0].is_alive()  # waiting for the snapshot's locks
        return real_dump(self, settings, conn, write)

    monkeypatch.setattr(PostgresEngine, "dump", dump)
    result, took = backup_in_time(runner)
    app.config["BACKUP_LOCK_WAIT"] = 60
    assert result.exit_code == 1, result.output
    assert TABLES_LOCKED in result.output and "LOCK TABLE" not in result.output
    assert took < 20
    no_leftovers(app)
    threads[0].join(30)
    assert not threads[0].is_alive() and errors == []


def test_the_wait_reaches_pg_dump_and_zero_means_without_limit(app):
    from guest_backup.ops.settings import BackupSettings

    def settings(value):
        config = dict(app.config, BACKUP_LOCK_WAIT=value)
        return BackupSettings.from_config(config, "1").engine_settings

    assert settings(2.5).lock_wait == 2.5
    assert settings(0).lock_wait == settings(None).lock_wait == settings(-3).lock_wait == 0
    assert settings("30").lock_wait == 30


def test_a_backup_that_waited_for_a_rewrite_dumps_the_rewritten_table_whole(app, runner):
    """The locks come before the snapshot: a backup waiting for a rewrite in
    progress sees it committed. Had the snapshot been taken first, the rewritten
    table would be empty in it (its rows are the rewrite's)."""
    from tests.test_backup_counts import guests_in_dump, guests_now

    assert runner.invoke(args=["demo-data"]).exit_code == 0
    engine = sa.create_engine(app.config["DATABASE_URL"])
    holder = engine.connect()
    result: list = []
    thread = threading.Thread(target=lambda: result.append(runner.invoke(args=["backup"])))
    try:
        holder.execute(sa.text("ALTER TABLE guest ALTER COLUMN age_category TYPE varchar(15)"))
        thread.start()
        time.sleep(1.0)  # the backup is waiting for guest
        assert not result
    finally:
        holder.commit()
        holder.close()
        engine.dispose()
    thread.join(60)
    assert result and result[0].exit_code == 0, result and result[0].output
    archive = Path(result[0].output.strip().splitlines()[-1])
    assert guests_in_dump(archive) == guests_now(app) > 50
