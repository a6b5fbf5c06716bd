"""What the system tells operators about runs that are not what they seem: a
``backup --output`` copy is not the storages' backup (made, it cleared a failed
backup's alarms and reset the dead-man's switch; failed, it raised them), a run
stopped by SIGTERM or Ctrl-C is a failed one (it was neither told nor counted),
a database that cannot be read is a health problem (it was a traceback), and a
wrong ``backup-health`` option is not exit 2, "a storage cannot be reached"."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from guest_backup.wiring import backup_context
from guest_registration.extensions import db
from tests.helpers import ROOT, make_backup, manage
from tests.test_faults import manage_env
from tests.test_metrics import metrics_config, scrape  # noqa: F401
from tests.test_notify import notified_config, receiver  # noqa: F401

BACKUP_RUNS = 'guest_backup_runs_total{kind="backup",outcome="%s"}'


class Pings:
    """The dead-man's switch (BACKUP_HEALTHCHECK_URL): the paths GET from it."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                owner.paths.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hc"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def pings():
    p = Pings()
    yield p
    p.server.shutdown()
    p.server.server_close()


@pytest.fixture
def backend():
    return "sqlite"


@pytest.fixture
def watched(metrics_config, notified_config, pings, request):  # noqa: F811
    """An app with metrics, notifications and a dead-man's switch."""
    metrics_config["BACKUP_HEALTHCHECK_URL"] = pings.url
    return request.getfixturevalue("app")


def problem_ids(runner) -> list[str]:
    result = runner.invoke(args=["backup-health"])
    return [p["id"] for p in json.loads(result.output)["problem_ids"]]


# -- an --output copy is not the storages' backup ----------------------------------

def test_an_output_copy_does_not_clear_a_failed_backup(watched, receiver, pings,  # noqa: F811
                                                       tmp_path):
    app, runner = watched, watched.test_cli_runner()
    before = scrape(app.test_client()).get(BACKUP_RUNS % "ok", 0)  # counts of the process
    make_backup(runner)
    app.config["BACKUP_COMPRESSLEVEL"] = 0  # the timer's backups fail
    assert runner.invoke(args=["backup"]).exit_code == 1
    assert (receiver.titles, pings.paths) == (["Backup failed"], ["/hc", "/hc/fail"])
    app.config["BACKUP_COMPRESSLEVEL"] = 3  # a one-off copy elsewhere works
    make_backup(runner, "--output", str(tmp_path / "copy.zip"))
    assert "backup_failed" in problem_ids(runner)
    values = scrape(app.test_client())
    observed = (receiver.titles, pings.paths, values[BACKUP_RUNS % "ok"] - before,
                values["guest_backup_last_attempt_success"])
    assert observed == (["Backup failed"], ["/hc", "/hc/fail"], 1, 0)


def test_a_failed_output_copy_is_not_a_failed_backup(watched, receiver, pings,  # noqa: F811
                                                     tmp_path):
    app, runner = watched, watched.test_cli_runner()
    before = scrape(app.test_client()).get(BACKUP_RUNS % "failed", 0)  # counts of the process
    make_backup(runner)
    (tmp_path / "afile").write_text("")  # a mistyped path: a file where a folder goes
    result = runner.invoke(args=["backup", "--output", str(tmp_path / "afile" / "copy.zip")])
    assert result.exit_code == 1 and "cannot be created" in result.output
    assert "backup_failed" not in problem_ids(runner)
    values = scrape(app.test_client())
    assert values["guest_backup_last_attempt_success"] == 1
    assert values.get(BACKUP_RUNS % "failed", 0) == before
    with app.app_context():
        entry = backup_context(app).audit.recent(db.engine, 1, action="backup")[0]
    assert entry["outcome"] == "failed" and "--output" in entry["message"], entry  # marked
    make_backup(runner)  # the next timer's run: nothing was wrong, nothing recovers
    assert (receiver.titles, pings.paths) == ([], ["/hc", "/hc"])


# -- a run stopped by SIGTERM or Ctrl-C is a failed one ----------------------------

@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_backup_stopped_by_sigterm_is_told_counted_and_pinged(app, backend, receiver,  # noqa: F811
                                                               pings, tmp_path):
    prom = tmp_path / "prom"
    prom.mkdir(mode=0o700)
    slow = tmp_path / "slow_pg_dump"
    slow.write_text("#!/bin/sh\n"
                    f'case "$1" in --version) exec {shutil.which("pg_dump")} --version;; esac\n'
                    "head -c 300000 /dev/urandom | base64\nexec sleep 60\n")
    slow.chmod(0o755)
    env = manage_env(app, PG_DUMP=str(slow), BACKUP_NOTIFY_URLS=receiver.url(),
                     BACKUP_HEALTHCHECK_URL=pings.url, PROMETHEUS_MULTIPROC_DIR=str(prom))
    folder = Path(app.config["BACKUP_FOLDER"])
    proc = subprocess.Popen([sys.executable, "manage.py", "backup"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not list(folder.glob(".system_backup_*.partial")):
            assert time.monotonic() < deadline, "the backup never started writing"
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, (out, err)
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, str(prom))
    counted = BACKUP_RUNS % "failed" + " 1.0" in generate_latest(registry).decode()
    assert (receiver.titles, counted, pings.paths) == (["Backup failed"], True, ["/hc/fail"])
    assert "interrupted" in receiver.messages[0]["message"]


def test_a_drill_stopped_by_ctrl_c_is_audited_told_and_counted(watched, receiver,  # noqa: F811
                                                               monkeypatch):
    from guest_backup.ops import drill

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(drill, "_drill", interrupted)
    drills = 'guest_backup_runs_total{kind="drill",outcome="failed"}'
    before = scrape(watched.test_client()).get(drills, 0)  # counts of the process
    with watched.app_context():
        ctx, engine = backup_context(watched), db.engine
        with pytest.raises(KeyboardInterrupt):
            drill.restore_drill(ctx, engine, actor=None, via="cli")
        entry = ctx.audit.recent(engine, 1, action="restore-test")[0]
    assert (entry["outcome"], entry["message"]) == ("aborted", "interrupted")
    assert receiver.titles == ["Restore drill failed"]
    assert "interrupted" in receiver.messages[0]["message"]
    assert scrape(watched.test_client())[drills] == before + 1


# -- a database that cannot be read ------------------------------------------------

def test_health_with_the_database_down_is_a_problem_not_a_traceback(tmp_path, receiver):  # noqa: F811
    assert manage("setup", tmp_path=tmp_path).returncode == 0
    down = {"DATABASE_URL": "postgresql://postgres:Pw-s3cret@127.0.0.1:1/nodb",
            "BACKUP_FOLDER": str(tmp_path / "backups"), "BACKUP_NOTIFY_URLS": receiver.url()}
    health = manage("backup-health", env=down, tmp_path=tmp_path)
    assert "Traceback" not in health.stderr and health.returncode == 1, health.stderr[-600:]
    report = json.loads(health.stdout)
    database = [p for p in report["problem_ids"] if p["id"] == "database"]
    assert database and "cannot be read (OperationalError)" in database[0]["text"]
    assert report["last_backup"] is None and report["status"] == "unhealthy"
    check = manage("notify-check", env=down, tmp_path=tmp_path)
    assert "Traceback" not in check.stderr, check.stderr[-600:]
    assert receiver.titles == ["Backup health degraded"]
    shown = health.stdout + health.stderr + check.stdout + check.stderr + json.dumps(
        receiver.messages)
    assert "Pw-s3cret" not in shown and "Connection refused" not in shown


# -- a wrong option is not "a storage cannot be reached" ---------------------------

@pytest.mark.parametrize("args", [["--max-age", "26 hours"], ["--max-drill-age", "x"],
                                  ["--maxage", "26h"]], ids=["value", "drill", "typo"])
def test_a_wrong_option_of_backup_health_exits_1(app, args):
    result = app.test_cli_runner().invoke(args=["backup-health", *args])
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert "Error:" in result.output and not result.output.lstrip().startswith("{")
