"""Reading a ZIP front to back from a stream, as it arrives (the decrypted age
stream of an encrypted archive, or the plain file): local headers in order,
each member inflated as it is read, its end found by the deflate stream itself
(our writer streams, so sizes and CRC come after the data, in a data
descriptor). The central directory at the end is read only to check that it
names the same members in the same order. A ZIP file at rest is checked in
:mod:`guest_backup.archive.zipcheck`. Nothing is trusted here: names,
hashes and sizes are checked against the signed manifest by the caller."""

from __future__ import annotations

import struct
import zlib
from typing import Callable, Iterator

from guest_backup.archive.format import MAX_MEMBERS
from guest_backup.archive.writer import CHUNK, Digest

LOCAL_SIG, CENTRAL_SIG = b"PK\x03\x04", b"PK\x01\x02"
DESCRIPTOR_SIG = b"PK\x07\x08"
END_SIGS = (b"PK\x06\x06", b"PK\x06\x07", b"PK\x05\x06")
LOCAL_HEADER = struct.Struct("<4sHHHHHLLLHH")
_CENTRAL = struct.Struct("<4sHHHHHHLLLHHHHHLL")
DEFLATED, STORED = 8, 0
_ENCRYPTED, _UTF8 = 0x1, 0x800
FLAG_DESCRIPTOR = 0x8  # sizes and CRC in a data descriptor after the data
_ZIP64_EXTRA = 0x0001
#: a member inflating more than this ratio *and* beyond BOMB_MIN_BYTES is refused
BOMB_RATIO = 200
BOMB_MIN_BYTES = 64 * 1024 * 1024
#: a central directory over this (about 512 bytes per member) is refused unread
MAX_DIRECTORY_BYTES = MAX_MEMBERS * 512


class StreamError(ValueError):
    """The stream is not a ZIP our writer could have made, or it ends too early."""


class Source:
    """Bytes from ``read(n)`` (which may return fewer) with put-back. What is
    buffered is taken by an offset, not copied again for each small read (a
    directory of many short entries made that quadratic)."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read, self._buf, self._at = read, b"", 0
        #: how many bytes were taken so far (the offset of the next one)
        self.pos = 0

    def some(self) -> bytes:
        """The next bytes (b"" only at the end)."""
        if self._at < len(self._buf):
            data, self._buf, self._at = self._buf[self._at:], b"", 0
        else:
            data = self._read(CHUNK)
        self.pos += len(data)
        return data

    def exact(self, n: int) -> bytes:
        if len(self._buf) - self._at >= n:  # buffered already
            data = self._buf[self._at:self._at + n]
            self._at += n
            self.pos += n
            return data
        parts, have = [], 0
        while have < n:
            data = self.some()
            if not data:
                raise StreamError("the archive ends in the middle of a member (truncated)")
            parts.append(data)
            have += len(data)
        data = b"".join(parts)
        self.unread(data[n:])
        return data[:n]

    def unread(self, data: bytes) -> None:
        if data:
            self._buf, self._at = data + self._buf[self._at:], 0
            self.pos -= len(data)

    def drain(self) -> int:
        """Read to the end; how many bytes were left."""
        left = 0
        while data := self.some():
            left += len(data)
        return left


class Member:
    """One member as its local header says; ``read`` gives the inflated bytes,
    hashed into ``digest`` as they pass, b"" once the member (and its data
    descriptor) ended and its sizes were checked."""

    def __init__(self, source: Source, name: str, flags: int, method: int,
                 sizes: tuple[int, int], zip64: bool) -> None:
        self.name, self.digest = name, Digest()
        self._src, self._flags, self._method, self._zip64 = source, flags, method, zip64
        self._csize, self._usize = sizes
        self._inflate = zlib.decompressobj(-15) if method == DEFLATED else None
        self._left = self._csize  # a stored member: bytes still to come
        self.compressed = 0
        self.done = False
        #: where its local header starts in the stream
        self.offset: int | None = None

    def read(self, n: int = CHUNK) -> bytes:
        while not self.done:
            data = self._inflated(n) if self._inflate is not None else self._stored(n)
            if data:
                self.digest.update(data)
                if (self.digest.size > BOMB_MIN_BYTES
                        and self.digest.size > BOMB_RATIO * max(self.compressed, 1)):
                    raise StreamError(f"{self.name!r} inflates more than {BOMB_RATIO}-fold: "
                                      f"refused as a possible ZIP bomb")
                return data
        return b""

    def read_capped(self, cap: int) -> bytes:
        """All of it, kept in memory: at most ``cap`` bytes (StreamError beyond)."""
        parts, size = [], 0
        while data := self.read():
            size += len(data)
            if size > cap:
                raise StreamError(f"{self.name} is implausibly large")
            parts.append(data)
        return b"".join(parts)

    def skip(self) -> None:
        while self.read(CHUNK):
            pass

    def _stored(self, n: int) -> bytes:
        if self._left == 0:
            self._end()
            return b""
        data = self._src.exact(min(n, self._left))
        self._left -= len(data)
        self.compressed += len(data)
        return data

    def _inflated(self, n: int) -> bytes:
        z = self._inflate
        if z.eof:
            self.compressed -= len(z.unused_data)
            self._src.unread(z.unused_data)
            self._end()
            return b""
        data = z.unconsumed_tail
        if not data:
            data = self._src.some()
            if not data:
                raise StreamError(f"the archive ends inside {self.name!r} (truncated)")
            self.compressed += len(data)
        try:
            return z.decompress(data, n)
        except zlib.error:
            raise StreamError(f"{self.name!r} is damaged (its deflate data)") from None

    def _end(self) -> None:
        """The sizes after the data (or in the header) must be what was read."""
        self.done = True
        if self._flags & FLAG_DESCRIPTOR:
            size = 8 if self._zip64 else 4
            head = self._src.exact(4)
            if head != DESCRIPTOR_SIG:
                self._src.unread(head)
            raw = self._src.exact(4 + 2 * size)
            csize, usize = struct.unpack("<QQ" if size == 8 else "<LL", raw[4:])
        else:
            csize, usize = self._csize, self._usize
        if (csize, usize) != (self.compressed, self.digest.size):
            raise StreamError(f"{self.name!r}: its sizes in the ZIP differ from its data")


def zip64_sizes(extra: bytes, csize: int, usize: int) -> tuple[tuple[int, int], bool]:
    """The sizes from a local header's ZIP64 extra field, and whether it has one."""
    i = 0
    while i + 4 <= len(extra):
        kind, length = struct.unpack_from("<HH", extra, i)
        body = extra[i + 4:i + 4 + length]
        if kind == _ZIP64_EXTRA:
            values = list(struct.unpack_from(f"<{len(body) // 8}Q", body))
            if usize == 0xFFFFFFFF and values:
                usize = values.pop(0)
            if csize == 0xFFFFFFFF and values:
                csize = values.pop(0)
            return (csize, usize), True
        i += 4 + length
    return (csize, usize), False


def member_at(f, offset: int, end: int) -> "Member":
    """The member whose local header is at ``offset`` of the open file ``f``, read
    as a stream is read front to back (its real end found by its data), never
    past ``end`` (where the next member starts: it cannot run on into it)."""
    f.seek(offset)
    left = end - offset

    def read(n: int) -> bytes:
        nonlocal left
        data = f.read(min(n, left))
        left -= len(data)
        return data
    return ZipStream(read).member()


class ZipStream:
    """``members()`` in the order of their local headers (each must be read to
    its end, or skipped, before the next); then ``central`` holds the names the
    central directory lists (its names and attributes)."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self.source = Source(read)
        #: (name, external attributes) of each central directory entry, once read
        self.central: list[tuple[str, int]] | None = None
        self.trailing = 0

    def members(self) -> Iterator[Member]:
        while True:
            offset = self.source.pos
            sig = self.source.exact(4)
            if sig != LOCAL_SIG:
                self.source.unread(sig)
                break
            member = self._local()
            member.offset = offset
            yield member
            if not member.done:
                member.skip()
        self._central()

    def member(self) -> Member:
        """The member whose local header comes next (StreamError if none does)."""
        offset = self.source.pos
        if self.source.exact(4) != LOCAL_SIG:
            raise StreamError("no local header where the central directory puts a member")
        member = self._local()
        member.offset = offset
        return member

    def _local(self) -> Member:
        (_, _, flags, method, _, _, _, csize, usize, name_len,
         extra_len) = LOCAL_HEADER.unpack(LOCAL_SIG + self.source.exact(LOCAL_HEADER.size - 4))
        raw_name, extra = self.source.exact(name_len), self.source.exact(extra_len)
        name = raw_name.decode("utf-8" if flags & _UTF8 else "cp437", "replace")
        if flags & _ENCRYPTED:
            raise StreamError(f"{name!r} is encrypted inside the ZIP")
        if method not in (DEFLATED, STORED) or (method == STORED and flags & FLAG_DESCRIPTOR):
            raise StreamError(f"{name!r} is stored in a way this archive format never uses")
        sizes, zip64 = zip64_sizes(extra, csize, usize)
        return Member(self.source, name, flags, method, sizes, zip64)

    def _central(self) -> None:
        """The central directory's names; the end records and anything after them
        are only counted."""
        central, start = [], self.source.pos
        while (sig := self.source.exact(4)) == CENTRAL_SIG:
            if len(central) >= MAX_MEMBERS or self.source.pos - start > MAX_DIRECTORY_BYTES:
                raise StreamError(f"the ZIP's central directory lists more than {MAX_MEMBERS} "
                                  f"members or is implausibly large")
            fields = _CENTRAL.unpack(sig + self.source.exact(_CENTRAL.size - 4))
            flags, name_len, extra_len, comment_len = fields[3], fields[10], fields[11], fields[12]
            raw = self.source.exact(name_len)
            self.source.exact(extra_len + comment_len)
            central.append((raw.decode("utf-8" if flags & _UTF8 else "cp437", "replace"),
                            fields[15]))
        if sig not in END_SIGS:
            raise StreamError("the ZIP's central directory is damaged")
        self.trailing = self.source.drain()
        self.central = central
