"""What a restore drill that did not pass leaves behind. A drill skipped because a
backup holds the lock is no drill: exit 75, no audit entry, health and the drill
gauge unchanged, nothing told. A drill broken by anything but a BackupError (an
S3 read timing out while the archive is fetched) is audited as failed with a
safe one-line reason, told with that reason, and ends in one ``Error:`` line and
exit 1 (the traceback goes to the log)."""

from __future__ import annotations

import json
import logging

import pytest

from guest_backup.wiring import backup_context
from tests.helpers import make_backup
from tests.test_notify import receiver  # noqa: F401 (fixture)
from tests.test_remote import SECRET, entries, pings, remote, s3  # noqa: F401 (fixtures)


@pytest.fixture
def app_config(app_config, receiver):
    app_config["BACKUP_NOTIFY_URLS"] = receiver.url()
    return app_config


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("Error:")]


def last_drill(runner) -> tuple[int, dict]:
    health = runner.invoke(args=["backup-health"])
    return health.exit_code, json.loads(health.output)["last_drill"]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_drill_skipped_because_a_backup_runs_is_no_drill(app, runner, receiver, backend):
    make_backup(runner)
    assert runner.invoke(args=["restore-test"]).exit_code == 0
    assert last_drill(runner)[0] == 0

    lock = backup_context(app).lock().acquire()  # a backup is running
    try:
        skipped = runner.invoke(args=["restore-test"])
    finally:
        lock.release()

    assert skipped.exit_code == 75, skipped.output
    assert error_lines(skipped.output) == ["Error: another backup is running; wait for it "
                                           "to finish"]
    # no entry for it: the drill gauge (read from the audit log) stays at 1
    assert [e.outcome for e in entries(app, "restore-test")] == ["ok"]
    code, drill = last_drill(runner)
    assert code == 0 and drill["outcome"] == "ok"
    assert "Restore drill failed" not in receiver.titles
    check = runner.invoke(args=["notify-check"])
    assert check.exit_code == 0 and "Restore drill failed" not in receiver.titles


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_drill_broken_by_a_read_timeout_is_audited_told_and_one_line(remote, runner, receiver,
                                                                       backend, monkeypatch,
                                                                       caplog):
    from botocore.exceptions import ReadTimeoutError

    from guest_backup.storages.s3 import S3Storage

    make_backup(runner)
    assert runner.invoke(args=["restore-test"]).exit_code == 0
    real_open = S3Storage.open
    reads = {"n": 0}

    class Flaky:
        """The Body of a GetObject whose connection times out after two reads."""

        def __init__(self, body):
            self.body = body

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            self.body.close()

        def read(self, amt=None):
            reads["n"] += 1
            if reads["n"] > 2:
                raise ReadTimeoutError(endpoint_url="http://s3.example/guest-backups")
            return self.body.read(amt)

        def close(self):
            self.body.close()

    monkeypatch.setattr(S3Storage, "open", lambda self, name, **kw: Flaky(real_open(self, name,
                                                                                   **kw)))
    with caplog.at_level(logging.WARNING):
        drill = runner.invoke(args=["restore-test"])
    monkeypatch.setattr(S3Storage, "open", real_open)

    assert reads["n"] > 2
    assert drill.exit_code == 1 and isinstance(drill.exception, SystemExit), drill.output
    assert "Traceback" not in drill.output and "s3.example" not in drill.output
    (line,) = error_lines(drill.output)
    reason = "the restore failed (ReadTimeoutError); details are in the server log"
    assert line == f"Error: restore drill failed: {reason}"
    ok, failed = entries(remote, "restore-test")
    assert (ok.outcome, failed.outcome, failed.message) == ("ok", "failed", reason)
    code, last = last_drill(runner)
    assert code == 1 and last["outcome"] == "failed"
    assert receiver.titles[-1] == "Restore drill failed"
    told = json.dumps(receiver.messages[-1])
    assert reason in told and "s3.example" not in told and SECRET not in told
    logged = [r for r in caplog.records if r.exc_info and r.exc_info[0] is ReadTimeoutError]
    assert logged, "the traceback is not in the log"


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_drill_broken_by_a_backup_error_keeps_its_message(app, runner, receiver, backend):
    drill = runner.invoke(args=["restore-test"])  # no archive yet
    assert drill.exit_code == 1
    (line,) = error_lines(drill.output)
    assert line.startswith("Error: restore drill failed: there is no archive in ")
    (entry,) = entries(app, "restore-test")
    assert entry.outcome == "failed" and entry.message == line.split(": ", 2)[2]
    assert receiver.titles == ["Restore drill failed"]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_queued_drill_that_finds_the_lock_taken_is_skipped_not_failed(app, runner):
    """The worker's job said "restore drill ended: failed (another backup is
    running…)" and ended as a failed RQ job, where ``restore-test`` exits 75."""
    from guest_backup.tasks import run_queued_drill
    from guest_backup.wiring import backup_context
    from guest_registration.audit import recent
    from guest_registration.extensions import db

    assert runner.invoke(args=["backup"]).exit_code == 0
    with app.app_context():
        with backup_context(app).lock():
            outcome = run_queued_drill("admin@example.com", None, [])
        assert outcome["ok"] is None and "another backup is running" in outcome["skipped"]
        assert not recent(db.engine, 5, action="restore-test")
