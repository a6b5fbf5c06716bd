"""A backup folder others can write to (a mounted share as the ``file://``
remote, or the local folder itself) holding planted files where seals and the
erasure ledger's copy belong: a FIFO (whose reader would wait forever), a link to
``/dev/zero`` (endless), an oversized file. Every listing reads every seal, so
each must be refused quickly and in bounded memory, never hang a page or an
erasure (found by the review of 2026-12-05: the backup page hung on a FIFO
seal; an erasure hung on a FIFO ledger; a ``/dev/zero`` seal took 2.5 GiB)."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from guest_backup.archive.format import MAX_SEAL_BYTES, read_seal
from guest_backup.storages import StorageError
from guest_backup.storages.local import LocalStorage
from tests.helpers import csrf_token_from, make_backup
from tests.test_remote import BUCKET, s3  # noqa: F401  (the fixture)

NAME = "system_backup_20250101_000000.zip"


@pytest.fixture
def backend() -> str:
    """SQLite only: the storage is what is tested here."""
    return "sqlite"


def finishes(fn, seconds: float = 10):
    """``fn()``'s result, or AssertionError when it is still running after ``seconds``
    (left behind in a daemon thread: a hung reader cannot be stopped)."""
    done: dict = {}

    def run():
        try:
            done["result"] = fn()
        except BaseException as exc:  # handed to the test
            done["error"] = exc
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s: it hangs"
    if "error" in done:
        raise done["error"]
    return done.get("result")


@pytest.fixture
def share(app, tmp_path) -> Path:
    """The remote: a folder on a share (``file://``)."""
    folder = tmp_path / "share"
    folder.mkdir()
    app.config["BACKUP_REMOTE_URL"] = f"file://{folder}"
    return folder


def test_seals_that_are_no_regular_file_count_as_missing(tmp_path):
    (tmp_path / NAME).write_bytes(b"PK\x05\x06" + b"\0" * 18)
    seal = tmp_path / (NAME + ".sig")
    storage = LocalStorage(tmp_path, "remote")
    os.mkfifo(seal)
    assert finishes(lambda: storage.read_sidecar(NAME)) is None
    seal.unlink()
    os.symlink("/dev/zero", seal)
    assert finishes(lambda: storage.read_sidecar(NAME)) is None
    seal.unlink()
    with open(seal, "wb") as f:
        f.truncate(512 * 1024 * 1024)  # sparse: no disk used
    assert len(finishes(lambda: storage.read_sidecar(NAME))) == MAX_SEAL_BYTES == 64 * 1024
    seal.unlink()
    os.mkfifo(seal)
    with pytest.raises(OSError):
        finishes(lambda: read_seal(seal))


def test_a_fifo_seal_on_the_share_does_not_hang_the_backup_page(app, client, auth, share):
    (share / NAME).write_bytes(b"PK\x05\x06" + b"\0" * 18)
    os.mkfifo(share / (NAME + ".sig"))
    auth.login()
    response = finishes(lambda: client.get("/admin/backup/"))
    assert response.status_code == 200


def test_a_fifo_seal_beside_an_archive_does_not_hang_verify_or_restore(app, runner, tmp_path):
    archive = make_backup(runner)
    copy = tmp_path / "elsewhere" / archive.name
    copy.parent.mkdir()
    shutil.copy(archive, copy)
    os.mkfifo(copy.parent / (archive.name + ".sig"))
    result = finishes(lambda: runner.invoke(args=["verify", str(copy)]))
    assert "Traceback" not in result.output
    result = finishes(lambda: runner.invoke(args=["restore", str(copy), "--database-url",
                                                  f"sqlite:///{tmp_path / 'new.db'}", "--yes"]))
    assert "Traceback" not in result.output


def test_a_planted_ledger_copy_is_refused_quickly(app, client, auth, share):
    ledger = share / "erasure-ledger.jsonl"
    storage = LocalStorage(share, "remote")
    os.mkfifo(ledger)
    with pytest.raises(StorageError, match="not a regular file"):
        finishes(lambda: storage.get_extra("erasure-ledger.jsonl"))
    # the erasure goes on (the copy is reported unreadable) instead of hanging
    auth.login()
    token = csrf_token_from(client.get("/admin/rights/").get_data(as_text=True))
    response = finishes(lambda: client.post("/admin/rights/erase", data={
        "kind": "guest", "q": "1", "csrf_token": token}))
    assert response.status_code == 302
    ledger.unlink()
    with open(ledger, "wb") as f:
        f.truncate(64 * 1024 * 1024 + 1)  # sparse
    with pytest.raises(StorageError, match="larger than 64 MiB: not read"):
        storage.get_extra("erasure-ledger.jsonl")


def test_an_oversized_ledger_object_in_s3_is_not_read_whole(app, s3, monkeypatch):  # noqa: F811
    import guest_backup.storages as storages
    import guest_backup.storages.s3 as s3_storage
    from guest_backup.wiring import backup_context

    monkeypatch.setattr(storages, "MAX_EXTRA_BYTES", 1024)
    monkeypatch.setattr(s3_storage, "MAX_EXTRA_BYTES", 1024)
    app.config["BACKUP_REMOTE_URL"] = f"s3://{BUCKET}/site"
    s3.put_object(Bucket=BUCKET, Key="site/erasure-ledger.jsonl", Body=b"x" * 1025)
    remote = backup_context(app).remote()
    with pytest.raises(StorageError, match="erasure-ledger.jsonl in s3://.* is larger than"):
        remote.get_extra("erasure-ledger.jsonl")
    s3.put_object(Bucket=BUCKET, Key="site/erasure-ledger.jsonl", Body=b"x" * 1024)
    assert remote.get_extra("erasure-ledger.jsonl") == b"x" * 1024



def test_the_drill_tests_the_newest_recognised_archive_not_a_planted_name(app, runner,
                                                                          tmp_path):
    """A planted file named newer than every archive was what the drill fetched and
    restored (and failed on, every time: found by the review of 2026-12-05)."""
    archive = make_backup(runner)
    planted = archive.with_name("system_backup_20991231_235959.zip")
    planted.write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty ZIP, unsigned
    drill = runner.invoke(args=["restore-test"])
    assert drill.exit_code == 0, drill.output
    assert f"OK restore drill of {archive.name}" in drill.output
    planted.write_bytes(b"junk")
    archive.unlink()
    none = runner.invoke(args=["restore-test"])
    assert none.exit_code == 1 and "1 file(s) there are not recognised archives" in none.output


def test_listing_many_planted_seals_keeps_none_of_them(app, share):
    """Every listing reads every seal; it kept all of them until the last was read
    (found by the review of 2026-12-05: 20,000 planted keys with 64 KiB seals in
    a bucket took 1.3 GiB). Now each seal is checked as it is read and dropped."""
    import tracemalloc

    from guest_backup.ops.listing import recognised
    from guest_backup.wiring import backup_context

    junk = b"{" + b" " * (MAX_SEAL_BYTES - 2) + b"}"
    for i in range(200):
        name = f"system_backup_20250101_{i // 60:02d}{i % 60:02d}00.zip"
        (share / name).write_bytes(b"PK\x05\x06" + b"\0" * 18)
        (share / (name + ".sig")).write_bytes(junk)
    with app.app_context():
        ctx = backup_context(app)
        storage = ctx.remote()
        tracemalloc.start()
        try:
            good, bad = recognised(ctx, storage)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert good == [] and len(bad) == 200
    assert peak < 4 * 1024 * 1024, peak  # 200 seals of 64 KiB held at once: 12.5 MiB
