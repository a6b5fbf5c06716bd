"""Where archives live: the local backup folder and, optionally, one remote copy.

A storage type is contributed through the backup plugin's
``register_storage_types`` hook (the built-in ``file`` and ``s3`` types are
registered the same way) and chosen by the scheme of ``BACKUP_REMOTE_URL``
(``s3://bucket/prefix``, ``file:///mnt/nas/backups``). Two types claiming one
scheme stop start-up. A storage never puts a credential in a message, log
line, page or archive: :class:`StorageError` messages are safe to show, and a
URL holding one is refused (:func:`check_remote_url`).
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any, Mapping, Protocol
from urllib.parse import urlsplit

from guest_backup.archive.format import ArchiveInfo, read_seal, sidecar_path
from guest_backup.archive.writer import Sink
from guest_backup.errors import BackupError


class StorageError(BackupError):
    """A storage failed; the message names the storage, never a credential."""


class StorageUnreachable(StorageError):
    """A storage could not be reached (``backup-health`` exits 2)."""


class ArchiveHeld(StorageError):
    """:meth:`Storage.delete` refused: the archive is held; ``reason`` is what
    :meth:`Storage.held` says (an Object Lock retention date or legal hold)."""

    def __init__(self, name: str, url: str, reason: str) -> None:
        self.reason = reason
        super().__init__(f"{name} cannot be deleted from {url}: {reason}")


#: the small non-archive files a storage keeps beside the archives (never listed
#: as archives): the erasure ledger's copy
EXTRA_NAMES = frozenset({"erasure-ledger.jsonl"})


#: the largest extra file a storage reads (the erasure ledger: a few hundred bytes
#: per erasure); a bigger one, planted or broken, is refused, not read into memory
MAX_EXTRA_BYTES = 64 * 1024 * 1024


def checked_extra(name: str, url: str, data: bytes) -> bytes:
    """``data`` (read up to one byte past :data:`MAX_EXTRA_BYTES`), or StorageError."""
    if len(data) > MAX_EXTRA_BYTES:
        raise StorageError(f"{name} in {url} is larger than {MAX_EXTRA_BYTES // 1024 // 1024} "
                           f"MiB: not read")
    return data


def check_extra_name(name: str) -> str:
    """``name`` if it is an allowed extra file's name, else StorageError."""
    if name not in EXTRA_NAMES:
        raise StorageError("no such file beside the archives")
    return name


def check_remote_url(url: str, config: Mapping[str, Any] | None = None) -> str:
    """``url``, or StorageError when its authority holds credentials
    (``s3://KEY:SECRET@bucket/prefix``, the form rclone and duplicity take; an S3
    bucket's name never holds ``:`` either): a storage's URL is shown wherever it
    is named (health, listings, the audit log, notifications), and its secret
    would be too. The message never shows the value. Start-up checks
    BACKUP_REMOTE_URL with it; the S3 type checks every URL it opens again (one
    given to a command: named so when it is not the ``config``'s setting)."""
    setting = "BACKUP_REMOTE_URL"
    if config is not None and url.strip() != str(config.get(setting) or "").strip():
        setting = "the archive's URL"
    try:
        parts = urlsplit(url.strip())
    except ValueError:  # "s3://[x": an unclosed IPv6 bracket
        raise StorageError(f"{setting} cannot be read as a URL (the value is not shown)") from None
    s3 = parts.scheme.lower() == "s3"
    if "@" in parts.netloc or (s3 and ":" in parts.netloc):
        where = "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY" if s3 else "the storage's own settings"
        raise StorageError(f"{setting} must not hold credentials: put them in {where} "
                           f"(the value is not shown)")
    return url


class Storage(Protocol):
    """One place that holds archives."""

    #: ``local`` for BACKUP_FOLDER, ``remote`` for BACKUP_REMOTE_URL
    name: str
    #: where, for people (no credentials)
    url: str
    #: how many :meth:`read_sidecar` calls may run at once (from threads); 1 when
    #: the attribute is missing
    parallel_reads: int

    def list(self) -> list[ArchiveInfo]:
        """Complete archives, newest first; raise StorageUnreachable."""

    def upload(self, path: Path) -> None:
        """Copy a finished local archive (and its ``.sig`` sidecar, if any) here;
        all or nothing (:func:`upload_file` through :meth:`begin_upload`)."""

    def begin_upload(self, name: str) -> "Sink":
        """Archive ``name`` written straight here while it is produced (an
        :class:`~guest_backup.archive.writer.Sink`): nothing is visible before its
        ``finish``; ``abort`` (or any failure) leaves nothing behind. Cheap: no
        network until the first bytes must go (a storage may prepare its client
        meanwhile)."""

    def open(self, name: str) -> IO[bytes]:
        """A readable stream of one archive (StorageError if it is not there)."""

    def read_sidecar(self, name: str) -> bytes | None:
        """The ``.sig`` beside an archive, if any."""

    # Optional: ``size_of(name) -> int | None``, the archive's size (None: not
    # there), cheaper than :meth:`list` (S3: one HeadObject); StorageError when the
    # storage cannot say. Without it, the list is read.

    def delete(self, name: str) -> None:
        """Remove an archive and its sidecar (every version of them: never a delete
        marker that only hides them); :class:`ArchiveHeld` while :meth:`held` says
        why not (retention relies on it: it deletes without asking :meth:`held`
        first, so a held archive costs one look, not two)."""

    def held(self, name: str) -> str | None:
        """Why the archive cannot be deleted yet (an S3 Object Lock retention date or
        legal hold), None when it can."""

    def local_path(self, name: str) -> Path | None:
        """The archive as a file on this machine when the storage is a folder here
        (read in place, no copy), else None (it is fetched first)."""

    def put_extra(self, name: str, data: bytes) -> None:
        """Replace a small extra file beside the archives (a name in
        :data:`EXTRA_NAMES`, else StorageError) in one step: a reader sees the
        old or the new contents, never half."""

    def get_extra(self, name: str) -> bytes | None:
        """An extra file's contents, None if it is not there; StorageError
        (StorageUnreachable when the storage cannot be read) otherwise."""


class StorageType(Protocol):
    """A kind of storage, chosen by the scheme of BACKUP_REMOTE_URL."""

    scheme: str

    def open(self, url: str, config: Mapping[str, Any]) -> Storage:
        """The storage at ``url`` (raise StorageError for a malformed URL)."""


def fetch(storage: Storage, name: str, dest: IO[bytes], chunk: int = 1024 * 1024,
          limit: tuple[int, str] | None = None) -> int:
    """Stream one archive from ``storage`` into ``dest``; returns the bytes copied.
    ``limit``: (bytes, why) beyond which it stops with StorageError."""
    total = 0
    with storage.open(name) as src:
        while data := src.read(chunk):
            total += len(data)
            if limit is not None and total > limit[0]:
                raise StorageError(f"{name} is larger than {limit[1]} ({limit[0]} bytes): "
                                   f"not copied")
            dest.write(data)
    return total


def size_of(storage: Storage, name: str) -> int | None:
    """Archive ``name``'s size in ``storage``, None when it is not there: the
    storage's own look-up when it has one, else its list."""
    look = getattr(storage, "size_of", None)
    if look is not None:
        return look(name)
    return next((a.size for a in storage.list() if a.name == name), None)


def upload_file(sink: Sink, path: Path, chunk: int = 1024 * 1024) -> None:
    """Copy a finished archive file (and its ``.sig`` sidecar, if any) into a
    storage's upload; aborted on any failure."""
    sidecar = sidecar_path(path)
    try:
        with open(path, "rb") as src:
            while data := src.read(chunk):
                sink.write(data)
        try:
            seal = read_seal(sidecar)
        except FileNotFoundError:
            seal = None
        sink.finish(seal)
    except BaseException:
        sink.abort()
        raise


class Tee:
    """The archive written to two places at once: ``primary`` must succeed (its
    errors are the backup's), ``secondary`` is a copy whose first failure is kept
    in :attr:`copy_failure` and ends only the copy (it is aborted, the archive goes on)."""

    def __init__(self, primary: Sink, secondary: Sink) -> None:
        self.primary, self.secondary = primary, secondary
        self.copy_failure: StorageError | None = None

    def _secondary(self, call, *args) -> None:
        if self.copy_failure is not None:
            return
        try:
            call(*args)
        except StorageError as exc:
            self.copy_failure = exc
        except Exception as exc:  # reported like a storage error, never a traceback
            self.copy_failure = StorageError(f"the copy failed ({type(exc).__name__})")
        if self.copy_failure is not None:
            self.secondary.abort()

    def write(self, data: bytes) -> int:
        self.primary.write(data)
        self._secondary(self.secondary.write, data)
        return len(data)

    def flush(self) -> None:
        self.primary.flush()

    def finish(self, sidecar: bytes | None):
        """The primary first: a copy is only completed beside a complete original."""
        final = self.primary.finish(sidecar)
        self._secondary(self.secondary.finish, sidecar)
        return final

    def abort(self) -> None:
        self.primary.abort()
        if self.copy_failure is None:
            self.secondary.abort()
