"""Immutable off-site copies: S3 Object Lock on every uploaded archive and seal,
retention that never tries to delete a locked archive (nor leaves a delete
marker on a versioned bucket), and health when the bucket has no Object Lock.
Against moto's S3 server (tests/test_remote.py's ``s3`` fixture)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from guest_registration.extensions import db
from guest_registration.models import AuditEntry
from guest_backup.storages import StorageError
from guest_backup.storages.s3 import object_lock
from tests.helpers import make_backup
from tests.test_remote import BUCKET, s3  # noqa: F401  (the fixture)

LOCKED = "locked-backups"


@pytest.fixture
def backend() -> str:
    """SQLite only: the storage is what is tested here."""
    return "sqlite"


@pytest.fixture
def locked(app, s3, runner):  # noqa: F811
    """The app uploading to a bucket with Object Lock, 3 days GOVERNANCE."""
    s3.create_bucket(Bucket=LOCKED, ObjectLockEnabledForBucket=True)
    app.config.update(BACKUP_REMOTE_URL=f"s3://{LOCKED}/site", BACKUP_S3_PART_MB=5,
                      BACKUP_S3_OBJECT_LOCK_DAYS=3, BACKUP_S3_OBJECT_LOCK_MODE="governance")
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    return app


def versions(s3, bucket: str = LOCKED) -> tuple[list[dict], list[dict]]:  # noqa: F811
    answer = s3.list_object_versions(Bucket=bucket)
    return answer.get("Versions", []), answer.get("DeleteMarkers", [])


def test_the_settings_are_checked_with_a_clear_error():
    assert object_lock({}) == (0, "GOVERNANCE")
    assert object_lock({"BACKUP_S3_OBJECT_LOCK_DAYS": "30",
                        "BACKUP_S3_OBJECT_LOCK_MODE": " compliance "}) == (30, "COMPLIANCE")
    with pytest.raises(StorageError, match="must be GOVERNANCE or COMPLIANCE, not 'FOREVER'"):
        object_lock({"BACKUP_S3_OBJECT_LOCK_DAYS": 1, "BACKUP_S3_OBJECT_LOCK_MODE": "forever"})
    for bad in ("-1", "ten", "99999"):
        with pytest.raises(StorageError, match="BACKUP_S3_OBJECT_LOCK_DAYS must be a whole"):
            object_lock({"BACKUP_S3_OBJECT_LOCK_DAYS": bad})


def test_a_bad_mode_fails_the_upload_and_keeps_the_local_archive(locked, runner):
    locked.config["BACKUP_S3_OBJECT_LOCK_MODE"] = "FOREVER"
    result = runner.invoke(args=["backup"])
    assert result.exit_code == 1
    assert "BACKUP_S3_OBJECT_LOCK_MODE must be GOVERNANCE or COMPLIANCE" in result.output
    assert "kept locally" in result.output and "Traceback" not in result.output


def test_uploads_lock_the_archive_and_its_seal(locked, s3, runner):  # noqa: F811
    archive = make_backup(runner)
    soon = datetime.now(timezone.utc) + timedelta(days=3)
    for key in (f"site/{archive.name}", f"site/{archive.name}.sig"):
        head = s3.head_object(Bucket=LOCKED, Key=key)
        assert head["ObjectLockMode"] == "GOVERNANCE", key
        assert abs(head["ObjectLockRetainUntilDate"] - soon) < timedelta(minutes=5), key
    body = s3.get_object(Bucket=LOCKED, Key=f"site/{archive.name}")["Body"].read()
    assert body == archive.read_bytes()
    assert s3.list_multipart_uploads(Bucket=LOCKED).get("Uploads", []) == []


def test_retention_keeps_locked_archives_and_says_why(locked, s3, runner):  # noqa: F811
    first = make_backup(runner)
    second = make_backup(runner)
    assert first.name != second.name
    (version,) = [v for v in versions(s3)[0] if v["Key"] == f"site/{first.name}"]
    with pytest.raises(Exception) as refused:  # a direct delete of a locked version fails
        s3.delete_object(Bucket=LOCKED, Key=version["Key"], VersionId=version["VersionId"])
    assert refused.value.response["Error"]["Code"] == "AccessDenied"

    locked.config["BACKUP_KEEP"] = 1
    before = versions(s3)[0]
    pruned = runner.invoke(args=["backup-prune"])
    assert pruned.exit_code == 0, pruned.output
    remote_part = pruned.output.split("remote:")[1]
    assert f"{first.name}  keep (Object Lock (GOVERNANCE) until " in remote_part
    assert "kept until it expires" in remote_part and "removed 0 of 2" in remote_part
    assert not first.exists() and second.exists()  # the local copy is not locked
    after, markers = versions(s3)
    assert markers == [] and len(after) == len(before) == 4  # 2 archives + 2 seals
    with locked.app_context():
        messages = [e.message for e in db.session.query(AuditEntry).filter_by(action="prune")]
    assert any(m.startswith("remote: removed 0 of 2; kept 1 locked: " + first.name)
               for m in messages), messages

    from guest_backup.wiring import backup_context

    with pytest.raises(StorageError, match="cannot be deleted .*Object Lock"):
        backup_context(locked).remote().delete(first.name)
    assert versions(s3) == (after, [])


def test_unlocked_archives_on_a_versioned_bucket_go_without_a_delete_marker(
        locked, s3, runner):  # noqa: F811
    locked.config["BACKUP_S3_OBJECT_LOCK_DAYS"] = 0  # the bucket is versioned, no retention
    first = make_backup(runner)
    second = make_backup(runner)
    locked.config["BACKUP_KEEP"] = 1
    result = runner.invoke(args=["backup-prune"])
    assert result.exit_code == 0, result.output
    left, markers = versions(s3)
    assert markers == []
    assert sorted(v["Key"] for v in left) == [f"site/{second.name}", f"site/{second.name}.sig"]
    assert not first.exists()


def test_health_reports_a_bucket_without_object_lock(locked, s3, runner):  # noqa: F811
    make_backup(runner)
    ids = lambda report: [p["id"] for p in report["problem_ids"]]  # noqa: E731
    report = json.loads(runner.invoke(args=["backup-health"]).output)
    assert "object_lock_missing" not in ids(report)

    locked.config["BACKUP_REMOTE_URL"] = f"s3://{BUCKET}/site"  # a bucket without the lock
    upload = runner.invoke(args=["backup"])  # its lock cannot be set: the upload fails
    assert upload.exit_code == 1 and "locking" in upload.output and "kept locally" in upload.output
    result = runner.invoke(args=["backup-health"])
    report = json.loads(result.output)
    assert result.exit_code == 1 and "object_lock_missing" in ids(report)
    text = [p for p in report["problems"] if "Object Lock" in p][0]
    assert text == (f"s3://{BUCKET}/site: BACKUP_S3_OBJECT_LOCK_DAYS is 3, but the bucket "
                    f"{BUCKET} has no Object Lock: its archives can be deleted by anyone "
                    f"holding the storage's keys")


def test_retention_reads_a_deleted_archives_versions_once(locked, s3, runner):  # noqa: F811
    """Pruning one archive: its versions and its seal's listed once (the delete
    looks at the hold itself; before, prune asked held() and delete asked again,
    then listed the versions a third time: 6 listings and 4 HEADs)."""
    from guest_backup.ops.retention import Policy, prune_storage
    from guest_backup.wiring import backup_context

    locked.config["BACKUP_S3_OBJECT_LOCK_DAYS"] = 0  # versioned bucket, nothing locked
    first = make_backup(runner)
    second = make_backup(runner)
    ctx = backup_context(locked)
    storage = ctx.remote()
    calls: list[str] = []
    storage.client.meta.events.register(
        "before-call.s3", lambda model, **_: calls.append(model.name))
    decisions = prune_storage(ctx, storage, Policy(last=1))
    assert [(d.name, d.keep) for d in decisions] == [(second.name, True), (first.name, False)]
    assert calls.count("ListObjectVersions") == 2, calls  # the archive's and the seal's
    assert calls.count("HeadObject") == 2, calls  # one version each, its lock read once
    assert calls.count("DeleteObject") == 2, calls
    left, markers = versions(s3)
    assert markers == [] and {v["Key"] for v in left} == {
        f"site/{second.name}", f"site/{second.name}.sig"}


class _Refusing:
    """A plugin storage whose delete refuses held archives with a plain StorageError."""

    name, url, parallel_reads = "remote", "plugin://x", 1

    def __init__(self, holds: dict[str, str]) -> None:
        self.holds, self.deleted, self.asked = holds, [], []

    def held(self, name: str) -> str | None:
        self.asked.append(name)
        return self.holds.get(name)

    def delete(self, name: str) -> None:
        if name in self.holds or name == "broken":
            raise StorageError(f"{name} cannot be deleted")
        self.deleted.append(name)


def test_retention_still_understands_a_plugin_storage_that_refuses_plainly(
        app, monkeypatch):
    """ArchiveHeld is how a storage says "held"; a plugin storage raising a plain
    StorageError is asked held() afterwards, and a refusal held() cannot explain
    fails the prune (nothing is reported as kept on a guess)."""
    from types import SimpleNamespace

    import guest_backup.ops.listing as listing
    from guest_backup.ops.retention import Policy, prune_storage

    when = datetime(2026, 1, 1, tzinfo=timezone.utc)
    names = ["new", "locked", "old"]
    monkeypatch.setattr(listing, "recognised", lambda ctx, storage, future=None: (
        [SimpleNamespace(name=n, created=when - timedelta(days=i)) for i, n in enumerate(names)],
        []))
    storage = _Refusing({"locked": "a hold"})
    decisions = prune_storage(None, storage, Policy(last=1))
    assert [(d.name, d.keep, d.held) for d in decisions] == [
        ("new", True, None), ("locked", True, "a hold"), ("old", False, None)]
    assert storage.deleted == ["old"] and storage.asked == ["locked"]

    names[2] = "broken"
    with pytest.raises(StorageError, match="broken cannot be deleted"):
        prune_storage(None, _Refusing({}), Policy(last=1))
