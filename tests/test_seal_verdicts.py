"""A listing keeps its verdicts on a remote's archives (``seal-verdicts.json``) and
reads a seal again only when the archive or its seal changed, the trusted keys or
the installation changed, or the seal could not be read: against moto's S3 server."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from guest_backup.ops.listing import recognised
from guest_backup.ops.seal_verdicts import FILE
from guest_backup.storages.s3 import S3Storage
from guest_backup.wiring import backup_context
from tests.helpers import make_backup
from tests.test_remote import BUCKET, PREFIX, s3  # noqa: F401 (moto's S3 server, a fixture)


@pytest.fixture
def remote_archives(app, runner, s3):  # noqa: F811
    """Two genuine archives on the S3 remote, made a second apart."""
    app.config.update(BACKUP_REMOTE_URL=f"s3://{BUCKET}/{PREFIX}")
    names = []
    for _ in range(2):
        names.append(make_backup(runner).name)
        time.sleep(1.05)
    return names


@pytest.fixture
def reads(monkeypatch):
    """The names whose seal a listing read from S3 (the real GetObject still runs)."""
    seen: list[str] = []
    real = S3Storage.read_sidecar

    def counted(self, name):
        seen.append(name)
        return real(self, name)
    monkeypatch.setattr(S3Storage, "read_sidecar", counted)
    return seen


def listed(app):
    with app.app_context():
        ctx = backup_context(app)
        good, bad = recognised(ctx, ctx.remote())
    return [(a.name, a.created, a.sha256) for a in good], bad


def kept_file(app) -> Path:
    return Path(app.instance_path) / FILE


def test_a_second_listing_reads_no_seal_and_says_the_same(app, remote_archives, reads):
    kept_file(app).unlink(missing_ok=True)
    first = listed(app)
    assert sorted(reads) == sorted(remote_archives)
    assert [n for n, _, _ in first[0]] == remote_archives[::-1] and first[1] == []
    assert all(len(sha) == 64 for _, _, sha in first[0])
    assert stat.S_IMODE(kept_file(app).stat().st_mode) == 0o600
    reads.clear()
    assert listed(app) == first
    assert reads == []


def test_a_seal_uploaded_again_is_read_again(app, remote_archives, reads, s3):  # noqa: F811
    """The older archive's seal replaced by the newer one's (a valid signature, for
    another name): the kept verdict must not survive the new upload."""
    listed(app)
    older, newer = remote_archives
    body = s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/{newer}.sig")["Body"].read()
    time.sleep(1.05)  # a new modification time, as any real upload has
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{older}.sig", Body=body)
    reads.clear()
    good, bad = listed(app)
    assert reads == [older]
    assert [n for n, _, _ in good] == [newer] and bad == [older]


def test_other_trusted_keys_or_another_installation_judge_again(app, remote_archives, reads):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from guest_backup.archive.signing import public_key_text

    before = listed(app)
    reads.clear()
    app.config["BACKUP_TRUSTED_KEYS"] = [public_key_text(Ed25519PrivateKey.generate().public_key())]
    assert listed(app) == before
    assert sorted(reads) == sorted(remote_archives)
    reads.clear()
    Path(app.config["BACKUP_INSTALLATION_FILE"]).write_text("another-installation\n")
    good, bad = listed(app)
    assert sorted(reads) == sorted(remote_archives)
    assert good == [] and sorted(bad) == sorted(remote_archives)  # bound to the installation


def test_a_seal_that_could_not_be_read_is_not_kept(app, remote_archives, reads, monkeypatch):
    kept_file(app).unlink(missing_ok=True)
    real = S3Storage.read_sidecar
    monkeypatch.setattr(S3Storage, "read_sidecar", lambda self, name: None)  # S3 was down
    good, bad = listed(app)
    assert good == [] and sorted(bad) == sorted(remote_archives)
    monkeypatch.setattr(S3Storage, "read_sidecar", real)
    good, bad = listed(app)
    assert [n for n, _, _ in good] == remote_archives[::-1] and bad == []


def test_a_deleted_archive_is_forgotten_and_a_broken_file_is_rebuilt(app, remote_archives,
                                                                      reads, s3):  # noqa: F811
    listed(app)
    older, newer = remote_archives
    for key in (f"{PREFIX}/{older}", f"{PREFIX}/{older}.sig"):
        s3.delete_object(Bucket=BUCKET, Key=key)
    assert [n for n, _, _ in listed(app)[0]] == [newer]
    kept = json.loads(kept_file(app).read_text())["storages"]
    assert [len(entries) for entries in kept.values()] == [1]
    kept_file(app).write_text("{not json")
    reads.clear()
    assert [n for n, _, _ in listed(app)[0]] == [newer] and reads == [newer]
    assert json.loads(kept_file(app).read_text())["version"] == 1


def test_a_tampered_entry_is_judged_again(app, remote_archives, reads):
    """An entry that is not what the listing writes (a time not in the signed form, a
    SHA-256 that is not one) is no verdict: the seal is read and checked again."""
    first = listed(app)
    data = json.loads(kept_file(app).read_text())
    (entries,) = data["storages"].values()
    for key, (created, sha) in list(entries.items()):
        entries[key] = [created.replace("T", " ").rstrip("Z"), sha]  # not a signed time
        break
    for key in list(entries)[1:]:
        entries[key] = [entries[key][0], "<script>"]
    kept_file(app).write_text(json.dumps(data))
    reads.clear()
    assert listed(app) == first
    assert sorted(reads) == sorted(remote_archives)


def test_planted_keys_are_read_once(app, runner, s3, reads):  # noqa: F811
    """Junk under archive names, with and without a seal: unrecognised each time, but
    their seals are fetched by the first listing only."""
    app.config.update(BACKUP_REMOTE_URL=f"s3://{BUCKET}/{PREFIX}")
    planted = [f"system_backup_2026010{i}_000000.zip" for i in range(1, 6)]
    for i, name in enumerate(planted):
        s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{name}", Body=os.urandom(100))
        if i % 2 == 0:
            s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{name}.sig", Body=b'{"claims": {}}')
    assert listed(app) == ([], sorted(planted))
    assert len(reads) == 5
    reads.clear()
    assert listed(app) == ([], sorted(planted))
    assert reads == []


def test_the_local_folder_keeps_nothing(app, runner):
    make_backup(runner)
    with app.app_context():
        ctx = backup_context(app)
        good, _ = recognised(ctx, ctx.local())
    assert len(good) == 1
    assert not kept_file(app).exists()
