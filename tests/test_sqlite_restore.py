"""SQLite ``restore --replace`` on the embedded default: the restored database
opens clean (``PRAGMA integrity_check`` is ``ok``, every table holds the
archive's rows) although the old database is in WAL mode with a ``-wal`` and
``-shm`` beside it and other connections, even a running server, hold it open."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Iterator

import pytest

from guest_backup.engines import EngineSettings
from guest_backup.engines import sqlite as engine
from guest_backup.engines import sqlite_swap as swap
from guest_backup.errors import EngineError
from guest_registration import create_app
from guest_registration.extensions import db
from tests.helpers import ADMIN, make_config
from tests.live_server import APP_ENV, ROOT, live_server, run_manage

BEFORE_BACKUP = "Renamed before the backup"
AFTER_BACKUP = "Renamed after the backup"
#: the upcoming trip GET / lists last (demo data: the one ending latest)
UPCOMING_TRIP = "(SELECT id FROM trip ORDER BY end_date DESC, id DESC LIMIT 1)"

READER = r"""
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], timeout=10, isolation_level=None)
con.execute("SELECT count(*) FROM trip").fetchone()
print("ready", flush=True)
reads = errors = 0
while sys.stdin.readline().strip() != "stop":
    try:
        con.execute("BEGIN")
        con.execute("SELECT count(*) FROM guest").fetchone()
        title = con.execute("SELECT title FROM trip ORDER BY end_date DESC, id DESC").fetchone()
        con.execute("COMMIT")
        print("title", title[0], flush=True)
        reads += 1
    except sqlite3.Error as exc:
        errors += 1
        print("ERROR", exc, flush=True)
        if con.in_transaction:
            con.execute("ROLLBACK")
    print("read", flush=True)
print("done", reads, errors, flush=True)
"""


# --------------------------------------------------------------------------- helpers

def site_env(workdir: Path) -> dict[str, str]:
    """The app's environment for ``manage.py`` on ``workdir/app.db`` (as live_server sets it)."""
    env = {k: v for k, v in os.environ.items() if k not in APP_ENV}
    env.update({"DATABASE_URL": f"sqlite:///{workdir / 'app.db'}",
                "INSTANCE_PATH": str(workdir / "instance"),
                "SECRET_KEY": "sqlite-restore-secret", "SECURITY_PASSWORD_SALT": "sqlite-salt",
                "UPLOAD_FOLDER": str(workdir / "uploads"),
                "BACKUP_FOLDER": str(workdir / "backups"), "FLASK_DEBUG": "0"})
    return env


def manage(env: dict[str, str], workdir: Path, *args: str) -> str:
    """``manage.py ARGS``; fails the test (with the output) on a non-zero exit."""
    return run_manage(list(args), env, workdir / "manage.log",
                      echo=[a if "password" not in a else "***" for a in args])


def set_title(database: Path, title: str, session: sqlite3.Connection | None = None) -> None:
    """One UPDATE through Python's sqlite3 on the WAL database (``session``, if
    given, stays open afterwards), after a checkpoint: the ``-wal`` then holds
    only the pages this UPDATE (and what follows) changed."""
    con = session or sqlite3.connect(database)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.execute(f"UPDATE trip SET title = ? WHERE id = {UPCOMING_TRIP}", (title,))
        con.commit()
    finally:
        if session is None:
            con.close()


def backup(env: dict[str, str], workdir: Path) -> Path:
    archive = Path(manage(env, workdir, "backup").strip().splitlines()[-1])
    assert archive.is_file()
    return archive


def manifest_counts(archive: Path) -> dict[str, int]:
    with zipfile.ZipFile(archive) as zf:
        return json.loads(zf.read("manifest.json"))["row_counts"]


def assert_sound(database: Path, expected: dict[str, int]) -> None:
    """A new connection finds the database intact, the archive's rows in every
    table (``audit_log``: plus the backup's own entry, written while its snapshot
    ran and carried across the restore, and the restore's own entry) and the
    archive's title."""
    con = sqlite3.connect(database)
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        counts = {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in expected}
        last = con.execute("SELECT action, outcome FROM audit_log ORDER BY id DESC").fetchone()
        title = con.execute(f"SELECT title FROM trip WHERE id = {UPCOMING_TRIP}").fetchone()[0]
    finally:
        con.close()
    assert counts == {**expected, "audit_log": expected["audit_log"] + 2}
    assert last == ("restore", "ok")
    assert title == BEFORE_BACKUP


def assert_app_serves(workdir: Path) -> None:
    """The app, created on the restored database, answers ``GET /`` with the archive's title."""
    config = make_config(workdir, f"sqlite:///{workdir / 'app.db'}", TESTING=False)
    app = create_app(config, instance_path=str(workdir / "instance"))
    response = app.test_client().get("/")
    assert response.status_code == 200
    assert BEFORE_BACKUP in response.get_data(as_text=True)
    with app.app_context():
        db.engine.dispose()


def assert_private(database: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        path = Path(f"{database}{suffix}")
        if path.exists():
            assert (path.stat().st_mode & 0o777) == 0o600, path
    assert not list(database.parent.glob(f".{database.name}.*")), "temporary files left"


# --------------------------------------------------------------------------- (1) the report

def test_sqlite_replace_restore_leaves_a_sound_database(tmp_path):
    """The reported case: setup, demo-data, an UPDATE through sqlite3 (its
    session still open, as an sqlite3 shell would be), backup (a ``-wal`` is left
    beside the file), restore --replace: the next open must not find it malformed."""
    env, database = site_env(tmp_path), tmp_path / "app.db"
    manage(env, tmp_path, "setup", "--admin-email", ADMIN[0], "--admin-password", ADMIN[1])
    manage(env, tmp_path, "demo-data")
    session = sqlite3.connect(database)
    try:
        set_title(database, BEFORE_BACKUP, session)
        archive = backup(env, tmp_path)
        assert Path(f"{database}-wal").stat().st_size > 0
        out = manage(env, tmp_path, "restore", str(archive), "--replace", "--yes")
        assert "restored" in out and "Traceback" not in out
        assert_sound(database, manifest_counts(archive))  # while the session is open
    finally:
        session.close()
    assert_sound(database, manifest_counts(archive))
    assert "[ok  ] schema" in manage(env, tmp_path, "status")
    assert_app_serves(tmp_path)
    assert_private(database)


# --------------------------------------------------------------------------- (2) while in use

def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError as exc:  # refused, reset: the server is down
        return 0, str(exc)


@contextlib.contextmanager
def polling(url: str) -> Iterator[list[int]]:
    """``GET url`` in a loop in a thread for the block; yields the statuses seen."""
    statuses: list[int] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            statuses.append(get(url)[0])
            time.sleep(0.02)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield statuses
    finally:
        stop.set()
        thread.join(timeout=30)


@contextlib.contextmanager
def reader(database: Path) -> Iterator[subprocess.Popen]:
    """Another process with a reader connection open on ``database``; each
    line sent to it runs one read transaction ("stop" ends it)."""
    proc = subprocess.Popen([sys.executable, "-c", READER, str(database)], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def read_once(proc: subprocess.Popen) -> list[str]:
    """One read transaction in the reader process: the lines it printed (the
    title of the upcoming trip GET / lists last, or the error)."""
    proc.stdin.write("read\n")
    proc.stdin.flush()
    lines = []
    while (line := proc.stdout.readline().strip()) != "read":
        assert line, "the reader process died"
        lines.append(line)
    return lines


def test_sqlite_replace_restore_under_a_running_server_and_reader(tmp_path):
    """A live ``manage.py run`` serving GET / in a loop and another process with a
    reader connection keep the database open during restore --replace: no 500,
    no read error, and afterwards the server shows the archive's data."""
    database = tmp_path / "app.db"
    with live_server(f"sqlite:///{database}", tmp_path, admin=ADMIN) as srv:
        set_title(database, BEFORE_BACKUP)
        archive = backup(srv.env, tmp_path)
        set_title(database, AFTER_BACKUP)
        assert AFTER_BACKUP in get(srv.url("/"))[1]
        with reader(database) as proc, polling(srv.url("/")) as statuses:
            assert read_once(proc) == [f"title {AFTER_BACKUP}"]
            out = srv.manage("restore", str(archive), "--replace", "--yes")
            seen = read_once(proc) + read_once(proc)
            time.sleep(0.5)
        assert "restored" in out
        assert seen == [f"title {BEFORE_BACKUP}"] * 2
        assert statuses and set(statuses) == {200}, sorted(set(statuses))
        after = [get(srv.url("/")) for _ in range(5)]
        assert all(status == 200 for status, _ in after), [s for s, _ in after]
        assert BEFORE_BACKUP in after[-1][1] and AFTER_BACKUP not in after[-1][1]
        assert_sound(database, manifest_counts(archive))
    assert_sound(database, manifest_counts(archive))
    assert_private(database)


# --------------------------------------------------------------------------- failures

def wal_database(path: Path, rows: int) -> sqlite3.Connection:
    """A WAL database with ``rows`` rows in table ``t``, left open (a ``-wal`` beside it)."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
    con.executemany("INSERT INTO t (v) VALUES (?)", [(f"old {i}",) for i in range(rows)])
    return con


def dump_of(rows: int, tmp_path: Path):
    """An ``iterdump`` stream of a database with ``rows`` new rows in ``t``."""
    con = sqlite3.connect(tmp_path / "source.db")
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    con.executemany("INSERT INTO t (v) VALUES (?)", [(f"new {i}",) for i in range(rows)])
    con.commit()
    data = "\n".join(con.iterdump()).encode()
    con.close()
    return io.BytesIO(data)


def restore_into(target: Path, stream) -> None:
    url = f"sqlite:///{target}"
    engine.SQLiteEngine().restore(EngineSettings(url), url, stream, replace=True)


def values(path: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(path)) as con:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return [v for (v,) in con.execute("SELECT v FROM t ORDER BY id")]


def test_sqlite_restore_engine_replaces_an_open_wal_database(tmp_path):
    target = tmp_path / "app.db"
    holder = wal_database(target, 3)
    try:
        restore_into(target, dump_of(5, tmp_path))
        assert [v for (v,) in holder.execute("SELECT v FROM t ORDER BY id")] == [
            f"new {i}" for i in range(5)]
    finally:
        holder.close()
    assert values(target) == [f"new {i}" for i in range(5)]
    assert_private(target)


def test_sqlite_restore_failing_check_puts_the_old_database_back(tmp_path, monkeypatch):
    monkeypatch.setattr(swap, "after_swap", lambda dst: "failed SQLite's integrity check")
    target = tmp_path / "app.db"
    holder = wal_database(target, 3)
    try:
        with pytest.raises(EngineError) as failed:
            restore_into(target, dump_of(5, tmp_path))
    finally:
        holder.close()
    assert "previous contents were put back, nothing was restored" in str(failed.value)
    assert values(target) == [f"old {i}" for i in range(3)]
    assert_private(target)


def test_sqlite_restore_says_so_when_the_old_database_cannot_be_put_back(tmp_path,
                                                                         monkeypatch):
    monkeypatch.setattr(swap, "after_swap", lambda dst: "failed SQLite's integrity check")
    monkeypatch.setattr(swap, "put_back", lambda keep, dst: False)
    target = tmp_path / "app.db"
    wal_database(target, 3).close()
    with pytest.raises(EngineError) as failed:
        restore_into(target, dump_of(5, tmp_path))
    kept = tmp_path / ".app.db.before-restore"
    assert "the database WAS changed" in str(failed.value) and str(kept) in str(failed.value)
    assert values(kept) == [f"old {i}" for i in range(3)]
    assert (kept.stat().st_mode & 0o777) == 0o600


def test_sqlite_restore_gives_up_on_a_locked_database_and_changes_nothing(tmp_path,
                                                                          monkeypatch):
    monkeypatch.setattr(swap, "BUSY_SECONDS", 0.5)
    target = tmp_path / "app.db"
    writer = wal_database(target, 3)
    writer.execute("BEGIN IMMEDIATE")  # a writer that does not let go
    try:
        with pytest.raises(EngineError) as failed:
            restore_into(target, dump_of(5, tmp_path))
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert "stayed locked" in str(failed.value) and "the database is as it was" in str(
        failed.value)
    assert values(target) == [f"old {i}" for i in range(3)]
    assert_private(target)


def test_a_write_committed_right_after_the_swap_is_kept(tmp_path, monkeypatch):
    """A guest registering right after the swap step, before its check: the live
    counts then differed from the loaded ones, the check called the swap failed,
    the old contents were put back and the registration (committed, answered)
    was lost, while the restore said "nothing was restored" (found by a race
    review). The counts were checked on the loaded copy before the swap."""
    import threading

    target = tmp_path / "app.db"
    wal_database(target, 3).close()
    real_backup, registered = swap._backup, threading.Event()

    def backup(src, dst, consequence):
        real_backup(src, dst, consequence)
        if consequence.endswith("the database is as it was"):  # the swap step itself
            writer = sqlite3.connect(target, timeout=30, isolation_level=None)
            writer.execute("INSERT INTO t (v) VALUES ('registered during the restore')")
            writer.close()
            registered.set()

    monkeypatch.setattr(swap, "_backup", backup)
    restore_into(target, dump_of(5, tmp_path))
    assert registered.is_set()
    assert values(target) == [f"new {i}" for i in range(5)] + ["registered during the restore"]
