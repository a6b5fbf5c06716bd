"""A ZIP whose central directory is huge, planted where archives are (found by the
review of 2026-12-05): zipfile parses a whole directory into objects before
anything counts its entries, so a 128 MiB plain ``.zip`` of 2.9 million entries
in the backup folder took every listing (the Backup page, ``backup-list``,
health, metrics) 20 s and 1.1 GiB, and ``verify`` the same; the front-to-back
reader (an encrypted archive, decrypted as it streams) read any number of entries
and copied its buffer for each one (4 MiB of directory: 2.6 s). Now the end
records alone refuse such a file before zipfile sees it, and the stream reader
stops at MAX_MEMBERS entries."""

from __future__ import annotations

import io
import struct
import time

import pytest

from guest_backup.archive.format import MAX_MEMBERS
from guest_backup.archive.zipcheck import directory_problem
from guest_backup.archive.zipstream import StreamError, ZipStream
from tests.helpers import make_backup

_CENTRAL = struct.Struct("<4sHHHHHHLLLHHHHHLL")
_EOCD = struct.Struct("<4sHHHHLLH")


@pytest.fixture
def backend() -> str:
    return "sqlite"


def directory_only(entries: int, claimed: int | None = None) -> bytes:
    """A ZIP of ``entries`` central directory entries (``uploads/x``) and no data;
    its end record claims ``claimed`` entries (default: as many as it can say)."""
    entry = _CENTRAL.pack(b"PK\x01\x02", 20, 20, 0, 8, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0)
    central = (entry + b"uploads/x") * entries
    count = min(entries, 0xFFFF) if claimed is None else claimed
    return central + _EOCD.pack(b"PK\x05\x06", 0, 0, count, count, len(central), 0, 0)


@pytest.mark.parametrize("claimed", [None, 1])
def test_a_planted_zip_with_a_huge_directory_is_refused_unread(app, runner, tmp_path, claimed):
    make_backup(runner)
    folder = tmp_path / "backups"
    planted = folder / "system_backup_20991231_235959.zip"
    planted.write_bytes(directory_only(300_000, claimed))  # 16.5 MB of directory
    started = time.process_time()  # CPU seconds: steady on a busy machine
    listed = runner.invoke(args=["backup-list"])
    verified = runner.invoke(args=["verify", str(planted)])
    spent = time.process_time() - started
    assert listed.exit_code == 0 and planted.name not in listed.output, listed.output
    assert verified.exit_code == 1
    assert ("members: an archive holds at most" in verified.output
            or "central directory is implausibly large" in verified.output), verified.output
    assert spent < 1.0, spent  # zipfile alone took about 3 s over this directory


def test_the_end_records_are_read_as_zipfile_reads_them(tmp_path):
    small = tmp_path / "small.zip"
    small.write_bytes(directory_only(3))
    assert directory_problem(small) is None
    many = tmp_path / "many.zip"
    many.write_bytes(directory_only(MAX_MEMBERS + 1))
    assert directory_problem(many) == (f"{MAX_MEMBERS + 1} members: an archive holds at most "
                                       f"{MAX_MEMBERS}")
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip at all")
    assert directory_problem(junk) is None  # zipfile says what it is


def test_the_stream_reader_stops_at_max_members_entries():
    data = directory_only(4 * MAX_MEMBERS)
    started = time.process_time()
    with pytest.raises(StreamError, match=f"more than {MAX_MEMBERS} members"):
        for _ in ZipStream(io.BytesIO(data).read).members():
            pass
    assert time.process_time() - started < 1.0
