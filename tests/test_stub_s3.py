"""``benchmarks/stub_s3.py``, the in-memory S3 that ``s3_benchmark.py --stub``
measures the backup's own client against (docs/performance.md): it must keep
serving what an upload, a listing, a download and a retention ask, over HTTP and
HTTPS, or its numbers mean nothing. It checks no signature: never a test double
for the storage's behaviour (moto is)."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from guest_backup.storages.s3 import S3StorageType
from tests.live_server import free_port
from tests.pitr_cluster import self_signed

STUB = Path(__file__).resolve().parent.parent / "benchmarks" / "stub_s3.py"
MiB = 1024 * 1024
NAME = "system_backup_20250101_120000.zip"


@pytest.fixture(params=["http", "https"])
def stub(request, tmp_path, monkeypatch):
    import botocore.session

    port = free_port()
    tls = self_signed(tmp_path) if request.param == "https" else None
    server = subprocess.Popen([sys.executable, str(STUB), str(port),
                               *([str(tls[0]), str(tls[1])] if tls else [])],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "no stub"
                time.sleep(0.1)
        env = {"AWS_ENDPOINT_URL": f"{request.param}://127.0.0.1:{port}",
               "AWS_ACCESS_KEY_ID": "stub", "AWS_SECRET_ACCESS_KEY": "stub",
               "AWS_DEFAULT_REGION": "us-east-1", **({"AWS_CA_BUNDLE": str(tls[0])} if tls else {})}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        client = botocore.session.get_session().create_client("s3")
        client.create_bucket(Bucket="stub-bucket")
        yield client
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_the_stub_serves_an_upload_a_listing_a_download_and_a_deletion(stub):
    storage = S3StorageType().open("s3://stub-bucket/site", {"BACKUP_S3_PART_MB": 5})
    data = os.urandom(11 * MiB)
    upload = storage.begin_upload(NAME)
    upload.write(data)
    upload.finish(b"the seal")
    head = stub.head_object(Bucket="stub-bucket", Key=f"site/{NAME}")
    assert head["ETag"].strip('"').endswith("-3") and head["ContentLength"] == len(data)
    [listed] = storage.list()
    assert (listed.name, listed.size) == (NAME, len(data)) and listed.fingerprint
    with storage.open(NAME) as body:
        assert hashlib.sha256(body.read()).digest() == hashlib.sha256(data).digest()
    with storage.open_range(NAME, 5, 14) as part:
        assert part.read() == data[5:15]
    assert storage.read_sidecar(NAME) == b"the seal"
    assert stub.list_multipart_uploads(Bucket="stub-bucket").get("Uploads", []) == []
    storage.delete(NAME)
    assert storage.list() == [] and storage.size_of(NAME) is None


def test_an_aborted_upload_leaves_nothing_on_the_stub(stub):
    storage = S3StorageType().open("s3://stub-bucket/site", {"BACKUP_S3_PART_MB": 5})
    upload = storage.begin_upload(NAME)
    upload.write(os.urandom(6 * MiB))  # one part on its way
    upload.abort()
    assert stub.list_multipart_uploads(Bucket="stub-bucket").get("Uploads", []) == []
    assert storage.list() == []
