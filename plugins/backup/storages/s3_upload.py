"""An archive streamed into S3 while it is written (S3 multipart upload).

Bytes fill one part in memory (``BACKUP_S3_PART_MB``); a full part is handed to
a small pool of threads that send it while the next one fills. At most
:data:`PART_BUDGET` of parts are held at once (the one filling included, but at
least two parts): with boto3's own 24-30 MiB (its import and the S3 model) that
keeps an upload within +50 MiB of a local backup at the default 8 MiB parts, and
a slow storage slows the writer down (back-pressure) instead of growing memory.

Nothing is visible under the archive's name until :meth:`MultipartUpload.finish`
completes the upload (its seal ``NAME.sig`` put just before); an archive smaller
than one part is one PutObject. Any failure, or :meth:`MultipartUpload.abort`,
aborts the upload (AbortMultipartUpload: no half object, no parts left to pay for)
and takes the seal back, and the archive too if the storage completed it while
answering an error. A process killed outright cannot abort: the next upload aborts
what it left (:meth:`S3Storage.abort_leftovers`, beside its first part), and a
bucket lifecycle rule ``AbortIncompleteMultipartUpload`` is the safety net (docs/s3.md).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import logging
import threading
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from guest_backup.archive.format import SIDECAR_SUFFIX
from guest_backup.storages import StorageError
from guest_backup.storages.s3_lock import multipart_etag

log = logging.getLogger(__name__)
MiB = 1024 * 1024
#: the most part bytes one upload holds in memory (the part being filled included)
PART_BUDGET = 16 * MiB
MAX_PARTS = 10_000  # S3's limit
#: every part carries its CRC32, which S3 checks and keeps as the object's composite
#: checksum (``CRC32-N``), declared at creation so that completing combines the parts'
#: checksums instead of reading the object again (moto: 0.15 s, not 0.45 s, for 52 MB).
#: Only where botocore sends checksums anyway (its default ``when_supported``): one
#: configured ``when_required`` (``AWS_REQUEST_CHECKSUM_CALCULATION``) sends none
CHECKSUM = "CRC32"
CHECKSUM_FIELD = "ChecksumCRC32"


def part_checksum(body: bytes | bytearray) -> str:
    """A part's CRC32 as S3 wants it (base64 of 4 bytes, big-endian): given with the
    request, botocore sends it as a header before a plain body, never as the trailer
    of an ``aws-chunked`` one (its way over HTTPS), which several storages refused;
    less work for the storage too (moto: 32 instead of 49 CPU ms per 8 MiB part)."""
    return base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode("ascii")


def declared_checksum(client: Any) -> dict[str, str]:
    """``ChecksumAlgorithm`` for the upload's requests, or nothing when botocore is
    told to send checksums only where required (or is too old to say)."""
    config = getattr(getattr(client, "meta", None), "config", None)
    wanted = getattr(config, "request_checksum_calculation", None)
    return {"ChecksumAlgorithm": CHECKSUM} if wanted == "when_supported" else {}


def parts_in_flight(part_size: int) -> int:
    """How many parts may be on their way while the next one fills."""
    return max(1, PART_BUDGET // part_size - 1)


class PartBody(io.RawIOBase):
    """A part's bytes as a seekable file, read piece by piece as it is sent and
    sought back for a retry; not the ``bytearray``, which botocore copies whole into
    a ``BytesIO`` when it adds a trailing checksum (8 MiB more per part on its way)."""

    def __init__(self, data: bytearray) -> None:
        self._view = memoryview(data)
        self._pos = 0

    def __len__(self) -> int:
        return len(self._view)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        end = min(self._pos + len(buffer), len(self._view))
        size = end - self._pos
        buffer[:size] = self._view[self._pos:end]
        self._pos = end
        return size

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


def _build_client(storage: Any) -> None:
    try:
        storage.client
    except Exception:  # the upload's first request reports it
        pass


class MultipartUpload:
    """One archive being written into ``storage`` (an S3Storage) as ``name``."""

    def __init__(self, storage: Any, name: str) -> None:
        self.storage, self.name = storage, name
        self.key = storage._key(name)
        self.part_size = storage.part_size
        self.in_flight = parts_in_flight(self.part_size)
        #: the first error (a StorageError with a safe message); the upload is over then
        self.failure: StorageError | None = None
        self._buffer: bytearray | None = bytearray(self.part_size)
        self._filled = 0
        self._upload_id: str | None = None
        self._checksum: dict[str, str] = {}  # declared_checksum's, once the upload starts
        self._number = 0
        self._pending: deque[Future] = deque()
        self._parts: dict[int, dict[str, Any]] = {}  # number -> its entry for completing
        self._pool: ThreadPoolExecutor | None = None
        self._leftovers: Future | None = None  # abort_leftovers, beside the parts
        self._completed = False
        self._etag: str | None = None  # the archive's, to know it after a lost answer
        self._warm()

    def _failed(self, exc: BaseException, stays: str | None = None) -> StorageError:
        if self.failure is None:
            self.failure = exc if isinstance(exc, StorageError) else self.storage._fail(
                "the upload to", exc)
            if stays:  # what a failed completion left under the archive's name
                self.failure = StorageError(f"{self.failure}; {stays}")
        return self.failure

    def write(self, data: bytes) -> int:
        if self.failure is not None:
            raise self.failure
        view = memoryview(data).cast("B")
        size, pos = len(view), 0
        while pos < size:
            take = min(size - pos, self.part_size - self._filled)
            self._buffer[self._filled:self._filled + take] = view[pos:pos + take]
            self._filled += take
            pos += take
            if self._filled == self.part_size:
                full, self._buffer, self._filled = self._buffer, None, 0
                self._send(full)
                self._buffer = bytearray(self.part_size)
        return size

    def flush(self) -> None:
        """Nothing: a part goes when it is full."""

    def _warm(self) -> None:
        """The storage's client (botocore's import and the S3 model: ~0.23 CPU s)
        built in a thread as the upload begins, just before the backup's snapshot,
        whose first ~0.17 s mostly wait: the import fills that wait instead of taking
        CPU and the GIL from the dump's compression (from the archive's first bytes:
        0.05-0.13 s slower; from the backup's start: the dump began 0.07-0.10 s later;
        medians of 9 rounds against moto and benchmarks/stub_s3.py)."""
        threading.Thread(target=_build_client, args=(self.storage,), name="s3-client",
                         daemon=True).start()

    def _send(self, body: bytearray, last: bool = False) -> None:
        """Hand one part to the pool, first waiting while too many are on their way
        (the last part may go beside them: no part is filling any more)."""
        if self.failure is not None:
            raise self.failure
        for future in self._pending:  # a part that failed already stops the upload now
            if future.done() and future.exception() is not None:
                self._wait(future)
        if self._upload_id is None:
            self._start()
        while len(self._pending) >= self.in_flight + last:
            self._wait(self._pending.popleft())
        self._number += 1
        if self._number > MAX_PARTS:
            raise self._failed(StorageError(
                f"the upload to {self.storage.url} failed: the archive needs more than "
                f"{MAX_PARTS} parts (raise BACKUP_S3_PART_MB)"))
        self._pending.append(self._pool.submit(self._put_part, self._number, body))

    def _start(self) -> None:
        try:
            self._checksum = declared_checksum(self.storage.client)
            answer = self.storage.client.create_multipart_upload(
                Bucket=self.storage.bucket, Key=self.key, **self._checksum)
        except Exception as exc:
            raise self._failed(exc) from None
        self._upload_id = answer["UploadId"]
        # the parts on their way, the last one, the seal, and the look for what a killed
        # process left (while this archive is written, not adding to its end's time)
        self._pool = ThreadPoolExecutor(max_workers=self.in_flight + 3,
                                        thread_name_prefix="s3-part")
        self._leftovers = self._pool.submit(self.storage.abort_leftovers, self._upload_id)

    def _put_part(self, number: int, body: bytearray) -> None:
        checksum = dict(self._checksum)
        if checksum:  # computed here and sent as a header, see part_checksum
            checksum[CHECKSUM_FIELD] = part_checksum(body)
        answer = self.storage.client.upload_part(
            Bucket=self.storage.bucket, Key=self.key, PartNumber=number,
            UploadId=self._upload_id, Body=PartBody(body), **checksum)
        part = {"PartNumber": number, "ETag": answer["ETag"]}
        if answer.get(CHECKSUM_FIELD):  # a storage without checksums answers none
            part[CHECKSUM_FIELD] = answer[CHECKSUM_FIELD]
        self._parts[number] = part

    def _wait(self, future: Future) -> None:
        try:
            future.result()
        except Exception as exc:
            raise self._failed(exc) from None

    def finish(self, sidecar: bytes | None) -> None:
        """The last part and the seal, both sent beside the parts still on their
        way; then the archive made visible (the seal is there by then), then locked.
        A failure takes back a seal that was put, versioned bucket or not (unless
        the archive stays: completed all the same, see ``take_back``)."""
        if self.failure is not None:
            raise self.failure
        seal_key = self.key + SIDECAR_SUFFIX
        seal: Future | None = None
        seal_version, sealed, completing, stays = None, False, False, None
        try:
            if self._upload_id is not None:
                if sidecar is not None:
                    seal = self._pool.submit(self.storage.put, seal_key, sidecar)
                if self._filled:
                    del self._buffer[self._filled:]
                    self._send(self._buffer, last=True)
                self._buffer = None
                while self._pending:
                    self._wait(self._pending.popleft())
            if sidecar is not None:
                seal_version = (seal.result() if seal is not None
                                else self.storage.put(seal_key, sidecar))
                sealed = True
            completing = True
            version = self._complete()
        except Exception as exc:
            if seal is not None and not sealed:  # it may still be on its way: let it end
                with contextlib.suppress(Exception):
                    seal_version, sealed = seal.result(), True
            if completing:  # the storage may have completed it all the same (a lost answer)
                self._completed, stays = self.storage.take_back(self.key, self._etag)
            if sealed and stays is None:
                self.storage.remove_quietly(seal_key, seal_version)
            raise self._failed(exc, stays) from None
        self._completed = True
        self._close_pool()
        if self._leftovers is None:  # one PutObject: not looked for yet
            self.storage.abort_leftovers()
        self.storage.lock(self.key, version)
        if sidecar is not None:
            self.storage.lock(seal_key, seal_version)

    def _complete(self) -> str | None:
        """Complete the multipart upload (or put a small archive whole); the version."""
        if self._upload_id is None:
            data, self._buffer = bytes(memoryview(self._buffer)[:self._filled]), None
            try:
                return self.storage.put(self.key, data)
            except Exception:
                self._etag = f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'
                raise
        parts = [self._parts[n] for n in sorted(self._parts)]
        self._etag = multipart_etag(parts)
        answer = self.storage.client.complete_multipart_upload(
            Bucket=self.storage.bucket, Key=self.key, UploadId=self._upload_id,
            MultipartUpload={"Parts": parts})
        return answer.get("VersionId")

    def _close_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def abort(self) -> None:
        """Stop sending and abort the multipart upload; never raises."""
        self._buffer = None
        self._pending.clear()
        self._close_pool()
        if self._upload_id is not None and not self._completed:
            try:
                self.storage.client.abort_multipart_upload(
                    Bucket=self.storage.bucket, Key=self.key, UploadId=self._upload_id)
            except Exception as exc:
                log.warning("could not abort the multipart upload of %s to %s (%s); the next "
                            "upload aborts it", self.name, self.storage.url, type(exc).__name__)
            self._upload_id = None
