"""Faults: the database dies mid-export, the backup process is killed, the disk
fills up. Nothing may look complete that is not, nothing may be left behind."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
import pytest
import sqlalchemy as sa
import sqlalchemy.exc

from guest_registration.extensions import db
from guest_registration.models import AuditEntry
from guest_backup.export.request import parse_request
from guest_backup.export.stream import open_export
from tests.helpers import ROOT, db_engine_of


def add_many_guests(app, n: int, year: int = 2025, month: int = 3) -> None:
    with app.app_context(), db.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO trip (title, max_guests) VALUES ('Bulk', 5)"))
        conn.execute(sa.text("INSERT INTO registration (trip_id, email) "
                             "SELECT max(id), 'bulk@example.com' FROM trip"))
        conn.execute(sa.text(
            "INSERT INTO guest (registration_id, first_name, last_name, age_category, document_type,"
            " document_number, gdpr_consent, created_at) "
            "SELECT (SELECT max(id) FROM registration), 'First ' || i, repeat('Last', 20), 'adult',"
            " 'passport', 'P' || i, true, make_timestamp(:y, :m, 1 + i % 27, i % 24, i % 60, 0) "
            "FROM generate_series(1, :n) AS i"), {"n": n, "y": year, "m": month})


@pytest.mark.parametrize("backend", ["postgresql"])
@pytest.mark.parametrize("fmt,fast,error", [
    # a fast path reads COPY on the driver's connection: psycopg2's own error (libpq
    # reports the lost server as OperationalError or, mid-COPY, a bare DatabaseError)
    ("csv", True, psycopg2.DatabaseError), ("json", True, psycopg2.DatabaseError),
    # rows through SQLAlchemy's server-side cursor: SQLAlchemy's wrapper of it
    ("csv", False, sa.exc.OperationalError)])
def test_database_dying_mid_export_breaks_the_stream(app, backend, fmt, fast, error):
    add_many_guests(app, 150_000)
    with app.app_context():
        req = parse_request({"year": ["2025"], "month": ["3"], "format": [fmt]},
                            app.extensions["export_formats"])
        stream = open_export(db.engine, req, db_engine=db_engine_of(app), actor="t", via="api", use_fast_path=fast,
                             fetch_rows=500)
        assert stream.rows == 150_000
        received = len(next(stream.chunks))
        with db.engine.connect() as killer:
            pids = killer.execute(sa.text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND xact_start IS NOT NULL")).scalars().all()
            assert pids
            for pid in pids:
                killer.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        with pytest.raises(error):
            for chunk in stream.chunks:
                received += len(chunk)
        entry = db.session.query(AuditEntry).order_by(AuditEntry.id.desc()).first()
        assert entry.outcome == "failed" and entry.rows is None
        # the next export works (the pool hands out a live connection)
        again = open_export(db.engine, req, db_engine=db_engine_of(app), actor="t", via="api", use_fast_path=fast)
        body = b"".join(again.chunks)
        assert body.count(b"\n") >= 150_000


@pytest.mark.parametrize("backend", ["postgresql"])
def test_an_export_failing_before_its_body_gives_its_connection_back(app, backend):
    """A database engine whose timestamp rendering raises (a plugin's bug) while the
    export's query is built, after the count: the export's connection is given back
    out of its snapshot and its audit entry finished as failed. Before, both were
    left: the connection stayed checked out inside the snapshot's transaction."""
    add_many_guests(app, 10)

    class Broken(type(db_engine_of(app))):
        def timestamp_text(self, column):
            raise RuntimeError("a plugin engine's bug")

    closed: list[int] = []
    with app.app_context():
        req = parse_request({"year": ["2025"], "month": ["3"], "format": ["csv"]},
                            app.extensions["export_formats"])
        with pytest.raises(RuntimeError):
            open_export(db.engine, req, db_engine=Broken(), actor="t", via="api",
                        on_close=lambda: closed.append(1))
        assert db.engine.pool.checkedout() == 0 and closed == [1]
        entry = db.session.query(AuditEntry).order_by(AuditEntry.id.desc()).first()
        assert entry.action == "export" and entry.outcome == "failed"
        assert entry.message == "RuntimeError"
        db.session.remove()  # the session's own transaction (the query above)
        with db.engine.connect() as conn:
            busy = conn.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND xact_start IS NOT NULL")).scalar_one()
        assert busy == 0


def manage_env(app, **extra) -> dict:
    env = {**os.environ, "DATABASE_URL": app.config["DATABASE_URL"],
           "UPLOAD_FOLDER": app.config["UPLOAD_FOLDER"], "BACKUP_FOLDER": app.config["BACKUP_FOLDER"],
           "SECRET_KEY": "test-secret-key", "SECURITY_PASSWORD_SALT": "test-salt",
           "INSTANCE_PATH": str(Path(app.config["BACKUP_FOLDER"]).parent / "instance")}
    env.update(extra)
    return env


@pytest.mark.parametrize("backend", ["postgresql"])
def test_killed_backup_leaves_nothing_visible_and_is_cleaned(app, backend, tmp_path):
    slow = tmp_path / "slow_pg_dump"
    slow.write_text("#!/bin/sh\n"
                    f'case "$1" in --version) exec {shutil.which("pg_dump")} --version;; esac\n'
                    "head -c 300000 /dev/urandom | base64\nsleep 60\n")
    slow.chmod(0o755)
    folder = Path(app.config["BACKUP_FOLDER"])
    proc = subprocess.Popen([sys.executable, "manage.py", "backup"], cwd=ROOT,
                            env=manage_env(app, PG_DUMP=str(slow)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not list(folder.glob(".system_backup_*.partial")):
            assert time.monotonic() < deadline, "the backup never started writing"
            assert proc.poll() is None, "the backup exited early"
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the server process dies, pg_dump with it
        proc.wait()
    assert list(folder.glob(".system_backup_*.partial"))
    listing = subprocess.run([sys.executable, "manage.py", "backup-list"], cwd=ROOT,
                             env=manage_env(app), capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0 and "no archives" in listing.stdout
    assert not list(folder.glob(".system_backup_*.partial"))


@pytest.mark.parametrize("backend", ["postgresql"])  # the limit would hit SQLite's own files too
def test_disk_full_while_writing_the_archive(app, runner, tmp_path, backend):
    """A file-size limit on the process stands in for a full disk (EFBIG instead of ENOSPC)."""
    loaded = runner.invoke(args=["demo-data"])
    assert loaded.exit_code == 0, loaded.output
    assert loaded.output.startswith("demo data loaded: 6 trips, "), loaded.output
    (Path(app.config["UPLOAD_FOLDER"]) / "big-brochure.pdf").write_bytes(os.urandom(400_000))

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    proc = subprocess.run([sys.executable, "manage.py", "backup"], cwd=ROOT, env=manage_env(app),
                          capture_output=True, text=True, timeout=120, preexec_fn=limit)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no archive was written" in proc.stderr
    assert "Traceback" not in proc.stderr
    folder = Path(app.config["BACKUP_FOLDER"])
    assert [p.name for p in folder.iterdir() if p.name != ".backup.lock"] == []
