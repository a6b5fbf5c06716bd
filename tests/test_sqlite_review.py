"""SQLite restores found wrong by a review: a relative DATABASE_URL restored into a
copy in the operator's working folder (the app's database kept its data); an
audit entry that finished while the dump loaded came back as ``running``; a
commit between the copy aside and the swap was lost (and the restore's own audit
entry took its id); a full disk was blamed on the archive ("the SQL dump has an
error")."""

from __future__ import annotations

import contextlib
import io
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from guest_backup.engines import EngineSettings
from guest_backup.engines import sqlite as engine
from guest_backup.engines import sqlite_swap as swap
from guest_backup.errors import EngineError
from guest_registration import audit
from guest_registration.extensions import db
from tests.helpers import make_backup


@pytest.fixture
def backend() -> str:
    return "sqlite"


def entries(app) -> list[tuple]:
    with app.app_context(), db.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(
            "SELECT id, action, outcome, target FROM audit_log ORDER BY id"))]


def restore_replace(runner, archive: Path, *args: str):
    return runner.invoke(args=["restore", str(archive), "--replace", "--yes", *args])


# ------------------------------------------------------------ a relative DATABASE_URL

def test_a_relative_database_url_is_restored_into_the_apps_own_database(
        app_config, request, tmp_path, monkeypatch):
    """DATABASE_URL=sqlite:///app.db is the instance folder's app.db for the app
    (Flask-SQLAlchemy), so it is the restore's target too, wherever it is run from."""
    app_config["DATABASE_URL"] = "sqlite:///app.db"
    app = request.getfixturevalue("app")
    runner = app.test_cli_runner()
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    archive = make_backup(runner)
    own = Path(app.instance_path) / "app.db"
    with contextlib.closing(sqlite3.connect(own)) as con:
        con.execute("UPDATE guest SET first_name = 'LIVE'")
        con.commit()
    elsewhere = tmp_path / "operator"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = restore_replace(runner, archive)
    assert result.exit_code == 0, result.output
    assert f"into sqlite:///{own} and" in result.output
    with contextlib.closing(sqlite3.connect(own)) as con:
        assert con.execute("SELECT count(*) FROM guest WHERE first_name = 'LIVE'"
                           ).fetchone() == (0,)
        assert con.execute("SELECT count(*) FROM guest").fetchone()[0] > 0
    assert sorted(p.name for p in elsewhere.iterdir()) == []  # no copy, no lock here


def test_a_relative_database_url_given_to_restore_is_the_working_folders(
        app, runner, tmp_path, monkeypatch):
    archive = make_backup(runner)
    elsewhere = tmp_path / "operator"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = restore_replace(runner, archive, "--database-url", "sqlite:///copy.db")
    assert result.exit_code == 0, result.output
    assert f"into sqlite:///{elsewhere / 'copy.db'} and" in result.output
    assert (elsewhere / "copy.db").is_file()


# ------------------------------------------------------------ the audit trail at the swap

def test_an_entry_finished_while_the_dump_loads_keeps_its_outcome(app, runner, monkeypatch):
    from guest_backup.ops import finishing

    archive = make_backup(runner)
    with app.app_context():  # an export that began before the restore...
        running = audit.start(db.engine, "export", actor="clerk", via="api")
    real = finishing.AuditCarry.set_aside.__func__

    def set_aside(cls, *args, **kwargs):
        carry = real(cls, *args, **kwargs)
        with app.app_context():  # ...and ends while the dump loads
            audit.finish(db.engine, running, "ok", target="export-2026-01.zip")
        return carry

    monkeypatch.setattr(finishing.AuditCarry, "set_aside", classmethod(set_aside))
    result = restore_replace(runner, archive)
    assert result.exit_code == 0, result.output
    assert [r for r in entries(app) if r[0] == running] == [
        (running, "export", "ok", "export-2026-01.zip")]


def test_an_entry_committed_at_the_copy_aside_waits_for_the_swap(app, runner, monkeypatch):
    """A backup starting right after the target was copied aside: its entry waits
    for the swap's lock and lands after it, with an id of its own."""
    archive = make_backup(runner)
    real, started = swap._copy_aside, []

    def start_backup() -> None:
        with app.app_context():
            started.append(audit.start(db.engine, "backup", actor="timer", via="cli"))

    def copy_aside(source, keep):
        real(source, keep)
        writer = threading.Thread(target=start_backup)
        writer.start()
        writer.join(2.0)  # unlocked, it commits here; locked, it waits for the swap
        threads.append(writer)

    threads: list[threading.Thread] = []
    monkeypatch.setattr(swap, "_copy_aside", copy_aside)
    result = restore_replace(runner, archive)
    assert result.exit_code == 0, result.output
    (writer,) = threads
    writer.join(30)
    (backup_id,) = started
    with app.app_context():  # the backup ends
        audit.finish(db.engine, backup_id, "ok", target="system_backup_x.zip")
    after = entries(app)
    assert (backup_id, "backup", "ok", "system_backup_x.zip") in after
    assert [r for r in after if r[1] == "restore"][-1][2] == "ok"


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_a_write_at_the_copy_aside_is_not_overwritten_by_the_swap(tmp_path, monkeypatch,
                                                                  journal):
    """With WAL (the app's) and without: a row committed by another connection
    once the target is copied aside waits for the swap, then is kept."""
    target = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(target, isolation_level=None)) as con:
        con.execute(f"PRAGMA journal_mode={journal}")
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        con.executemany("INSERT INTO t (v) VALUES (?)", [(f"old {i}",) for i in range(3)])
    real, threads = swap._copy_aside, []

    def write() -> None:
        with contextlib.closing(sqlite3.connect(target, timeout=30)) as con:
            con.execute("INSERT INTO t (v) VALUES ('written at the copy aside')")
            con.commit()

    def copy_aside(source, keep):
        real(source, keep)
        threads.append(threading.Thread(target=write))
        threads[0].start()
        threads[0].join(2.0)

    monkeypatch.setattr(swap, "_copy_aside", copy_aside)
    source = sqlite3.connect(tmp_path / "source.db")
    source.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    source.executemany("INSERT INTO t (v) VALUES (?)", [(f"new {i}",) for i in range(50)])
    source.commit()
    dump = io.BytesIO("\n".join(source.iterdump()).encode())
    source.close()
    url = f"sqlite:///{target}"
    engine.SQLiteEngine().restore(EngineSettings(url), url, dump, replace=True)
    threads[0].join(30)
    with contextlib.closing(sqlite3.connect(target)) as con:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = [v for (v,) in con.execute("SELECT v FROM t ORDER BY id")]
    assert rows == [f"new {i}" for i in range(50)] + ["written at the copy aside"]


# ------------------------------------------------------------ a full disk

FULL_DISK = r"""
import io, resource, signal, sqlite3, sys
from guest_backup.engines import EngineSettings
from guest_backup.engines import sqlite as engine
from guest_backup.errors import EngineError

target, source = sys.argv[1], sys.argv[2]
con = sqlite3.connect(source)
con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
con.executemany("INSERT INTO t (v) VALUES (?)", [("x" * 500,) for _ in range(4000)])
con.commit()
dump = io.BytesIO("\n".join(con.iterdump()).encode())
con.close()
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG)
resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, 400_000))
url = f"sqlite:///{target}"
try:
    engine.SQLiteEngine().restore(EngineSettings(url), url, dump, replace=True)
    print("RESTORED")
except EngineError as exc:
    print("REFUSED", exc)
"""


def test_a_full_disk_is_not_blamed_on_the_dump(tmp_path):
    target = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(target)) as con:
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        con.execute("INSERT INTO t (v) VALUES ('live')")
        con.commit()
    proc = subprocess.run([sys.executable, "-c", FULL_DISK, str(target), str(tmp_path / "s.db")],
                          capture_output=True, text=True, timeout=120)
    lines = proc.stdout.strip().splitlines()
    assert lines and lines[-1].startswith("REFUSED there is no room to load the copy in "
                                          f"{tmp_path} ("), proc.stdout + proc.stderr
    assert lines[-1].endswith("; nothing was restored") and "dump" not in lines[-1]
    with contextlib.closing(sqlite3.connect(target)) as con:
        assert con.execute("SELECT v FROM t").fetchall() == [("live",)]


def test_a_genuine_error_in_the_dump_is_still_the_dumps(tmp_path):
    target = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(tmp_path / "s.db")) as con:
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        con.execute("INSERT INTO t VALUES (1)")
        con.commit()
        lines = list(con.iterdump())
    insert = next(line for line in lines if line.startswith("INSERT"))
    lines.insert(lines.index(insert), insert)  # the same id twice: a constraint fails
    dump = io.BytesIO("\n".join(lines).encode())
    url = f"sqlite:///{target}"
    with pytest.raises(EngineError, match="^the SQL dump has an error; nothing was restored$"):
        engine.SQLiteEngine().restore(EngineSettings(url), url, dump, replace=True)
