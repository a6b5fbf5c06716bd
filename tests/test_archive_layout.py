"""Bytes a ZIP's central directory does not list: local entries hidden before the
first member or between two, which ``verify`` (going by the directory) would not
see but a restore reading front to back would meet. Someone who can write to the
backup folder needs no key for this: take a plain archive, drop its seal (so the
restore verifies it whole first), insert entries. Found by the review of
2026-12-05: ``verify`` said OK, the restore handed the hidden dump to psql and
staged hidden uploads (up to 64 MiB each) before its verdict refused them."""

from __future__ import annotations

import struct
import zipfile
import zlib
from pathlib import Path

import pytest

from guest_backup.archive.format import sidecar_path
from guest_backup.ops import staging
from tests.helpers import make_backup

_CENTRAL = struct.Struct("<4sHHHHHHLLLHHHHHLL")
_EOCD = struct.Struct("<4sHHHHLLH")


@pytest.fixture
def backend() -> str:
    return "sqlite"


def hidden_entry(name: str, data: bytes) -> bytes:
    """A local header and deflated data, as a ZIP writer would put them."""
    packed = zlib.compressobj(9, zlib.DEFLATED, -15)
    packed = packed.compress(data) + packed.flush()
    return struct.pack("<4sHHHHHLLLHH", b"PK\x03\x04", 20, 0, 8, 0, 0x21, zlib.crc32(data),
                       len(packed), len(data), len(name), 0) + name.encode() + packed


def insert(archive: Path, before: int, hidden: bytes, swallow: bool = False) -> None:
    """Put ``hidden`` before member number ``before`` and shift the central
    directory's offsets past it; with ``swallow`` the member in front claims the
    hidden bytes as part of its compressed data (the directory stays "contiguous")."""
    data = archive.read_bytes()
    with zipfile.ZipFile(archive) as zf:
        infos = sorted(zf.infolist(), key=lambda i: i.header_offset)
        start_dir = zf.start_dir
    at = infos[before].header_offset
    eocd_at = data.rindex(b"PK\x05\x06")
    central = bytearray(data[start_dir:eocd_at])
    pos = 0
    while pos < len(central):
        fields = list(_CENTRAL.unpack_from(central, pos))
        assert fields[0] == b"PK\x01\x02" and fields[16] != 0xFFFFFFFF
        if fields[16] >= at:
            fields[16] += len(hidden)
        elif swallow and fields[16] == infos[before - 1].header_offset:
            fields[8] += len(hidden)
        _CENTRAL.pack_into(central, pos, *fields)
        pos += _CENTRAL.size + fields[10] + fields[11] + fields[12]
    eocd = list(_EOCD.unpack_from(data, eocd_at))
    eocd[6] += len(hidden)  # where the central directory starts
    archive.write_bytes(data[:at] + hidden + data[at:start_dir] + bytes(central)
                        + _EOCD.pack(*eocd) + data[eocd_at + _EOCD.size:])


@pytest.fixture
def archive(app, runner) -> Path:
    """A plain archive without its seal (the folder writer removed it)."""
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    path = make_backup(runner)
    sidecar_path(path).unlink()
    return path


def restore_staging_nothing(runner, archive: Path, tmp_path: Path, monkeypatch) -> str:
    staged: list[str] = []
    add = staging.StagedUploads.add
    monkeypatch.setattr(staging.StagedUploads, "add",
                        lambda self, member: (staged.append(member.name), add(self, member))[1])
    result = runner.invoke(args=["restore", str(archive), "--yes", "--replace",
                                 "--uploads", str(tmp_path / "uploads-out")])
    assert result.exit_code == 1, result.output
    assert staged == [], staged  # refused before any hidden byte reached a consumer
    return result.output


@pytest.mark.parametrize("before", [0, 2])
def test_entries_hidden_from_the_central_directory_are_refused(runner, archive, tmp_path,
                                                               monkeypatch, before):
    insert(archive, before, hidden_entry("uploads/fill.bin", b"\0" * (8 << 20)))
    verified = runner.invoke(args=["verify", str(archive)])
    assert verified.exit_code == 1
    assert "bytes its central directory does not list" in verified.output
    output = restore_staging_nothing(runner, archive, tmp_path, monkeypatch)
    assert "central directory does not list" in output and "Traceback" not in output


def test_a_member_claiming_hidden_bytes_is_refused_by_the_restore(runner, archive, tmp_path,
                                                                  monkeypatch):
    """The directory made to look contiguous (a member's compressed size grown over
    the hidden entry): what the restore meets is checked against where the
    directory puts each member, before anything is handed on."""
    with zipfile.ZipFile(archive) as zf:
        names = [i.filename for i in sorted(zf.infolist(), key=lambda i: i.header_offset)]
    before = names.index("database.sql") if names[0] != "database.sql" else 1
    insert(archive, before, hidden_entry("uploads/fill.bin", b"\0" * (8 << 20)), swallow=True)
    output = restore_staging_nothing(runner, archive, tmp_path, monkeypatch)
    assert "central directory does not list (at offset" in output, output


def swallow(archive: Path, name: str, hidden: bytes) -> None:
    """Put ``hidden`` right after member ``name``'s compressed data (before its
    data descriptor, if it has one) and grow its compressed size in the central
    directory over them: every offset and size the directory gives stays
    consistent, only the member's real data ends sooner than claimed."""
    data = archive.read_bytes()
    with zipfile.ZipFile(archive) as zf:
        info, start_dir = zf.getinfo(name), zf.start_dir
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    at = info.header_offset + 30 + name_len + extra_len + info.compress_size
    eocd_at = data.rindex(b"PK\x05\x06")
    central = bytearray(data[start_dir:eocd_at])
    pos = 0
    while pos < len(central):
        fields = list(_CENTRAL.unpack_from(central, pos))
        if fields[16] > info.header_offset:
            fields[16] += len(hidden)
        elif fields[16] == info.header_offset:
            fields[8] += len(hidden)
        _CENTRAL.pack_into(central, pos, *fields)
        pos += _CENTRAL.size + fields[10] + fields[11] + fields[12]
    eocd = list(_EOCD.unpack_from(data, eocd_at))
    eocd[6] += len(hidden)
    archive.write_bytes(data[:at] + hidden + data[at:start_dir] + bytes(central)
                        + _EOCD.pack(*eocd) + data[eocd_at + _EOCD.size:])


@pytest.mark.parametrize("swallower", ["database.sql", "manifest.json", "an upload"])
def test_verify_refuses_a_member_claiming_hidden_bytes(runner, archive, swallower):
    """A member's compressed size grown over bytes hidden after its data: the
    directory stays contiguous and zipfile, reading by the directory, skips them
    (``verify`` said OK until 2026-12-05 evening; the restore refused). Now verify
    reads each member to the real end of its data, as the restore does."""
    with zipfile.ZipFile(archive) as zf:
        names = [i.filename for i in zf.infolist()]
    name = next(n for n in names if n.startswith("uploads/")) if swallower == "an upload" \
        else swallower
    swallow(archive, name, hidden_entry("uploads/fill.bin", b"\0" * 4096))
    with zipfile.ZipFile(archive) as zf:  # zipfile alone sees nothing wrong
        assert zf.testzip() is None
    verified = runner.invoke(args=["verify", str(archive)])
    assert verified.exit_code == 1, verified.output
    assert "the ZIP holds bytes" not in verified.output
    assert f"{name}: " in verified.output and "differ from its data" in verified.output
