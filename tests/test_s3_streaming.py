"""Upload while writing: with BACKUP_KEEP_LOCAL=0 the archive goes to S3 (moto's
server) as it is produced, in multipart parts; nothing archive-sized is written
to the temporary, backup or instance folders; a failure mid-way leaves no object
and no unfinished multipart upload; listing and retention work on remote-only
archives; and its peak memory stays within +50 MiB of a local backup's, measured
in subprocesses on a few hundred thousand guests (PostgreSQL)."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from guest_backup.engines.sqlite import SQLiteEngine
from guest_backup.storages.s3 import S3StorageType
from tests.helpers import create_pg_database, drop_pg_database
from tests.test_remote import BUCKET, PREFIX, entries, s3  # noqa: F401  (the fixture)

MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent
GUESTS = int(os.environ.get("STREAMING_TEST_GUESTS", "300000"))
#: runs manage.py backup as its only child: its peak RSS (KiB) and wall time
MEASURE = """
import resource, subprocess, sys, time
t = time.perf_counter()
done = subprocess.run([sys.executable, "manage.py", "backup"], capture_output=True, text=True)
print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
      time.perf_counter() - t)
print(done.stdout + done.stderr)
"""


@pytest.fixture
def backend() -> str:
    """SQLite: the storage is what is tested here (PostgreSQL: the RSS test)."""
    return "sqlite"


@pytest.fixture
def streaming(app, s3, runner, tmp_path, monkeypatch):  # noqa: F811
    """Remote only, 5 MiB parts, a 12 MiB upload (so three parts), TMPDIR a test folder."""
    app.config.update(BACKUP_REMOTE_URL=f"s3://{BUCKET}/{PREFIX}", BACKUP_S3_PART_MB=5,
                      BACKUP_KEEP_LOCAL=False)
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", None)  # tempfile reads TMPDIR again
    scans = Path(app.config["UPLOAD_FOLDER"]) / "scans"
    scans.mkdir(parents=True, exist_ok=True)
    (scans / "brochure.bin").write_bytes(os.urandom(12 * MiB))
    return app


class Watch(threading.Thread):
    """Polls folders for files that were not there before; the largest size seen."""

    def __init__(self, folders: list[Path], skip: list[Path]) -> None:
        super().__init__(daemon=True)
        self.folders, self.skip = folders, [str(s) for s in skip]
        self.before = set(self._files())
        self.largest, self.scans, self.done = 0, 0, threading.Event()

    def _files(self):
        for folder in self.folders:
            for root, _, names in os.walk(folder):
                if not any(root.startswith(s) for s in self.skip):
                    yield from (os.path.join(root, n) for n in names)

    def run(self) -> None:
        while not self.done.is_set():
            for path in set(self._files()) - self.before:
                try:
                    self.largest = max(self.largest, os.stat(path).st_size)
                except OSError:
                    pass
            self.scans += 1
            self.done.wait(0.005)

    def __enter__(self) -> "Watch":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.join()


class Replaced:
    """An S3 client whose named calls go through ``calls[name](real_call, **kwargs)``
    (a storage that answers, fails or watches differently); every other attribute
    is the real client's."""

    def __init__(self, real, **calls) -> None:
        self._real, self._calls = real, calls

    def __getattr__(self, name):
        call = getattr(self._real, name)
        return functools.partial(self._calls[name], call) if name in self._calls else call


def archives_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*system_backup_*")) if folder.is_dir() else []


def objects(s3) -> list[str]:  # noqa: F811
    return [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]


def test_a_remote_only_backup_writes_nothing_archive_sized(streaming, s3, runner, tmp_path):  # noqa: F811
    folders = [tmp_path / "tmp", Path(streaming.config["BACKUP_FOLDER"]),
               Path(streaming.instance_path)]
    with Watch(folders, skip=[streaming.config["UPLOAD_FOLDER"]]) as watch:
        result = runner.invoke(args=["backup"])
    assert result.exit_code == 0, result.output
    url = result.output.strip().splitlines()[-1]
    name = url.rsplit("/", 1)[1]
    assert url == f"s3://{BUCKET}/{PREFIX}/{name}" and f"copied to s3://{BUCKET}" in result.output
    head = s3.head_object(Bucket=BUCKET, Key=f"{PREFIX}/{name}")
    assert head["ContentLength"] > 12 * MiB and head["ETag"].strip('"').endswith("-3")
    assert watch.scans > 10 and watch.largest < MiB, (watch.largest, watch.scans)
    assert archives_in(Path(streaming.config["BACKUP_FOLDER"])) == []
    assert sorted(objects(s3)) == [f"{PREFIX}/{name}", f"{PREFIX}/{name}.sig"]
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    (upload,) = entries(streaming, "upload")
    assert upload.outcome == "ok" and upload.target == name and upload.bytes == head[
        "ContentLength"]
    verify = runner.invoke(args=["verify", url])  # downloaded and checked
    assert verify.exit_code == 0, verify.output


def test_the_client_is_built_in_a_thread_as_the_upload_begins(s3):  # noqa: F811
    """botocore's import and the S3 model (~0.2 CPU s) take turns on the GIL with
    whatever runs beside them: they start as the upload begins (a backup begins it
    just before its snapshot, whose first moments mostly wait), before any byte is
    written, in a thread of their own, and the client is built once."""
    storage = S3StorageType().open(f"s3://{BUCKET}/{PREFIX}", {})
    real, built = storage._make_client, []

    def make():
        built.append(threading.current_thread().name)
        return real()

    storage._make_client = make
    name = "system_backup_20250101_120000.zip"
    upload = storage.begin_upload(name)
    deadline = time.monotonic() + 30
    while not built and time.monotonic() < deadline:
        time.sleep(0.01)
    assert built == ["s3-client"]
    upload.write(b"x" * 1000)
    upload.finish(None)
    assert built == ["s3-client"]
    assert s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/{name}")["Body"].read() == b"x" * 1000



def test_every_part_carries_a_crc32_that_s3_keeps_as_the_archives_checksum(s3):  # noqa: F811
    """The upload declares CRC32 when it starts: S3 checks each part's CRC32 on
    receipt and keeps their composite for the archive (``CRC32-N``), and completing
    combines the parts' checksums instead of reading the whole object again (moto
    took 0.45 s for 52 MB without, 0.15 s with)."""
    storage = S3StorageType().open(f"s3://{BUCKET}/{PREFIX}", {"BACKUP_S3_PART_MB": 5})
    name = "system_backup_20250101_120000.zip"
    upload = storage.begin_upload(name)
    data = os.urandom(11 * MiB)
    for start in range(0, len(data), 1 << 20):
        upload.write(data[start:start + (1 << 20)])
    upload.finish(None)
    kept = s3.get_object_attributes(Bucket=BUCKET, Key=f"{PREFIX}/{name}",
                                    ObjectAttributes=["Checksum"])["Checksum"]
    assert kept.get("ChecksumType") == "COMPOSITE" and kept.get("ChecksumCRC32"), kept
    assert s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/{name}")["Body"].read() == data


def test_checksums_only_where_required_declare_none(s3, monkeypatch):  # noqa: F811
    """A storage that cannot take checksums is configured with botocore's
    ``when_required``: the upload then declares no algorithm (an explicit one would
    make botocore send a CRC32 with every part all the same) and still completes."""
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
    storage = S3StorageType().open(f"s3://{BUCKET}/{PREFIX}", {"BACKUP_S3_PART_MB": 5})
    sent = []

    def watch(call, **kwargs):
        sent.append({k: v for k, v in kwargs.items() if k != "Body"})
        return call(**kwargs)

    storage.client = Replaced(storage.client, create_multipart_upload=watch, upload_part=watch)
    name = "system_backup_20250101_120000.zip"
    upload = storage.begin_upload(name)
    upload.write(b"w" * (6 * MiB))
    upload.finish(None)
    assert len(sent) == 3 and not any("ChecksumAlgorithm" in k for k in sent), sent
    assert s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/{name}")["Body"].read() == b"w" * (6 * MiB)


def test_a_storage_that_answers_no_part_checksum_still_completes(s3):  # noqa: F811
    """An S3-compatible storage that ignores the declared checksum answers parts
    without one; completing then lists the parts by number and ETag alone."""
    storage = S3StorageType().open(f"s3://{BUCKET}/{PREFIX}", {"BACKUP_S3_PART_MB": 5})
    completed = []

    def no_checksum(call, **kwargs):
        return {"ETag": call(**kwargs)["ETag"]}

    def complete(call, **kwargs):
        completed.append(kwargs["MultipartUpload"]["Parts"])
        return call(**kwargs)

    storage.client = Replaced(storage.client, upload_part=no_checksum,
                              complete_multipart_upload=complete)
    name = "system_backup_20250101_120000.zip"
    upload = storage.begin_upload(name)
    upload.write(b"y" * (6 * MiB))
    upload.finish(None)
    assert s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/{name}")["Body"].read() == b"y" * (6 * MiB)
    assert [sorted(part) for part in completed[0]] == [["ETag", "PartNumber"]] * 2


@pytest.mark.parametrize("versioned,failing", [(False, "complete"), (True, "complete"),
                                               (False, "last part")])
def test_a_completion_that_fails_takes_the_seal_back(s3, versioned, failing):  # noqa: F811
    """The seal is put beside the last parts, before the upload is completed; when
    completing or the last part fails the seal is taken back, so no seal is left
    without its archive, on a bucket without versioning (PutObject answers no
    version id: the seal stayed there before) as on one with it."""
    if versioned:
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    storage = S3StorageType().open(f"s3://{BUCKET}/{PREFIX}", {"BACKUP_S3_PART_MB": 5})

    def complete(call, **kwargs):
        if failing == "complete":
            raise ConnectionError("the storage went away")
        return call(**kwargs)

    def part(call, **kwargs):
        if failing == "last part" and kwargs["PartNumber"] == 2:
            time.sleep(0.2)  # the seal is put meanwhile
            raise ConnectionError("the storage went away")
        return call(**kwargs)

    storage.client = Replaced(storage.client, complete_multipart_upload=complete,
                              upload_part=part)
    name = "system_backup_20250101_120000.zip"
    upload = storage.begin_upload(name)
    upload.write(b"z" * (6 * MiB))
    with pytest.raises(Exception, match="failed"):
        upload.finish(b"seal")
    upload.abort()
    assert objects(s3) == []
    if versioned:
        left = s3.list_object_versions(Bucket=BUCKET)
        assert left.get("Versions", []) == [] and left.get("DeleteMarkers", []) == [], left
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def failing_dump(after: int, then=None):
    """A dump that writes ``after`` bytes of noise, calls ``then``, and fails (or,
    with ``then`` given, writes as much again and the real dump)."""
    real = SQLiteEngine.dump

    def dump(self, settings, conn, write):
        for _ in range(after // MiB):
            write(os.urandom(MiB))
        if then is None:
            raise RuntimeError("the dump broke halfway")
        if then():
            for _ in range(after // MiB):
                write(os.urandom(MiB))
        real(self, settings, conn, write)
    return dump


@pytest.mark.parametrize("keep_local", [False, True])
def test_a_dump_failing_halfway_leaves_no_object_and_no_upload(streaming, s3, runner,  # noqa: F811
                                                               monkeypatch, keep_local):
    streaming.config["BACKUP_KEEP_LOCAL"] = keep_local
    monkeypatch.setattr(SQLiteEngine, "dump", failing_dump(11 * MiB))
    result = runner.invoke(args=["backup"])
    assert result.exit_code == 1 and "RuntimeError" in result.output
    assert objects(s3) == []
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    assert archives_in(Path(streaming.config["BACKUP_FOLDER"])) == []


def test_storage_stopped_mid_upload_fails_and_the_next_run_aborts_the_leftover(
        streaming, s3, runner, monkeypatch):  # noqa: F811
    from moto.server import ThreadedMotoServer

    port = int(os.environ["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])
    calls = []

    def stop() -> bool:
        calls.append(1)
        if len(calls) == 1:
            s3.server.stop()
        return len(calls) == 1

    monkeypatch.setattr(SQLiteEngine, "dump", failing_dump(6 * MiB, then=stop))
    result = runner.invoke(args=["backup"])
    assert result.exit_code == 1
    assert f"the upload to s3://{BUCKET}/{PREFIX} failed" in result.output
    assert "Traceback" not in result.output
    assert archives_in(Path(streaming.config["BACKUP_FOLDER"])) == []
    (upload,) = entries(streaming, "upload")
    assert upload.outcome == "failed"

    s3.server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    s3.server.start()  # the same in-process buckets: the upload could not be aborted
    assert objects(s3) == []
    assert len(s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])) == 1
    again = runner.invoke(args=["backup"])
    assert again.exit_code == 0, again.output
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    assert len(objects(s3)) == 2


def test_an_upload_aborts_what_a_killed_one_left_as_it_starts_and_spares_its_own(
        streaming, s3, runner, monkeypatch):  # noqa: F811
    """Beside its first part, not at its end: a backup that then fails has still
    cleaned up; a key that is not an archive's is not touched."""
    left = s3.create_multipart_upload(
        Bucket=BUCKET, Key=f"{PREFIX}/system_backup_20250101_000000.zip")["UploadId"]
    other = s3.create_multipart_upload(Bucket=BUCKET, Key=f"{PREFIX}/notes.zip")["UploadId"]
    seen = []
    real = S3StorageType.open

    def spy(self, url, config):
        storage = real(self, url, config)
        sparing = storage.abort_leftovers

        def abort_leftovers(spare=None):
            uploads = s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
            seen.append((spare, sorted(u["UploadId"] for u in uploads)))
            sparing(spare)
        storage.abort_leftovers = abort_leftovers
        return storage

    monkeypatch.setattr(S3StorageType, "open", spy)
    monkeypatch.setattr(SQLiteEngine, "dump", failing_dump(11 * MiB))
    result = runner.invoke(args=["backup"])
    assert result.exit_code == 1 and "RuntimeError" in result.output
    ((spare, uploads),) = seen  # once, with this backup's own upload under way
    assert spare is not None and sorted([left, other, spare]) == uploads
    remaining = [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=BUCKET)["Uploads"]]
    assert remaining == [other]  # the leftover aborted; its own aborted as it failed
    assert objects(s3) == []


def test_an_encrypted_archive_streams_and_a_failed_part_names_the_storage(
        streaming, s3, runner, tmp_path, monkeypatch):  # noqa: F811
    from pyrage import x25519

    from guest_backup.wiring import backup_context

    key = x25519.Identity.generate()
    (tmp_path / "key.txt").write_text(f"{key}\n")
    streaming.config["BACKUP_AGE_RECIPIENTS"] = [str(key.to_public())]
    result = runner.invoke(args=["backup"])
    assert result.exit_code == 0, result.output
    url = result.output.strip().splitlines()[-1]
    assert url.endswith(".zip.age")
    verify = runner.invoke(args=["verify", url, "--identity", str(tmp_path / "key.txt")])
    assert verify.exit_code == 0, verify.output

    storage = backup_context(streaming).remote()
    real = storage.client.upload_part

    def failing_second_part(**kwargs):
        if kwargs["PartNumber"] == 2:
            raise ConnectionResetError("the network went away")
        return real(**kwargs)

    monkeypatch.setattr(storage.client, "upload_part", failing_second_part)
    failed = runner.invoke(args=["backup"])
    assert failed.exit_code == 1
    assert f"the upload to s3://{BUCKET}/{PREFIX} failed" in failed.output, failed.output
    assert "age encryption" not in failed.output  # the storage's reason, not its symptom
    assert len(objects(s3)) == 2 and s3.list_multipart_uploads(Bucket=BUCKET).get(
        "Uploads", []) == []


def test_listing_retention_and_health_with_remote_only_archives(streaming, s3, runner):  # noqa: F811
    first = runner.invoke(args=["backup"]).output.strip().splitlines()[-1].rsplit("/", 1)[1]
    second = runner.invoke(args=["backup"]).output.strip().splitlines()[-1].rsplit("/", 1)[1]
    assert first != second  # the remote's names are taken into account
    listing = runner.invoke(args=["backup-list"]).output
    for name in (first, second):
        assert listing.split(name)[1].splitlines()[0].endswith("  remote"), listing
    report = json.loads(runner.invoke(args=["backup-health"]).output)
    ids = [p["id"] for p in report["problem_ids"]]
    assert "no_archive" not in ids and "upload_failed" not in ids, report["problems"]
    streaming.config["BACKUP_KEEP"] = 1
    pruned = runner.invoke(args=["backup-prune"])
    assert pruned.exit_code == 0 and f"{first}  remove" in pruned.output, pruned.output
    assert sorted(objects(s3)) == [f"{PREFIX}/{second}", f"{PREFIX}/{second}.sig"]


def test_a_listing_reads_the_seals_in_parallel_in_order(streaming, s3, runner):  # noqa: F811
    """Listing (retention, backup-list, health) reads every archive's seal, a round
    trip each on S3: several at once, and the same answer as one by one."""
    from guest_backup.ops.listing import recognised
    from guest_backup.ops.seal_verdicts import FILE
    from guest_backup.wiring import backup_context

    made = runner.invoke(args=["backup"]).output.strip().splitlines()[-1].rsplit("/", 1)[1]
    copies = [f"system_backup_2025010{i}_120000.zip" for i in range(1, 7)]
    for name in copies:  # same bytes, other names: seals that do not match, unrecognised
        for suffix in ("", ".sig"):
            s3.copy_object(Bucket=BUCKET, Key=f"{PREFIX}/{name}{suffix}",
                           CopySource={"Bucket": BUCKET, "Key": f"{PREFIX}/{made}{suffix}"})
    with streaming.app_context():
        ctx = backup_context()
        storage = ctx.remote()
        read, running, most = storage.read_sidecar, [0], [0]
        lock = threading.Lock()

        def slow_read(name):
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            time.sleep(0.05)
            try:
                return read(name)
            finally:
                with lock:
                    running[0] -= 1

        storage.read_sidecar = slow_read
        kept = Path(streaming.instance_path) / FILE  # the verdicts of the backup's retention
        kept.unlink()
        good, bad = recognised(ctx, storage)
        assert most[0] == 7  # all seven at once (up to parallel_reads = 8)
        storage.parallel_reads = 1
        most[0] = 0
        kept.unlink()
        assert recognised(ctx, storage) == (good, bad) and most[0] == 1
    assert [a.name for a in good] == [made] and bad == copies


@pytest.fixture
def guests_db(pg_server):
    """A PostgreSQL database of GUESTS guests (benchmarks/generate_data.py)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import generate_data
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    url = create_pg_database(pg_server, "gr_stream")
    generate_data.generate(url, GUESTS, 0, log=lambda message: None)
    yield url
    drop_pg_database(pg_server, url)


def measure(env: dict) -> tuple[int, float, str]:
    """One backup in a subprocess: its peak RSS (KiB), wall time (s), last line."""
    done = subprocess.run([sys.executable, "-c", MEASURE], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    first, _, output = done.stdout.partition("\n")
    code, peak, seconds = first.split()
    assert code == "0", output + done.stderr
    return int(peak), float(seconds), output.strip().splitlines()[-1]


def test_a_streamed_backup_stays_within_50_mib_of_a_local_one(guests_db, s3, tmp_path):  # noqa: F811
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUP_")}
    env.update(INSTANCE_PATH=str(tmp_path / "instance"), DATABASE_URL=guests_db, TMPDIR=str(tmp),
               UPLOAD_FOLDER=str(tmp_path / "uploads"), BACKUP_FOLDER=str(tmp_path / "backups"))
    remote = {**env, "BACKUP_REMOTE_URL": f"s3://{BUCKET}/{PREFIX}", "BACKUP_KEEP_LOCAL": "0"}
    runs: dict[str, list] = {"local": [], "s3": []}
    largest = 0
    for _ in range(2):  # alternated
        runs["local"].append(measure(env))
        with Watch([tmp, tmp_path / "backups", tmp_path / "instance"], skip=[]) as watch:
            runs["s3"].append(measure(remote))
        name = runs["s3"][-1][2].rsplit("/", 1)[1]
        size = s3.head_object(Bucket=BUCKET, Key=f"{PREFIX}/{name}")["ContentLength"]
        assert watch.largest < MiB < size, (watch.largest, size)
        largest = max(largest, watch.largest)
        assert not list((tmp_path / "backups").glob(name + "*"))
    local, streamed = (min(r[0] for r in runs[k]) for k in ("local", "s3"))
    print(f"\n{GUESTS} guests, archive {size / MiB:.1f} MiB: local {local / 1024:.1f} MiB "
          f"{[round(r[1], 2) for r in runs['local']]} s; S3 streamed {streamed / 1024:.1f} MiB "
          f"{[round(r[1], 2) for r in runs['s3']]} s; largest new file during the S3 "
          f"backups {largest} bytes")
    assert streamed - local <= 50 * 1024, (local, streamed)
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
