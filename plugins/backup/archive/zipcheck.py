"""Checks of a ZIP file at rest, by its end records and local headers, before
:mod:`zipfile` is trusted with it: a central directory too large to parse, and
bytes the directory does not account for (hidden entries a front-to-back reader
would meet). The stream reader is :mod:`guest_backup.archive.zipstream`."""

from __future__ import annotations

import struct

from guest_backup.archive.format import MAX_MEMBERS
from guest_backup.archive.zipstream import (CENTRAL_SIG, DESCRIPTOR_SIG, END_SIGS, FLAG_DESCRIPTOR,
                                            LOCAL_HEADER, LOCAL_SIG, MAX_DIRECTORY_BYTES,
                                            zip64_sizes)

_EOCD = struct.Struct("<4sHHHHLLH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")


def layout_problem(path, infos: list, start_dir: int) -> str | None:
    """Bytes of the file its central directory does not account for (None: none).

    Our writer puts the members back to back from the first byte up to the
    central directory: local header, data, data descriptor. Bytes before the
    first member or between two (hidden local entries, which a reader going front
    to back would meet) are refused. Reads the local headers and descriptors only,
    trusting the directory's sizes: the one-pass restore checks each member's
    real place as it streams (:meth:`ArchivePass.members`)."""
    pos = 0
    with open(path, "rb") as f:
        for info in sorted(infos, key=lambda i: i.header_offset):
            if info.header_offset != pos:
                return (f"the ZIP holds bytes its central directory does not list (at offset "
                        f"{min(pos, info.header_offset)})")
            f.seek(pos)
            head = f.read(LOCAL_HEADER.size)
            if len(head) < LOCAL_HEADER.size or head[:4] != LOCAL_SIG:
                return f"the ZIP's local header of {info.filename[:80]!r} is damaged"
            fields = LOCAL_HEADER.unpack(head)
            flags, (csize, usize, name_len, extra_len) = fields[2], fields[7:11]
            f.seek(name_len, 1)
            _, zip64 = zip64_sizes(f.read(extra_len), csize, usize)
            pos += LOCAL_HEADER.size + name_len + extra_len + info.compress_size
            if flags & FLAG_DESCRIPTOR:
                f.seek(pos)
                pos += (4 if f.read(4) == DESCRIPTOR_SIG else 0) + 4 + (16 if zip64 else 8)
    if pos != start_dir:
        return f"the ZIP holds bytes its central directory does not list (at offset {pos})"
    return None


def directory_problem(path) -> str | None:
    """Why the ZIP at ``path`` is refused from its end records alone (None: it is
    not), before zipfile reads its central directory: more than MAX_MEMBERS
    entries, or a directory over MAX_DIRECTORY_BYTES. zipfile parses a whole
    directory into objects first (a planted 128 MiB file of 2.9 million entries
    took every listing 20 s and 1.1 GiB); a file with no end record is left to
    zipfile to refuse. A plain end record counts at most 65,535 entries, so
    the directory's entry signatures are counted too (a few ms for 200,000)."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(size - min(size, _EOCD.size + 0xFFFF + _ZIP64_LOCATOR.size))
        tail = f.read()
        at = tail.rfind(END_SIGS[2])
        if at < 0 or len(tail) - at < _EOCD.size:
            return None
        entries, directory = _EOCD.unpack_from(tail, at)[4:6]
        end = size - len(tail) + at  # where the directory ends
        if at >= _ZIP64_LOCATOR.size and tail[at - _ZIP64_LOCATOR.size:][:4] == END_SIGS[1]:
            end = _ZIP64_LOCATOR.unpack_from(tail, at - _ZIP64_LOCATOR.size)[2]
            f.seek(end)
            record = f.read(56)
            if record[:4] == END_SIGS[0] and len(record) == 56:
                entries, directory = struct.unpack_from("<QQ", record, 32)
        if directory > MAX_DIRECTORY_BYTES:
            return "the ZIP's central directory is implausibly large"
        entries = max(entries, _signatures(f, end - directory, directory))
    if entries > MAX_MEMBERS:
        return f"{entries} members: an archive holds at most {MAX_MEMBERS}"
    return None


def _signatures(f, start: int, length: int) -> int:
    """How many central directory signatures the ``length`` bytes at ``start``
    hold (an upper bound of its entries), read 1 MiB at a time."""
    if start < 0:
        return 0  # zipfile says what is wrong
    f.seek(start)
    count, carry = 0, b""
    while length > 0 and (chunk := f.read(min(length, 1 << 20))):
        length -= len(chunk)
        count += (carry + chunk).count(CENTRAL_SIG)
        carry = chunk[-3:]
    return count
