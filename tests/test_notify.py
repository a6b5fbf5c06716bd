"""Notifications through Apprise, against a local HTTP receiver (Apprise's
``json://`` scheme): once per change of state, never per run; masked URLs; no
personal data in the texts; a failure to notify never breaks the operation."""

from __future__ import annotations

import json
import os
import stat
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from guest_backup.ops import notify
from guest_backup.ops.notify_state import STATE_FILE
from guest_backup.wiring import backup_context
from tests.helpers import ADMIN, USER
from tests.live_server import free_port


class Receiver:
    """An HTTP server in a thread that records every POSTed JSON body."""

    def __init__(self) -> None:
        self.messages: list[dict] = []
        self.paths: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                owner.paths.append(self.path)
                owner.messages.append(json.loads(body or b"{}"))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "backup") -> str:
        return f"json://127.0.0.1:{self.port}/{path}"

    @property
    def titles(self) -> list[str]:
        return [m.get("title", "") for m in self.messages]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def notified_config(app_config, receiver):
    app_config["BACKUP_NOTIFY_URLS"] = receiver.url()
    return app_config


def _break_backup_folder(app, tmp_path: Path) -> str:
    """Make BACKUP_FOLDER impossible to create; returns the good value."""
    good = app.config["BACKUP_FOLDER"]
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    app.config["BACKUP_FOLDER"] = str(blocker / "backups")
    return good


def _backup(app) -> int:
    return app.test_cli_runner().invoke(args=["backup"]).exit_code


def test_a_failure_is_told_once_and_the_recovery_once(notified_config, request, receiver,
                                                      tmp_path):
    app = request.getfixturevalue("app")
    good = _break_backup_folder(app, tmp_path)
    assert _backup(app) == 1
    assert receiver.titles == ["Backup failed"]
    assert receiver.paths == ["/backup"]
    text = receiver.messages[0]["message"]
    assert "backup folder" in text and "cannot be created" in text
    for _ in range(3):
        assert _backup(app) == 1
    assert receiver.titles == ["Backup failed"]  # the same state: no new message

    app.config["BACKUP_FOLDER"] = good
    assert _backup(app) == 0
    assert receiver.titles == ["Backup failed", "Backup recovered"]
    assert "system_backup_" in receiver.messages[1]["message"]
    assert _backup(app) == 0
    assert len(receiver.messages) == 2
    for message in receiver.messages:  # who ran the backup is nobody's business here
        assert ADMIN[0] not in json.dumps(message) and USER[0] not in json.dumps(message)
        assert "cli:" not in message["message"]

    state = Path(app.instance_path) / STATE_FILE
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o600
    assert json.loads(state.read_text())["backup"]["state"] == "ok"


@pytest.mark.parametrize("backend", ["postgresql"])
def test_pg_dump_failing_is_told_once(notified_config, backend, request, receiver):
    app = request.getfixturevalue("app")
    app.config["PG_DUMP"] = "/bin/false"
    assert _backup(app) == 1
    assert _backup(app) == 1
    assert receiver.titles == ["Backup failed"]
    app.config["PG_DUMP"] = "pg_dump"
    assert _backup(app) == 0
    assert receiver.titles == ["Backup failed", "Backup recovered"]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_an_undelivered_message_is_sent_after_the_next_run(app_config, backend, request,
                                                           receiver, tmp_path):
    app_config["BACKUP_NOTIFY_URLS"] = f"json://127.0.0.1:{free_port()}/nobody-listens"
    app = request.getfixturevalue("app")
    good = _break_backup_folder(app, tmp_path)
    result = app.test_cli_runner().invoke(args=["backup"])
    assert result.exit_code == 1 and "cannot be created" in result.output  # its own error
    assert not (Path(app.instance_path) / STATE_FILE).exists()  # not told: not stored

    app.config["BACKUP_NOTIFY_URLS"] = receiver.url()
    assert _backup(app) == 1
    assert receiver.titles == ["Backup failed"]
    app.config["BACKUP_NOTIFY_URLS"] = f"json://127.0.0.1:{free_port()}/nobody-listens"
    app.config["BACKUP_FOLDER"] = good
    assert _backup(app) == 0  # a notification that fails never fails the backup


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_failed_drill_and_degraded_health_are_told_once(notified_config, backend, request,
                                                          receiver):
    app = request.getfixturevalue("app")
    runner = app.test_cli_runner()
    assert runner.invoke(args=["restore-test"]).exit_code == 1  # no archive to test
    assert runner.invoke(args=["restore-test"]).exit_code == 1
    assert receiver.titles == ["Restore drill failed"]

    first = runner.invoke(args=["notify-check"])
    assert first.exit_code == 0 and "unhealthy" in first.output
    again = runner.invoke(args=["notify-check"])
    assert again.exit_code == 0
    assert receiver.titles == ["Restore drill failed", "Backup health degraded"]
    assert "no archive yet" in receiver.messages[1]["message"]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_retention_removing_many_archives_is_told_once(notified_config, backend, request,
                                                       receiver):
    app = request.getfixturevalue("app")
    app.config["BACKUP_NOTIFY_MAX_PRUNE"] = 2
    ctx = backup_context(app)
    notify.after_prune(ctx, {"local": 1})
    notify.after_prune(ctx, {"local": 3})
    notify.after_prune(ctx, {"local": 4})
    assert receiver.titles == ["Retention removed many archives (local)"]
    notify.after_prune(ctx, {"local": 0})  # back to normal: nothing to say
    notify.after_prune(ctx, {"local": 3, "remote": 3})
    assert receiver.titles == ["Retention removed many archives (local)"] * 2 + [
        "Retention removed many archives (remote)"]
    assert "3 archives were removed from local" in receiver.messages[1]["message"]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_backup_prune_over_the_limit_is_told(notified_config, backend, request, receiver):
    app = request.getfixturevalue("app")
    app.config["BACKUP_NOTIFY_MAX_PRUNE"] = 1
    for _ in range(3):
        assert _backup(app) == 0
    app.config["BACKUP_KEEP"] = 1
    result = app.test_cli_runner().invoke(args=["backup-prune"])
    assert result.exit_code == 0, result.output
    assert receiver.titles == ["Retention removed many archives (local)"]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_state_lives_in_redis_when_configured(notified_config, backend, request, receiver,
                                                  redis_url):
    import redis

    notified_config["REDIS_URL"] = redis_url
    app = request.getfixturevalue("app")
    ctx = backup_context(app)
    assert notify.change(ctx, "backup", "failed", "x") == "Backup failed"
    assert notify.change(ctx, "backup", "failed", "x") is None
    assert notify.change(ctx, "backup", "ok", "y") == "Backup recovered"
    assert receiver.titles == ["Backup failed", "Backup recovered"]
    stored = redis.Redis.from_url(redis_url).hget("guest-registration:notify-state", "backup")
    assert json.loads(stored)["state"] == "ok"
    assert not (Path(app.instance_path) / STATE_FILE).exists()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_notify_test_says_which_url_accepted_and_masks_secrets(app_config, backend, request,
                                                               receiver):
    dead = f"json://user:topsecret@127.0.0.1:{free_port()}/hook?token=alsosecret"
    app_config["BACKUP_NOTIFY_URLS"] = f"{receiver.url('ok')},{dead},bogus://s3cr3t-value"
    app = request.getfixturevalue("app")
    result = app.test_cli_runner().invoke(args=["notify-test"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("OK") and f"127.0.0.1:{receiver.port}/ok" in lines[0]
    assert lines[1].startswith("FAILED") and "user:****@127.0.0.1" in lines[1]
    assert lines[2] == "FAILED bogus://***"
    for secret in ("topsecret", "alsosecret", "s3cr3t-value"):
        assert secret not in result.output
    assert receiver.titles == ["Test notification"]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_notify_test_without_urls(app, backend):
    result = app.test_cli_runner().invoke(args=["notify-test"])
    assert result.exit_code == 1 and "BACKUP_NOTIFY_URLS is not set" in result.output


def test_messages_carry_no_address():
    text = notify.message("Backup failed", "role admin@example.com cannot log in")
    assert "admin@example.com" not in text and "<address>" in text


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_failure_is_told_even_when_the_state_in_redis_cannot_be_reached(
        notified_config, backend, request, receiver):
    """Before, with REDIS_URL set and Redis down, the backup failed (its lock is in
    Redis) and its notification failed too ("the backup's notification failed
    (ConnectionError)"): nobody was told. A bad state is now sent without the
    check whether it was told already; a good one is not sent."""
    notified_config["REDIS_URL"] = f"redis://:pw-never-told@127.0.0.1:{free_port()}/12"
    app = request.getfixturevalue("app")
    assert _backup(app) == 1
    assert receiver.titles == ["Backup failed"]
    text = receiver.messages[0]["message"]
    assert "notification state cannot be reached" in text
    assert "the backup lock in Redis" in text and "pw-never-told" not in text
    ctx = backup_context(app)
    assert notify.change(ctx, "backup", "ok", "fine") is None
    assert receiver.titles == ["Backup failed"]
