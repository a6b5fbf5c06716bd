"""Secrets the outputs must never show, and a check audited under the right name
(review of what the system tells operators):

- S3 credentials written into BACKUP_REMOTE_URL (``s3://KEY:SECRET@bucket/prefix``,
  the form rclone and duplicity take) were accepted, the bucket being
  ``KEY:SECRET@bucket``, and shown by backup, backup-health, backup-list,
  notify-check and the upload's audit entry. They are refused, never echoed.
- An age identity in BACKUP_AGE_RECIPIENTS, quoted (Docker's ``--env-file`` keeps
  quotes) or in lower case, passed the exact-case ``AGE-SECRET-KEY`` test and its
  first 24 characters were echoed. A bad value is now named by its place only.
- A password in a database URL's query (``?password=``, which libpq and psycopg2
  take) was printed by ``status`` and ``restore``.
- ``verify /usb/NAME`` of a damaged copy was audited under the bare name: health
  said the intact stored archive failed its check, retention kept it as damaged.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import types
from pathlib import Path

import pytest

from guest_registration import audit
from guest_registration.extensions import db
from tests.helpers import create_pg_database, drop_pg_database, make_backup, manage

KEY_ID, S3_SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMIK7MDENGbPxRfiCYSECRET"
REFUSED = ("BACKUP_REMOTE_URL must not hold credentials: put them in "
           "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (the value is not shown)")


@pytest.fixture
def backend():
    return "sqlite"


# --------------------------------------------------------------------------- S3 URL

@pytest.mark.parametrize("url", [
    f"s3://{KEY_ID}:{S3_SECRET}@bucket/prefix",
    f"s3://{KEY_ID}:{S3_SECRET}@bucket",
    f"s3://{KEY_ID}:wJal/rXU{S3_SECRET}@bucket/prefix",  # a secret holding "/"
    f"s3://{S3_SECRET}@bucket/prefix",
    f"s3://{KEY_ID}:{S3_SECRET}/prefix",  # no "@": still no bucket name
    f"S3://{KEY_ID}:{S3_SECRET}@bucket/prefix",
])
def test_credentials_in_the_remote_url_are_refused_unshown(url):
    from guest_backup.storages import StorageError, check_remote_url
    from guest_backup.storages.s3 import S3StorageType

    with pytest.raises(StorageError) as refused:
        S3StorageType().open(url, {"BACKUP_REMOTE_URL": url})
    assert str(refused.value) == REFUSED
    with pytest.raises(StorageError) as at_start:  # what start-up calls
        check_remote_url(url)
    assert str(at_start.value) == REFUSED


def test_an_archive_url_given_to_a_command_is_named_as_such():
    from guest_backup.storages import StorageError
    from guest_backup.storages.s3 import S3StorageType

    with pytest.raises(StorageError) as refused:
        S3StorageType().open(f"s3://{KEY_ID}:{S3_SECRET}@other/x", {"BACKUP_REMOTE_URL": ""})
    assert str(refused.value).startswith("the archive's URL must not hold credentials")
    assert S3_SECRET not in str(refused.value) and KEY_ID not in str(refused.value)


def test_a_plain_s3_url_still_opens():
    from guest_backup.storages.s3 import S3StorageType

    storage = S3StorageType().open("s3://bucket/site-a", {})
    assert (storage.bucket, storage.prefix, storage.url) == ("bucket", "site-a",
                                                             "s3://bucket/site-a")


def test_s3_credentials_in_the_remote_url_reach_no_output_or_audit_entry(tmp_path):
    """Each command as the timers and an operator run it (refused at start-up, or
    by the storage when the setting is read later); the audit log's file too."""
    env = {"BACKUP_FOLDER": str(tmp_path / "backups"), "UPLOAD_FOLDER": str(tmp_path / "up"),
           "AWS_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "y", "AWS_DEFAULT_REGION": "us-east-1"}
    assert manage("setup", env=env, tmp_path=tmp_path).returncode == 0
    env["BACKUP_REMOTE_URL"] = f"s3://{KEY_ID}:{S3_SECRET}@bucket/prefix"
    shown = {}
    for command in ("backup", "backup-health", "backup-list", "notify-check", "status"):
        out = manage(command, env=env, tmp_path=tmp_path)
        shown[command] = out.stdout + out.stderr
    leaks = [c for c, text in shown.items() if S3_SECRET in text or KEY_ID in text]
    assert not leaks, {c: shown[c][-300:] for c in leaks}
    assert REFUSED in shown["backup"] and REFUSED in shown["backup-list"]
    with sqlite3.connect(tmp_path / "cli.db") as conn:
        entries = conn.execute("select action, target, message from audit_log").fetchall()
    assert not [e for e in entries if S3_SECRET in repr(e) or KEY_ID in repr(e)]


# --------------------------------------------------------------------------- age recipients

def _identity() -> str:
    import pyrage

    return str(pyrage.x25519.Identity.generate())


@pytest.mark.parametrize("shape", ['"{}"', "'{}'", "{lower}", " {} "])
def test_an_identity_among_the_recipients_is_refused_unechoed(shape):
    import pyrage

    from guest_backup.archive.encryption import parse_recipients
    from guest_backup.errors import BackupError

    identity = _identity()
    good = str(pyrage.x25519.Identity.generate().to_public())
    with pytest.raises(BackupError) as refused:
        parse_recipients([good, shape.format(identity, lower=identity.lower())])
    message = str(refused.value)
    assert identity[16:22].lower() not in message.lower(), message  # the secret's characters
    assert message.startswith("recipient 2 of BACKUP_AGE_RECIPIENTS is an identity")


@pytest.mark.parametrize("value", ['"age1qqqqsecretpart"', "a-db-password-secretpart",
                                   "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMysecretpart"])
def test_a_value_that_is_no_recipient_is_named_by_its_place_only(value):
    from guest_backup.archive.encryption import parse_recipients
    from guest_backup.errors import BackupError

    with pytest.raises(BackupError) as refused:
        parse_recipients([value])
    message = str(refused.value)
    assert value.strip('"')[4:14] not in message, message  # no part of the value
    assert message.startswith("recipient 1 of BACKUP_AGE_RECIPIENTS is not an age recipient")
    assert ("without quotes" in message) == value.startswith('"')


def test_status_and_backup_never_echo_a_quoted_identity(tmp_path):
    identity = _identity()
    env = {"BACKUP_AGE_RECIPIENTS": f'"{identity}"', "BACKUP_FOLDER": str(tmp_path / "b"),
           "UPLOAD_FOLDER": str(tmp_path / "up")}
    assert manage("setup", env=env, tmp_path=tmp_path).returncode == 0
    outs = {c: manage(c, env=env, tmp_path=tmp_path) for c in ("status", "backup")}
    fragment = identity[15:23].lower()
    leaks = [c for c, out in outs.items() if fragment in (out.stdout + out.stderr).lower()]
    assert not leaks, {c: (outs[c].stdout + outs[c].stderr)[-300:] for c in leaks}
    assert "recipient 1 of BACKUP_AGE_RECIPIENTS is an identity" in outs["backup"].stderr


# --------------------------------------------------------------------------- database URLs

def test_safe_url_masks_passwords_in_the_query():
    from guest_registration.maintenance import safe_url

    shown = safe_url("postgresql://u:pw1@h/db?password=QuerySecret77&sslmode=require"
                     "&passfile=/home/u/.pgpass-x&sslpassword=KeySecret")
    assert "QuerySecret77" not in shown and "KeySecret" not in shown and "pw1" not in shown
    assert ".pgpass-x" not in shown and "sslmode=require" in shown
    assert "password=***" in shown
    assert safe_url("sqlite:////srv/app.db") == "sqlite:////srv/app.db"


def test_an_unreachable_database_masks_a_query_password_in_the_drivers_reason():
    from guest_registration.maintenance import unreachable

    app = types.SimpleNamespace(config={
        "DATABASE_URL": "postgresql://u@127.0.0.1:1/db?password=QuerySecret77"})
    line = unreachable(app, Exception("bad conninfo password=QuerySecret77 here"))
    assert "QuerySecret77" not in line and "password=***" in line


def test_status_masks_a_password_in_the_database_urls_query(tmp_path, pg_server):
    url = create_pg_database(pg_server, "fix_outputs2")
    try:
        env = {"DATABASE_URL": f"{url}?password=QuerySecret77",
               "BACKUP_FOLDER": str(tmp_path / "b"), "UPLOAD_FOLDER": str(tmp_path / "up")}
        assert manage("setup", env=env, tmp_path=tmp_path).returncode == 0
        out = manage("status", env=env, tmp_path=tmp_path)
    finally:
        drop_pg_database(pg_server, url)
    assert "QuerySecret77" not in out.stdout + out.stderr, out.stdout
    assert "password=***" in out.stdout


# --------------------------------------------------------------------------- verify's target

def _damaged_copy(archive: Path, folder: Path) -> Path:
    folder.mkdir()
    copy = folder / archive.name
    shutil.copy(archive, copy)
    data = bytearray(copy.read_bytes())
    data[200:204] = b"XXXX"
    copy.write_bytes(bytes(data))
    return copy


def _verify(app, path: Path, target: str | None):
    from guest_backup.ops.verify import verify
    from guest_backup.wiring import backup_context

    ctx = backup_context(app)
    return verify(path, ctx.engines, ctx.settings.trusted(), audit=ctx.audit,
                  audit_engine=db.engine, actor="cli:test", via="cli",
                  installation=ctx.settings.installation(), target=target)


def test_a_damaged_copy_elsewhere_is_not_the_stored_archives_check(app, runner, tmp_path):
    from guest_backup.ops.retention import failed_checks
    from guest_backup.ops.verify import audit_target

    archive = make_backup(runner)
    copy = _damaged_copy(archive, tmp_path / "usb")
    with app.app_context():
        target = audit_target(str(copy), copy, app.config["BACKUP_FOLDER"])
        assert target == str(copy.resolve())
        assert not _verify(app, copy, target).ok
        assert list(failed_checks(audit, db.engine)) == [target]  # the copy's, by path
    health = json.loads(runner.invoke(args=["backup-health"]).output)
    assert "newest_failed_check" not in [p["id"] for p in health["problem_ids"]]
    assert "not counted" not in runner.invoke(args=["backup-prune", "--dry-run"]).output


def test_the_stored_archive_is_audited_under_its_name(app, runner, tmp_path, monkeypatch):
    """However the operator spells its path (relative, through a link), or by a
    storage URL; and a failed check of it still marks it."""
    from guest_backup.ops.retention import failed_checks
    from guest_backup.ops.verify import audit_target

    archive = make_backup(runner)
    folder = Path(app.config["BACKUP_FOLDER"])
    (tmp_path / "link").symlink_to(folder)
    monkeypatch.chdir(folder.parent)
    for spelled in (archive, Path(folder.name) / archive.name, tmp_path / "link" / archive.name):
        assert audit_target(str(spelled), spelled, folder) == archive.name
    fetched = tmp_path / "gr-fetch-x" / archive.name  # a storage's object, fetched
    assert audit_target(f"s3://bucket/p/{archive.name}", fetched, folder) == archive.name
    data = bytearray(archive.read_bytes())
    data[200:204] = b"XXXX"
    archive.write_bytes(bytes(data))
    with app.app_context():
        assert not _verify(app, archive, audit_target(str(archive), archive, folder)).ok
        assert list(failed_checks(audit, db.engine)) == [archive.name]


def test_cli_verify_of_a_damaged_copy_elsewhere_leaves_the_stored_archive_alone(app, runner,
                                                                               tmp_path):
    from guest_backup.ops.retention import failed_checks

    archive = make_backup(runner)
    copy = _damaged_copy(archive, tmp_path / "usb")
    assert runner.invoke(args=["verify", str(copy)]).exit_code == 1
    with app.app_context():
        assert archive.name not in failed_checks(audit, db.engine)

