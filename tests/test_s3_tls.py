"""Uploads to S3 over HTTPS, as S3 is reached in production (moto behind TLS with
a self-signed certificate, trusted through boto3's ``AWS_CA_BUNDLE``): the parts
go out without a copy of each made on the way."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
import tracemalloc

import pytest

from guest_backup.storages import StorageError
from guest_backup.storages.s3 import S3StorageType
from guest_backup.storages.s3_upload import PartBody
from tests.live_server import free_port
from tests.pitr_cluster import self_signed

MiB = 1024 * 1024
NAME = "system_backup_20250101_120000.zip"


@pytest.fixture
def s3_https(tmp_path, monkeypatch):
    """A bucket behind TLS, moto in a process of its own (its memory is not this
    process's); boto3 verifies the server against the new certificate."""
    import boto3

    cert, key = self_signed(tmp_path)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                               str(port), "-c", str(cert), "-k", str(key)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for name, value in {"AWS_ENDPOINT_URL": f"https://127.0.0.1:{port}",
                            "AWS_ACCESS_KEY_ID": "tls-access-key",
                            "AWS_SECRET_ACCESS_KEY": "tls-secret",
                            "AWS_DEFAULT_REGION": "us-east-1",
                            "AWS_CA_BUNDLE": str(cert)}.items():
            monkeypatch.setenv(name, value)
        client = boto3.client("s3")
        deadline = time.monotonic() + 30
        while True:
            try:
                client.create_bucket(Bucket="tls-bucket")
                break
            except Exception:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.2)
        yield client
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_parts_go_over_https_without_a_copy_each(s3_https):
    """Three 8 MiB parts: the writer's part and the one on its way are all the part
    memory the upload holds (botocore wraps a ``bytearray`` body in a ``BytesIO``,
    a whole copy, when it adds the trailing checksum it uses over HTTPS)."""
    storage = S3StorageType().open("s3://tls-bucket/site", {"BACKUP_S3_PART_MB": 8})
    storage.client.list_objects_v2(Bucket="tls-bucket")  # the client built before measuring
    data = os.urandom(MiB)
    tracemalloc.start()
    try:
        upload = storage.begin_upload(NAME)
        for _ in range(24):
            upload.write(data)
        upload.finish(None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    body = s3_https.get_object(Bucket="tls-bucket", Key=f"site/{NAME}")
    assert body["ETag"].strip('"').endswith("-3")
    assert hashlib.sha256(body["Body"].read()).digest() == hashlib.sha256(data * 24).digest()
    # two parts of 8 MiB (filling, sending) and the pieces being sent; a copy of the
    # part on its way would be 8 MiB more
    assert peak < 22 * MiB, peak / MiB  # 18.5 measured; 26.5 with the copy


def test_parts_carry_their_crc32_as_a_header_not_an_aws_chunked_trailer(s3_https):
    """Over HTTPS botocore puts a checksum it computes itself after an
    ``aws-chunked`` body (a trailer), which several S3-compatible storages refuse
    and which costs the storage decoding; the upload gives it the CRC32, so each
    part is a plain body with its length and the checksum goes first as a header
    (S3 checks it on receipt; moto does not, so its value is checked here)."""
    import base64
    import zlib

    storage = S3StorageType().open("s3://tls-bucket/site", {"BACKUP_S3_PART_MB": 5})
    sent = []
    storage.client.meta.events.register(
        "before-send.s3.UploadPart",
        lambda request, **_: sent.append((request.url, dict(request.headers))))
    data = os.urandom(11 * MiB)
    upload = storage.begin_upload(NAME)
    upload.write(data)
    upload.finish(None)
    assert len(sent) == 3
    parts = [data[:5 * MiB], data[5 * MiB:10 * MiB], data[10 * MiB:]]
    sent.sort(key=lambda item: int(re.search(r"partNumber=(\d+)", item[0]).group(1)))
    for (_, headers), part in zip(sent, parts):
        headers = {k.lower(): v.decode() if isinstance(v, bytes) else v
                   for k, v in headers.items()}
        assert "aws-chunked" not in headers.get("content-encoding", ""), headers
        assert "x-amz-trailer" not in headers, headers
        assert headers["x-amz-checksum-crc32"] == base64.b64encode(
            zlib.crc32(part).to_bytes(4, "big")).decode()
        assert int(headers["content-length"]) == len(part)
    body = s3_https.get_object(Bucket="tls-bucket", Key=f"site/{NAME}")["Body"].read()
    assert body == data


def test_a_part_body_reads_and_seeks_like_a_file():
    body = PartBody(bytearray(b"0123456789"))
    assert len(body) == 10 and body.read(4) == b"0123" and body.tell() == 4
    assert body.read() == b"456789" and body.read(3) == b""
    assert body.seek(-3, os.SEEK_END) == 7 and body.read(10) == b"789"
    assert body.seek(2) == 2 and body.seek(3, os.SEEK_CUR) == 5 and body.read(1) == b"5"


@pytest.mark.parametrize("part_mb", [0, 4, "0"])
def test_a_part_size_under_5_mib_is_refused_zero_too(part_mb):
    """0 was taken for "not set" and became 16 MiB parts."""
    with pytest.raises(StorageError, match="at least 5"):
        S3StorageType().open("s3://bucket/site", {"BACKUP_S3_PART_MB": part_mb})


def test_the_part_size_defaults_to_the_documented_8_mib():
    assert S3StorageType().open("s3://bucket/site", {}).part_size == 8 * MiB


def test_the_s3_client_comes_without_boto3s_transfer_manager():
    """botocore's client: boto3 and s3transfer (0.085 CPU s, 3 MiB) are never imported."""
    code = ("import sys; from guest_backup.storages.s3 import S3StorageType; "
            "s = S3StorageType().open('s3://bucket/site', {}); s.client; "
            "print(sorted(m for m in ('boto3', 's3transfer', 'botocore') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "AWS_DEFAULT_REGION": "us-east-1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "['botocore']"


def test_the_client_acks_at_once_so_a_nagle_server_does_not_stall_each_answer(s3_https):
    """moto, like any Werkzeug server, leaves Nagle's algorithm on: an answer's second
    write waits for the ACK of its first, which Linux delays (40 ms) on a connection
    that looks interactive. A small PutObject took 48 ms every time; with the ACKs
    sent at once, 4.5 ms. The 40 ms are the delayed-ACK timer's floor, not load."""
    from guest_backup.storages.s3_acks import QUICKACK

    if QUICKACK is None:  # pragma: no cover - Linux has it, and the tests run there
        pytest.fail("this system has no TCP_QUICKACK")
    storage = S3StorageType().open("s3://tls-bucket/site", {})
    storage.put_extra("erasure-ledger.jsonl", b"{}")  # the client built, the bucket warm
    times = []
    for _ in range(9):
        started = time.perf_counter()
        storage.put_extra("erasure-ledger.jsonl", b"{}")
        times.append(time.perf_counter() - started)
    assert sorted(times)[4] < 0.030, times  # 40 ms and more when each answer stalls
    assert storage.get_extra("erasure-ledger.jsonl") == b"{}"


def test_prompt_acks_change_only_this_client_and_leave_it_alone_without_the_option(
        monkeypatch):
    """Other botocore clients in the process keep botocore's own connections; a system
    without TCP_QUICKACK (or a botocore laid out otherwise) keeps its client as it was."""
    import botocore.session
    from botocore.awsrequest import AWSHTTPSConnectionPool

    from guest_backup.storages import s3_acks

    def pools(client):
        return client._endpoint.http_session._manager.pool_classes_by_scheme

    session = botocore.session.get_session()
    ours = session.create_client("s3", region_name="us-east-1")
    other = session.create_client("s3", region_name="us-east-1")
    assert s3_acks.prompt_acks(ours) is True
    assert issubclass(pools(ours)["https"].ConnectionCls, s3_acks._PromptAcks)
    assert pools(other)["https"] is AWSHTTPSConnectionPool
    assert s3_acks.prompt_acks(object()) is False
    monkeypatch.setattr(s3_acks, "QUICKACK", None)
    assert s3_acks.prompt_acks(other) is False
    assert pools(other)["https"] is AWSHTTPSConnectionPool


def test_single_puts_carry_their_crc32_as_a_header_not_an_aws_chunked_trailer(s3_https):
    """The seal, an archive smaller than one part and the ledger's copy are single
    PutObjects: left to botocore, over HTTPS their checksum followed an
    ``aws-chunked`` body as a trailer, without a Content-Length (a storage that
    refuses trailers took the parts and then refused the seal)."""
    import base64
    import zlib

    storage = S3StorageType().open("s3://tls-bucket/site", {})
    sent = []
    storage.client.meta.events.register(
        "before-send.s3.PutObject",
        lambda request, **_: sent.append((request.url, dict(request.headers))))
    small = os.urandom(1000)
    upload = storage.begin_upload(NAME)
    upload.write(small)
    upload.finish(b"the seal")
    storage.put_extra("erasure-ledger.jsonl", b"{}\n")
    bodies = {f"site/{NAME}": small, f"site/{NAME}.sig": b"the seal",
              "site/erasure-ledger.jsonl": b"{}\n"}
    assert sorted(url.rsplit("tls-bucket/", 1)[1] for url, _ in sent) == sorted(bodies)
    for url, headers in sent:
        headers = {k.lower(): v.decode() if isinstance(v, bytes) else v
                   for k, v in headers.items()}
        body = bodies[url.rsplit("tls-bucket/", 1)[1]]
        assert "aws-chunked" not in headers.get("content-encoding", ""), headers
        assert "x-amz-trailer" not in headers, headers
        assert int(headers["content-length"]) == len(body)
        assert headers["x-amz-checksum-crc32"] == base64.b64encode(
            zlib.crc32(body).to_bytes(4, "big")).decode()
    assert storage.read_sidecar(NAME) == b"the seal"
    assert storage.get_extra("erasure-ledger.jsonl") == b"{}\n"
