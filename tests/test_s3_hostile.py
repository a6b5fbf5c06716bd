"""A hostile or failing S3 (and backup folder): planted seals that are JSON but
not an object, connections that close without an answer, a completion whose
answer is lost after the storage carried it out, a seal that cannot be read.
Against moto's S3 server (tests/test_remote.py's ``s3`` fixture) and real sockets."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError
from botocore.exceptions import ResponseStreamingError

from guest_backup.archive.seal import recognise, sealed_sha256, sealed_size
from guest_backup.archive.signing import TrustedKeys
from guest_backup.storages import StorageError, StorageUnreachable
from guest_backup.storages.s3 import S3Storage, S3StorageType
from guest_backup.storages.s3_errors import error_code, error_reason
from tests.helpers import make_backup
from tests.test_remote import BUCKET, PREFIX, SECRET, s3  # noqa: F401  (the fixture)
from tests.test_s3_streaming import Replaced, objects

NAME = "system_backup_20250101_000000.zip"
MiB = 1024 * 1024
LOCKED = "locked-backups"
NOT_AN_OBJECT = [b"[1]", b'"x"', b"[" * 60000 + b"]" * 60000]


@pytest.fixture
def backend() -> str:
    """SQLite only: the storage is what is tested here."""
    return "sqlite"


@pytest.fixture
def light(app, s3, runner):  # noqa: F811
    """The app with the S3 remote and demo data (no 12 MiB upload: small archives)."""
    app.config.update(BACKUP_REMOTE_URL=f"s3://{BUCKET}/{PREFIX}", BACKUP_S3_PART_MB=5)
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    return app


def remote_of(app):
    from guest_backup.wiring import backup_context

    return backup_context(app).remote()


@pytest.mark.parametrize("seal", NOT_AN_OBJECT, ids=["list", "string", "nested"])
def test_a_seal_that_is_json_but_not_an_object_is_not_recognised(seal):
    trusted = TrustedKeys([])
    assert recognise(NAME, 7, seal, trusted, "x") is None
    assert sealed_size(seal) is None and sealed_sha256(seal) is None


@pytest.mark.parametrize("seal", NOT_AN_OBJECT, ids=["list", "string", "nested"])
def test_planted_non_object_seals_on_s3_are_listed_as_unrecognised(light, s3, runner,  # noqa: F811
                                                                   seal):
    archive = make_backup(runner)
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{NAME}", Body=b"PK junk")
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{NAME}.sig", Body=seal[:65536])
    listing = runner.invoke(args=["backup-list"])
    assert listing.exit_code == 0, repr(listing.exception)
    assert archive.name in listing.output and "1 file(s) named like archives" in listing.output
    health = runner.invoke(args=["backup-health"])
    report = json.loads(health.output)
    assert health.exit_code == 1 and any(NAME in p for p in report["problems"]), report
    prune = runner.invoke(args=["backup-prune", "--dry-run"])
    assert prune.exit_code == 0 and "unrecognised: never deleted" in prune.output, prune.output
    assert runner.invoke(args=["backup"]).exit_code == 0
    verify = runner.invoke(args=["verify", f"s3://{BUCKET}/{PREFIX}/{NAME}"])
    assert verify.exit_code == 1 and "did not verify" in verify.output, repr(verify.exception)


def test_a_planted_non_object_seal_in_the_backup_folder(app, runner):
    make_backup(runner)
    folder = Path(app.config["BACKUP_FOLDER"])
    (folder / NAME).write_bytes(b"PK junk")
    (folder / f"{NAME}.sig").write_bytes(b"[1]")
    for args in (["backup-list"], ["backup-prune"]):
        result = runner.invoke(args=args)
        assert result.exit_code == 0, (args, repr(result.exception))
    health = runner.invoke(args=["backup-health"])
    assert health.exit_code == 1 and any(NAME in p for p in json.loads(health.output)["problems"])
    assert (folder / NAME).exists()  # never deleted by retention


@pytest.mark.parametrize("exc", [
    ConnectionClosedError(endpoint_url="http://127.0.0.1:9/b"),
    ReadTimeoutError(endpoint_url="http://127.0.0.1:9/b"),
    ResponseStreamingError(error="reset")], ids=lambda e: type(e).__name__)
def test_connection_errors_without_an_answer_have_a_reason(exc):
    assert exc.response is None and error_code(exc) is None
    assert error_reason(exc) in ("it could not be reached",
                                 "the connection to it broke off (ResponseStreamingError)")
    answered = ClientError({"Error": {"Code": "SlowDown"}}, "GetObject")
    assert error_reason(answered) == "the storage answered SlowDown"


class Closer:
    """A TCP server that reads a request and closes the connection without an
    answer (a crashing proxy): botocore raises ConnectionClosedError."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(50)
        threading.Thread(target=self.run, daemon=True).start()

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                conn.settimeout(2)
                conn.recv(65536)
            except OSError:
                pass
            conn.close()


def test_an_endpoint_that_closes_connections_is_unreachable(light, s3, runner, client,  # noqa: F811
                                                            auth):
    archive = make_backup(runner)
    port = s3.server._port
    s3.server.stop()
    closer = Closer(port)
    try:
        health = runner.invoke(args=["backup-health"])
        assert health.exit_code == 2, repr(health.exception)
        assert json.loads(health.output)["status"] == "unreachable"
        listing = runner.invoke(args=["backup-list"])
        assert listing.exit_code == 0 and "it could not be reached" in listing.output
        verify = runner.invoke(args=["verify", f"s3://{BUCKET}/{PREFIX}/{archive.name}"])
        assert verify.exit_code == 1 and "could not be reached" in verify.output, repr(
            verify.exception)
        auth.login()
        assert client.get("/admin/backup/").status_code == 200
        backup = runner.invoke(args=["backup"])
        assert backup.exit_code == 1 and "failed: it could not be reached" in backup.output
        assert "AttributeError" not in backup.output + verify.output and SECRET not in backup.output
    finally:
        closer.sock.close()


def lost_answer(call, **kwargs):
    """The storage carries the request out, and its answer is lost."""
    call(**kwargs)
    raise ReadTimeoutError(endpoint_url="http://127.0.0.1/x")


def internal_error(call, **kwargs):
    """The storage carries the request out and answers InternalError."""
    call(**kwargs)
    raise ClientError({"Error": {"Code": "InternalError", "Message": "x"}}, "Complete")


def put_archive_lost(call, **kwargs):
    return (lost_answer if kwargs["Key"].endswith(".zip") else lambda c, **k: c(**k))(
        call, **kwargs)


@pytest.mark.parametrize("versioned", [False, True])
@pytest.mark.parametrize("size,calls", [
    (6 * MiB, {"complete_multipart_upload": lost_answer}),
    (6 * MiB, {"complete_multipart_upload": internal_error}),
    (MiB, {"put_object": put_archive_lost})], ids=["lost", "internal", "single-put"])
def test_a_completion_whose_answer_is_lost_leaves_nothing(s3, caplog, versioned, size,  # noqa: F811
                                                         calls):
    """The storage completed the upload but answered an error: the archive is
    deleted (every version of it), then its seal, and no abort is tried."""
    if versioned:
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    storage = S3StorageType().open(f"s3://{BUCKET}/{PREFIX}", {"BACKUP_S3_PART_MB": 5})
    storage.client = Replaced(storage.client, **calls)
    upload = storage.begin_upload(NAME)
    upload.write(os.urandom(size))
    with pytest.raises(StorageError, match="failed") as failed:
        upload.finish(b"seal")
    upload.abort()
    assert "stays" not in str(failed.value)
    assert objects(s3) == []
    left = s3.list_object_versions(Bucket=BUCKET)
    assert left.get("Versions", []) == [] and left.get("DeleteMarkers", []) == [], left
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    assert "could not abort" not in caplog.text


def test_another_object_under_the_name_is_not_taken_for_the_upload(s3):  # noqa: F811
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{NAME}", Body=b"already there")
    storage = S3StorageType().open(f"s3://{BUCKET}/{PREFIX}", {"BACKUP_S3_PART_MB": 5})

    def refused(call, **kwargs):
        raise ClientError({"Error": {"Code": "InternalError", "Message": "x"}}, "Complete")

    storage.client = Replaced(storage.client, complete_multipart_upload=refused)
    upload = storage.begin_upload(NAME)
    upload.write(os.urandom(6 * MiB))
    with pytest.raises(StorageError, match="may be this upload's: it stays"):
        upload.finish(b"seal")
    upload.abort()
    body = s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/{NAME}")["Body"].read()
    assert body == b"already there"


def test_a_completed_archive_that_cannot_be_deleted_keeps_its_seal(app, s3, runner):  # noqa: F811
    """Completed all the same, and then held (a legal hold): it stays with its
    seal, so it is recognised (and retention deletes it once it may)."""
    s3.create_bucket(Bucket=LOCKED, ObjectLockEnabledForBucket=True)
    app.config.update(BACKUP_REMOTE_URL=f"s3://{LOCKED}/site", BACKUP_S3_PART_MB=5)
    uploads = Path(app.config["UPLOAD_FOLDER"]) / "scans"
    uploads.mkdir(parents=True, exist_ok=True)
    (uploads / "noise.bin").write_bytes(os.urandom(6 * MiB))
    storage = remote_of(app)

    def held(call, **kwargs):
        version = call(**kwargs)["VersionId"]
        s3.put_object_legal_hold(Bucket=LOCKED, Key=kwargs["Key"], VersionId=version,
                                 LegalHold={"Status": "ON"})
        raise ClientError({"Error": {"Code": "InternalError", "Message": "x"}}, "Complete")

    storage.client = Replaced(storage.client, complete_multipart_upload=held)
    result = runner.invoke(args=["backup"])
    assert result.exit_code == 1 and "could not be deleted (access denied" in result.output
    name = Path(result.output.strip().splitlines()[-1].rsplit(" ", 1)[-1]).name
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=LOCKED).get("Contents", [])]
    assert f"site/{name}" in keys and f"site/{name}.sig" in keys, (name, keys)
    Path(app.config["BACKUP_FOLDER"], name).unlink()
    listing = runner.invoke(args=["backup-list"]).output
    assert name in listing and "not recognised" not in listing, listing


def test_a_seal_that_cannot_be_read_is_a_storage_problem(light, s3, runner,  # noqa: F811
                                                        monkeypatch):
    """Not a missing seal (the archive was "unrecognised", the remote held "no
    archive yet"): StorageUnreachable; a verify says so."""
    archive = make_backup(runner)
    storage = remote_of(light)
    assert storage.read_sidecar(archive.name).startswith(b"{")
    assert storage.read_sidecar("system_backup_20200101_000000.zip") is None  # no seal
    for exc in (ClientError({"Error": {"Code": "SlowDown"}}, "GetObject"),
                ClientError({"Error": {"Code": "AccessDenied"}}, "GetObject"),
                ReadTimeoutError(endpoint_url="http://127.0.0.1/x")):
        def failing(call, **kwargs):
            if kwargs["Key"].endswith(".sig"):
                raise exc
            return call(**kwargs)

        with monkeypatch.context() as patched:
            real = S3Storage.client
            patched.setattr(S3Storage, "client", property(
                lambda self: Replaced(real.fget(self), get_object=failing)))
            with pytest.raises(StorageUnreachable, match=f"reading the seal of {archive.name}"):
                storage.read_sidecar(archive.name)
            verify = runner.invoke(args=["verify", f"s3://{BUCKET}/{PREFIX}/{archive.name}"])
            for kept in Path(light.instance_path).glob("seal-verdicts.json"):
                kept.unlink()  # the listing reads the seal again
            health = runner.invoke(args=["backup-health"])
        assert verify.exit_code == 1 and "reading the seal of" in verify.output, verify.output
        # the storage failed: health says so (exit 2), not "1 unrecognised file"
        assert health.exit_code == 2 and "reading the seal of" in health.output, health.output
        assert "unrecognised" not in health.output
