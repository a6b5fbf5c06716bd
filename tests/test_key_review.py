"""The keys review: a mistyped or pasted-private BACKUP_TRUSTED_KEYS (the backup
made is said to be made, health reports it as JSON, no key material is shown),
the drill of a new server that shares the old one's remote with
``--trusted-key``, and an encrypted archive downloaded without its seal."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa

from guest_registration import create_app
from tests.helpers import make_backup, make_config

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])  # the keys, not the engines


def key_of(runner) -> str:
    return runner.invoke(args=["backup-key"]).output.strip().splitlines()[-1]


def last_backup(app) -> tuple[str, str]:
    with sa.create_engine(app.config["DATABASE_URL"]).connect() as conn:
        return tuple(conn.execute(sa.text(
            "SELECT outcome, target FROM audit_log WHERE action = 'backup' "
            "ORDER BY id DESC LIMIT 1")).one())


@pytest.fixture
def pem(app) -> str:
    """A private key as an operator would paste it (this instance's own)."""
    return Path(app.config["BACKUP_SIGNING_KEY"]).read_text()


def test_a_mistyped_trusted_key_leaves_the_backup_made_and_names_the_setting(app, runner):
    app.config["BACKUP_TRUSTED_KEYS"] = ["ed25519:abc"]
    result = runner.invoke(args=["backup"])
    assert result.exit_code == 1  # retention failed: as for a storage error while pruning
    line = result.output.strip().splitlines()[-1]
    assert "the backup was made, but retention was not applied (BACKUP_TRUSTED_KEYS: " \
           "'ed25519:abc' is not a public key" in line, result.output
    made = Path(line.rsplit(" ", 1)[-1])
    assert made.is_file() and last_backup(app) == ("ok", made.name)


def test_health_reports_a_bad_trusted_key_setting_as_json(app, runner):
    make_backup(runner)
    app.config["BACKUP_TRUSTED_KEYS"] = ["ed25519:abc"]
    result = runner.invoke(args=["backup-health"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    report = json.loads(result.output)
    assert result.exit_code == 1 and report["status"] == "unhealthy"
    assert any(p.startswith("BACKUP_TRUSTED_KEYS: 'ed25519:abc' is not a public key")
               for p in report["problems"]), report["problems"]


@pytest.mark.parametrize("pasted", ["pem", "body"])
def test_a_private_key_in_the_setting_is_never_shown(app, runner, pem, pasted):
    body = [line for line in pem.splitlines() if line and "-----" not in line]
    app.config["BACKUP_TRUSTED_KEYS"] = [pem if pasted == "pem" else "".join(body)]
    for args in (["backup-list"], ["backup-health"], ["backup"]):
        result = runner.invoke(args=args)
        assert result.exit_code == 1, result.output
        assert ("BACKUP_TRUSTED_KEYS holds a private key or PEM text: give public keys"
                if pasted == "pem" else "BACKUP_TRUSTED_KEYS: a value not starting ed25519: "
                "is not a public key") in result.output, result.output
        assert "BEGIN" not in result.output and "MC4CAQ" not in result.output, result.output
        for line in body:
            for i in range(0, len(line) - 8):
                assert line[i:i + 8] not in result.output, (args, result.output)


def test_a_trusted_key_option_holding_a_private_key_is_not_quoted(app, runner, pem):
    archive = make_backup(runner)
    result = runner.invoke(args=["verify", str(archive), "--trusted-key", pem])
    assert result.exit_code == 1
    assert "--trusted-key holds a private key or PEM text" in result.output, result.output
    assert "BEGIN" not in result.output


def test_a_new_server_drills_the_old_ones_archives_with_their_key(request, app_config,
                                                                  tmp_path):
    remote = tmp_path / "remote"
    remote.mkdir(mode=0o700)
    app_config["BACKUP_REMOTE_URL"] = f"file://{remote}"
    old_runner = request.getfixturevalue("runner")
    assert old_runner.invoke(args=["demo-data"]).exit_code == 0
    archive = make_backup(old_runner)
    key = key_of(old_runner)
    new = create_app(make_config(tmp_path / "new", app_config["DATABASE_URL"],
                                 BACKUP_REMOTE_URL=f"file://{remote}"),
                     instance_path=str(tmp_path / "new-instance"))
    runner = new.test_cli_runner()
    assert key_of(runner) != key
    assert runner.invoke(args=["verify", str(remote / archive.name),
                               "--trusted-key", key]).exit_code == 0
    refused = runner.invoke(args=["restore-test"])  # nothing it trusts: still none
    assert refused.exit_code == 1 and "no archive in" in refused.output
    drill = runner.invoke(args=["restore-test", "--trusted-key", key])
    assert drill.exit_code == 0, drill.output
    assert f"OK restore drill of {archive.name}" in drill.output
    # BACKUP_TRUSTED_KEYS alone still does not accept another installation's archive
    new.config["BACKUP_TRUSTED_KEYS"] = [key]
    assert runner.invoke(args=["restore-test"]).exit_code == 1


def test_a_downloaded_encrypted_archive_says_how_to_check_it(request, app_config, tmp_path):
    from pyrage import x25519

    identity = x25519.Identity.generate()
    key_file = tmp_path / "offline-key.txt"
    key_file.write_text(f"{identity}\n")
    app_config["BACKUP_AGE_RECIPIENTS"] = [str(identity.to_public())]
    runner = request.getfixturevalue("runner")
    archive = make_backup(runner)
    downloaded = tmp_path / "downloads" / archive.name
    downloaded.parent.mkdir()
    shutil.copy(archive, downloaded)  # what Download sends: the archive, not its seal
    refused = runner.invoke(args=["verify", str(downloaded), "--identity", str(key_file)])
    assert refused.exit_code == 1
    assert ("copy the .sig from the backup folder or remote beside it, or give --identity "
            "and --allow-unsigned") in refused.output, refused.output
    target = f"sqlite:///{tmp_path / 'target.db'}"
    restore = ["restore", str(downloaded), "--database-url", target, "--uploads",
               str(tmp_path / "u"), "--yes", "--identity", str(key_file)]
    assert "copy the .sig" in runner.invoke(args=restore).output
    checked = runner.invoke(args=["verify", str(downloaded), "--identity", str(key_file),
                                  "--allow-unsigned"])
    assert checked.exit_code == 0 and "signed by ed25519:" in checked.output, checked.output
    shutil.copy(archive.with_name(archive.name + ".sig"), downloaded.parent)
    assert runner.invoke(args=restore).exit_code == 0


def test_the_backup_page_shows_a_bad_trusted_key_setting(app, client, auth):
    """The page caught only a storage's error around the listing: a mistyped
    BACKUP_TRUSTED_KEYS made the System Backup page an error page."""
    app.config["BACKUP_TRUSTED_KEYS"] = ["ed25519:abc"]
    auth.login()
    page = client.get("/admin/backup/")
    shown = page.get_data(as_text=True)
    assert page.status_code == 200, shown[:300]
    assert "Backups are misconfigured" in shown and "BACKUP_TRUSTED_KEYS: " in shown


def test_the_api_and_the_browse_page_say_so_too(app, client, auth):
    """The archive API (a 500 with a traceback in the log, no body) and the
    Restore-a-selection page (an error page) had the same gap."""
    app.config["BACKUP_TRUSTED_KEYS"] = ["ed25519:abc"]
    listed = client.get("/api/backup/archives", headers={"Authentication-Token": auth.token()})
    assert listed.status_code == 500 and listed.is_json
    assert "misconfigured: BACKUP_TRUSTED_KEYS: " in listed.get_json()["error"]
    auth.login()
    assert client.get("/admin/backup/browse/").status_code == 200
