"""A backup that was made but whose retention failed is told as what it is: the
archive exists (named), retention failed (why, what to do), in a kind of its own
(``retention``), never "Backup failed", and a later good backup does not say
"Backup recovered" for a backup that never failed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_notify import receiver  # noqa: F401  (the fixture)

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])  # the notification, not the engine


@pytest.fixture
def notified_app(app_config, receiver, request):
    app_config["BACKUP_NOTIFY_URLS"] = receiver.url()
    return request.getfixturevalue("app")


def _backup(app):
    return app.test_cli_runner().invoke(args=["backup"])


def test_a_retention_failure_is_not_a_failed_backup(notified_app, receiver):
    app = notified_app
    good = app.config.get("BACKUP_TRUSTED_KEYS")
    app.config["BACKUP_TRUSTED_KEYS"] = ["ed25519:abc"]  # retention cannot read the archives
    result = _backup(app)
    assert result.exit_code == 1, result.output  # the CLI still says what failed
    made = Path(result.output.strip().splitlines()[-1].rsplit(" ", 1)[-1])
    assert made.is_file()
    assert receiver.titles == ["Backup retention failed"], receiver.messages
    text = receiver.messages[0]["message"]
    assert "Backup failed" not in text and "did not complete" not in text, text
    assert f"{made.name} was made" in text, text
    assert "BACKUP_TRUSTED_KEYS: 'ed25519:abc' is not a public key" in text, text
    assert "backup-prune" in text, text  # what to do
    assert _backup(app).exit_code == 1
    assert len(receiver.messages) == 1  # the same state: told once

    app.config["BACKUP_TRUSTED_KEYS"] = good
    assert _backup(app).exit_code == 0
    assert receiver.titles == ["Backup retention failed", "Backup retention applied again"]
    assert "Backup recovered" not in receiver.titles
    state = json.loads((Path(app.instance_path) / "notify-state.json").read_text())
    assert state["backup"]["state"] == "ok" and state["retention"]["state"] == "ok"


def test_a_failed_backup_then_a_retention_failure(notified_app, receiver, tmp_path):
    """The backup recovered (an archive was made) while retention failed: both said."""
    app = notified_app
    good = app.config["BACKUP_FOLDER"]
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    app.config["BACKUP_FOLDER"] = str(blocker / "backups")
    assert _backup(app).exit_code == 1
    assert receiver.titles == ["Backup failed"]
    app.config["BACKUP_FOLDER"] = good
    app.config["BACKUP_TRUSTED_KEYS"] = ["ed25519:abc"]
    assert _backup(app).exit_code == 1
    assert receiver.titles == ["Backup failed", "Backup recovered", "Backup retention failed"]


def test_backup_prune_failing_is_told_as_retention(notified_app, receiver):
    app = notified_app
    assert _backup(app).exit_code == 0
    good = app.config.get("BACKUP_TRUSTED_KEYS")
    app.config["BACKUP_TRUSTED_KEYS"] = ["ed25519:abc"]
    result = app.test_cli_runner().invoke(args=["backup-prune"])
    assert result.exit_code == 1, result.output
    assert receiver.titles == ["Backup retention failed"], receiver.messages
    app.config["BACKUP_TRUSTED_KEYS"] = good
    assert app.test_cli_runner().invoke(args=["backup-prune"]).exit_code == 0
    assert receiver.titles == ["Backup retention failed", "Backup retention applied again"]
