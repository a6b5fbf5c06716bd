"""A page job found dead and a health report without its database, as a review
found them: a backup killed after its archive was made and audited ``ok`` kept
that entry (a page poll rewrote it ``failed``, and backup-health said the last
backup failed); a poll finishing a dead job's entry took the backup lock (a click
meanwhile was refused "already running"); and backup-health with the database
down and PITR configured was a TypeError, not a report (so notify-check told no
one)."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from guest_backup.ops import jobs, pipeline
from guest_backup.ops.health import health
from guest_backup.wiring import backup_context
from guest_registration import audit
from guest_registration.extensions import db
from tests import test_notify
from tests.helpers import manage

receiver = test_notify.receiver  # the notification receiver fixture

DEAD_DATABASE = "postgresql://postgres:Pw-s3cret@127.0.0.1:1/nodb"


@pytest.fixture
def backend():
    return "sqlite"


def _entries(url: str) -> list[tuple]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(
                "SELECT id, outcome, message, target FROM audit_log "
                "WHERE action = 'backup' ORDER BY id"))]
    finally:
        engine.dispose()


def _dead_job(app, **fields) -> int:
    """A running job whose process is gone (its lock free), with a ``running``
    backup entry; returns the entry's id."""
    ctx = backup_context(app)
    entry = ctx.audit.start(db.engine, "backup", actor="admin@example.com", via="admin")
    folder = Path(app.config["BACKUP_FOLDER"])
    folder.mkdir(parents=True, exist_ok=True)
    jobs.job_state(ctx).write({"id": "dead", "state": "running", "stage": "database",
                               "bytes": 1, "audit_id": entry, **fields})
    return entry


# -- a job killed after its backup was audited ok ------------------------------------

def test_a_job_killed_after_its_backup_was_audited_ok_keeps_its_ok_entry(app, monkeypatch):
    runner = app.test_cli_runner()
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    url = app.config["DATABASE_URL"]
    pid = os.fork()
    if pid == 0:  # the web process running the job, killed while pruning
        try:
            monkeypatch.setattr(pipeline, "prune_storage",
                                lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL))
            with app.app_context():
                ctx = backup_context(app)
                job, lock = jobs.claim(ctx, "admin@example.com", queued=False)
                jobs.run_job(ctx, sa.create_engine(url), job, lock, logging.getLogger("x"))
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status), status
    before = _entries(url)
    assert [r[1] for r in before] == ["ok"], before  # made and audited ok
    assert (Path(app.config["BACKUP_FOLDER"]) / before[0][3]).is_file()
    with app.app_context():
        job = jobs.read_job(backup_context(app))
        assert job["state"] == "failed"  # the page: interrupted
        assert jobs.job_state(backup_context(app)).read()["audit_id"] is None  # not again
    assert _entries(url) == before
    report = json.loads(runner.invoke(args=["backup-health"]).output)
    assert report["last_backup"]["outcome"] == "ok"
    assert "backup_failed" not in [p["id"] for p in report["problem_ids"]], report


def test_a_dead_jobs_running_entry_is_finished_failed_once_by_many_polls(app, monkeypatch):
    with app.app_context():
        _dead_job(app)
    changed, states = [], []
    real = audit.finish

    def counting(*args, **kwargs):
        changed.append(real(*args, **kwargs))
        return changed[-1]

    monkeypatch.setattr(audit, "finish", counting)

    def poll():
        with app.app_context():
            states.append(jobs.read_job(backup_context(app))["state"])

    polls = [threading.Thread(target=poll) for _ in range(8)]
    for t in polls:
        t.start()
    for t in polls:
        t.join()
    assert states == ["failed"] * 8
    assert changed.count(True) == 1, changed
    (_, outcome, message, _), = _entries(app.config["DATABASE_URL"])
    assert outcome == "failed" and message.startswith("interrupted"), message


def test_a_click_while_a_poll_finishes_a_dead_job_starts_its_backup(app, monkeypatch):
    with app.app_context():
        _dead_job(app)
        ctx = backup_context(app)
    clicked = []
    real = audit.finish

    def click_meanwhile(*args, **kwargs):
        job, lock = jobs.claim(ctx, "other@example.com", queued=False)  # not refused
        clicked.append(job["id"])
        try:
            return real(*args, **kwargs)
        finally:
            lock.release()

    monkeypatch.setattr(audit, "finish", click_meanwhile)
    with app.app_context():
        assert jobs.read_job(backup_context(app))["state"] == "failed"
        held = jobs.job_state(ctx).read()
    assert clicked and held["id"] == clicked[0], held  # the new job's state stays


# -- backup-health without its database, PITR configured -----------------------------

def test_health_with_the_database_down_and_pitr_on_is_a_report(app_config, tmp_path, request):
    app_config["PITR_PG_DATA"] = str(tmp_path / "pgdata")
    app = request.getfixturevalue("app")
    dead = sa.create_engine(DEAD_DATABASE.replace("postgresql:", "postgresql+psycopg2:"))
    with app.app_context():
        report, code = health(backup_context(app), dead, max_age=timedelta(hours=26),
                              max_drill_age=timedelta(days=35))
    ids = [p["id"] for p in report["problem_ids"]]
    assert code == 1 and "database" in ids, report
    assert "pitr_no_drill" not in ids and report["pitr"]["last_drill"] is None


def test_backup_health_and_notify_check_with_the_database_down_and_pitr_on(
        tmp_path, receiver):
    assert manage("setup", tmp_path=tmp_path).returncode == 0
    down = {"DATABASE_URL": DEAD_DATABASE, "PITR_PG_DATA": str(tmp_path / "pgdata"),
            "BACKUP_FOLDER": str(tmp_path / "backups"), "BACKUP_NOTIFY_URLS": receiver.url()}
    result = manage("backup-health", env=down, tmp_path=tmp_path)
    assert "Traceback" not in result.stderr and result.returncode == 1, result.stderr[-600:]
    report = json.loads(result.stdout)
    assert report["pitr"] is not None  # PITR was on
    assert "database" in [p["id"] for p in report["problem_ids"]], report
    check = manage("notify-check", env=down, tmp_path=tmp_path)
    assert "Traceback" not in check.stderr, check.stderr[-600:]
    assert receiver.titles == ["Backup health degraded"]
    shown = result.stdout + result.stderr + check.stdout + check.stderr
    assert "Pw-s3cret" not in shown + json.dumps(receiver.messages)
