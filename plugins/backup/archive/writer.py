"""Writing an archive: members streamed into a ZIP, each one's size and SHA-256
kept for the manifest, the manifest signed, and the archive made visible only by
:meth:`ArchiveWriter.commit`. With age recipients the ZIP is encrypted on its
way out (the plain ZIP is never written) and a sidecar signs the ciphertext.

The bytes go to a *sink*: by default :class:`FileSink` (a hidden ``.partial``
file, mode 0600, renamed into place), or any object with the same four methods,
such as a storage's streaming upload (S3 multipart parts sent while the archive
is written). Leaving the ``with`` block without committing aborts the sink: no
partial file, no half object is left."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import stat
import time
import zipfile
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable, Protocol

from guest_backup.archive.format import MAX_MEMBERS, MANIFEST_MEMBER, PARTIAL_SUFFIX, SIGNATURE_MEMBER, sidecar_path
from guest_backup.archive.manifest import MAX_MANIFEST_BYTES
from guest_backup.archive.encryption import EncryptingWriter, HashingFile
from guest_backup.errors import BackupError

if TYPE_CHECKING:  # the signing module (cryptography) loads when a key is used
    from guest_backup.archive.signing import Signer

CHUNK = 1024 * 1024
TAIL = 256

Progress = Callable[[str, int], None]


class Sink(Protocol):
    """Where an archive's bytes go while it is written."""

    def write(self, data: bytes) -> int: ...

    def flush(self) -> None: ...

    def finish(self, sidecar: bytes | None) -> "Path | None":
        """Make the archive (and its sidecar, written first) visible, all or nothing;
        the archive's path when it is a file on this machine."""

    def abort(self) -> None:
        """Throw away everything written; never raises."""


def open_regular(path: str | os.PathLike) -> tuple[BinaryIO, os.stat_result]:
    """``path`` open for reading, with its fstat: never through a link, never
    waited on (a FIFO swapped in), a regular file only (else OSError EINVAL)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    src = os.fdopen(fd, "rb")
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        src.close()
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return src, st


#: a new file, never one that is there: not through a link, not a planted file's inode
NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)


class FileSink:
    """The archive as a file in ``folder``: written under a hidden ``.partial`` name
    (0600) with a random part, its sidecar beside it, both created new (``O_EXCL``,
    ``O_NOFOLLOW``) and renamed into place by :meth:`finish`. A predictable name
    opened with ``O_TRUNC`` wrote through a link planted in a shared ``file://``
    folder (over the service's own files) or into a planted file (its owner's)."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder, self.name = Path(folder), name
        self.partial = self.folder / f".{name}.{secrets.token_hex(6)}{PARTIAL_SUFFIX}"
        self.partial_sidecar = self.partial.with_name(self.partial.name + ".sig")
        try:
            fd = os.open(self.partial, NEW_FILE, 0o600)
        except OSError:
            raise BackupError(f"the backup folder {self.folder} is not writable") from None
        self._fh = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> int:
        return self._fh.write(data)

    def flush(self) -> None:
        self._fh.flush()

    def finish(self, sidecar: bytes | None) -> Path:
        """fsync, the sidecar first, then the archive renamed into place."""
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._fh = None
        final = self.folder / self.name
        if sidecar is not None:
            fd = os.open(self.partial_sidecar, NEW_FILE, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(sidecar)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(self.partial_sidecar, sidecar_path(final))
        os.replace(self.partial, final)
        return final

    def abort(self) -> None:
        try:
            if self._fh is not None:
                self._fh.close()  # may fail again on a full disk: the files go anyway
        except OSError:
            pass
        finally:
            self._fh = None
            self.partial.unlink(missing_ok=True)
            self.partial_sidecar.unlink(missing_ok=True)


class Digest:
    """Size, SHA-256 and the last bytes of a stream: what the manifest records and
    what tells a complete dump. The one hash-and-tail loop, for writing and verifying."""

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.size = 0
        self.tail = b""

    def update(self, data: bytes) -> None:
        self.sha.update(data)
        self.size += len(data)
        self.tail = (self.tail + data[-TAIL:])[-TAIL:]  # no copy of the whole chunk

    @property
    def entry(self) -> dict:
        return {"size": self.size, "sha256": self.sha.hexdigest()}

    @classmethod
    def of_file(cls, path: str | os.PathLike) -> "Digest":
        """The digest of a whole file, read in chunks (the one file-hashing loop)."""
        digest = cls()
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
        return digest


def zipinfo(name: str, when: datetime, mtime: float | None = None, level: int = 3) -> zipfile.ZipInfo:
    stamp = time.gmtime(mtime)[:6] if mtime is not None else when.timetuple()[:6]
    info = zipfile.ZipInfo(name, date_time=max(stamp, (1980, 1, 1, 0, 0, 0)))
    info.compress_type = zipfile.ZIP_DEFLATED
    # a ZipInfo passed to ZipFile.open() ignores the ZipFile's compresslevel
    if hasattr(type(info), "compress_level"):  # Python >= 3.13
        info.compress_level = level
    else:
        info._compresslevel = level
    info.external_attr = 0o600 << 16
    return info


class ArchiveWriter:
    """One archive being written: ``add_stream``, ``add_file``, then ``commit``.

    ``sink``: a function ``sink(folder, name)`` returning where the bytes go (by
    default a :class:`FileSink` in ``folder``); it is called on entering the block."""

    def __init__(self, folder: Path, name: str, when: datetime, *, signer: Signer,
                 recipients: list | None = None, level: int = 3,
                 progress: Progress | None = None,
                 sink: Callable[[Path, str], Sink] = FileSink) -> None:
        self.folder, self.name, self.when, self.level = folder, name, when, level
        self.signer, self.recipients, self.progress = signer, recipients or [], progress
        self.members: dict[str, dict] = {}
        #: files not archived, per reason (``guest_backup.ops.uploads``): the manifest says so
        self.left_out: Counter[str] = Counter()
        self.written = 0
        self._make_sink = sink
        self._sink: Sink | None = None
        self._encryptor: EncryptingWriter | None = None
        self._out: HashingFile | None = None
        self._zip: zipfile.ZipFile | None = None

    def __enter__(self) -> "ArchiveWriter":
        self._sink = self._make_sink(self.folder, self.name)
        # a write-only stream that hashes what reaches the sink (for the seal); zipfile
        # writes data descriptors into it, as into the encryptor
        target = self._out = HashingFile(self._sink)
        if self.recipients:
            self._encryptor = EncryptingWriter(self._sink, self.recipients)
            target, self._out = self._encryptor, self._encryptor.out
        self._zip = zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED,
                                    compresslevel=self.level, allowZip64=True)
        return self

    @property
    def size(self) -> int:
        """The bytes that reached the sink so far (the whole archive once committed)."""
        return self._out.size if self._out is not None else 0

    def __exit__(self, *exc_info) -> None:
        sink = self._sink
        if sink is not None:  # not committed: throw everything away
            try:
                self._zip.close()
            except Exception:
                pass
            try:
                if self._encryptor is not None:
                    self._encryptor.abort()
            except Exception:
                pass
            finally:
                sink, self._sink = self._sink, None
                sink.abort()
        # a sink that failed says why better than the error it caused on its way
        # (e.g. through the age encryptor's thread)
        failure = getattr(sink, "failure", None)
        if isinstance(failure, BackupError) and exc_info[0] is not None and issubclass(
                exc_info[0], Exception) and exc_info[1] is not failure:
            raise failure from None

    def add_stream(self, name: str, produce: Callable[[Callable[[bytes], None]], None], *,
                   stage: str, mtime: float | None = None) -> Digest:
        """Add a member whose bytes ``produce(write)`` writes; returns its digest."""
        if len(self.members) + 2 >= MAX_MEMBERS:  # the manifest and its signature follow
            raise BackupError(f"more than {MAX_MEMBERS - 3} uploads: an archive holds at most "
                              f"{MAX_MEMBERS} members")
        digest = Digest()
        with self._zip.open(zipinfo(name, self.when, mtime, self.level), "w",
                            force_zip64=True) as member:
            def write(data: bytes) -> None:
                member.write(data)
                digest.update(data)
                self.written += len(data)
                if self.progress:
                    self.progress(stage, self.written)
            produce(write)
        self.members[name] = digest.entry
        return digest

    def add_file(self, name: str, path: Path, *, stage: str) -> Digest:
        """Add the file at ``path``; opened before the member is begun, so a file
        deleted since it was listed raises FileNotFoundError with nothing written."""
        src, st = open_regular(path)
        with src:
            return self.add_open(name, src, st, stage=stage)

    def add_open(self, name: str, src: BinaryIO, st: os.stat_result, *, stage: str) -> Digest:
        """Add an open file (``st``: its fstat, whose mtime the member gets)."""
        def copy(write: Callable[[bytes], None]) -> None:
            while chunk := src.read(CHUNK):
                write(chunk)
        return self.add_stream(name, copy, stage=stage, mtime=st.st_mtime)

    def commit(self, manifest: dict) -> Path | None:
        """Write and sign the manifest last, then seal the archive and let the sink
        make both visible; the archive's path when the sink is a local file.

        What was left out (:attr:`left_out`) is added to ``manifest`` (the caller's
        dict) as ``left_out_uploads``: counts per reason, no names."""
        manifest["left_out_uploads"] = dict(sorted(self.left_out.items()))
        manifest_bytes = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
        if len(manifest_bytes) > MAX_MANIFEST_BYTES:  # verify would refuse the archive
            raise BackupError(f"the manifest of {len(self.members)} members is larger than "
                              f"{MAX_MANIFEST_BYTES >> 20} MiB (very long upload names?)")
        self._zip.writestr(zipinfo(MANIFEST_MEMBER, self.when), manifest_bytes)
        self._zip.writestr(zipinfo(SIGNATURE_MEMBER, self.when),
                           self.signer.sign_manifest(manifest_bytes))
        self._zip.close()
        if self._encryptor is not None:
            self._encryptor.close()
        seal = self.signer.seal({
            "name": self.name, "size": self._out.size, "sha256": self._out.sha.hexdigest(),
            "created_at": manifest["created_at"], "installation": manifest["installation"],
            "engine": manifest["database"]["engine"]})
        final = self._sink.finish(seal)
        self._sink = None
        return final
