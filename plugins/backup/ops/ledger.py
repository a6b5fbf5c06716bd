"""The erasure ledger: which guests were erased (GDPR), kept OUTSIDE the
restorable database, so that a restore of an older archive can erase them again.

One JSON line per erasure in ``<instance folder>/erasure-ledger.jsonl`` (0600),
append-only, with no personal data: record ids, the kind, the UTC time and
keyed hashes of the identifying fields (HMAC-SHA256 with the ledger key, hex;
the caller passes raw values, only the hashes are written)::

    {"guest_ids":[7],"hashes":{"email":["<64 hex>"]},"kind":"guest","mac":"<64 hex>",
     "prev":"<64 hex>","registration_ids":[3],"seq":1,"time":"2025-01-31T09:00:00Z","v":1}

``seq`` counts 1, 2, …; ``prev`` is the previous line's ``mac`` (64 zeros on the
first line); ``mac`` is HMAC-SHA256(key, canonical JSON of the line without
``mac``). A removed, reordered, edited or forged line breaks the chain.

The key: 32 random bytes, hex, in ``<instance folder>/erasure_ledger_key`` (0600,
created on first use). **The operator keeps a copy of it with the recovery
notes** (beside the backup signing key): without it a new server cannot check
the ledger's copies, and a restore there stops rather than trust them.

After each erasure :func:`~guest_backup.ops.ledger_copies.publish` copies the file beside the archives of every
storage (``erasure-ledger.jsonl``); before a restore touches anything,
:func:`~guest_backup.ops.ledger_copies.collect` reads the local file and every copy, checks them all, and puts
the longest back in the instance folder when that one was lost or is behind.

Appends take an ``fcntl.flock`` on ``erasure-ledger.jsonl.lock`` (one machine;
servers with separate instance folders each need their own ledger and storages).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

from guest_backup.archive.manifest import now_text
from guest_backup.errors import BackupError
from guest_backup.files import owned_like_folder, user_name, write_private

log = logging.getLogger(__name__)

from guest_backup.ops.ledger_format import (  # noqa: E402,F401  (re-exported)
    GENESIS,
    KEY_NAME,
    KINDS,
    LEDGER_NAME,
    LedgerBroken,
    VERSION,
    _FIELD_NAME,
    _split,
    canonical,
    create_key,
    iter_verified,
    keyed_hash,
    line_mac,
    merge,
    merge_verified,
    normalise,
    read_key,
    serialise,
    verify_lines)


class ErasureLedger:
    """The instance folder's ledger file and its key."""

    def __init__(self, path: str | os.PathLike, key_path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.key_path = Path(key_path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.label = f"the instance folder ({self.path})"

    @classmethod
    def in_folder(cls, instance_path: str | os.PathLike) -> "ErasureLedger":
        """The default files of an instance folder."""
        folder = Path(instance_path)
        return cls(folder / LEDGER_NAME, folder / KEY_NAME)

    def key(self, create: bool = True) -> bytes:
        """The ledger key; created (when ``create``) only while the ledger is empty,
        so a lost key is never silently replaced."""
        key = read_key(self.key_path)
        if key is not None:
            return key
        if create and not self._has_lines():
            return create_key(self.key_path)
        raise BackupError(f"the erasure ledger key {self.key_path} is missing: put back the "
                          f"copy kept with the recovery notes")

    def _has_lines(self) -> bool:
        try:
            return self.path.stat().st_size > 0
        except FileNotFoundError:
            return False

    def hash_value(self, field: str, value: str) -> str:
        """The keyed hash of one identifying value (to match against a line's ``hashes``)."""
        return keyed_hash(self.key(), field, value)

    @contextlib.contextmanager
    def locked(self, shared: bool = False) -> Iterator[None]:
        """The ledger's file lock (exclusive for writers). Made by root (``pitr drill``
        typed with sudo) in the service user's folder, it is that user's: a root-owned
        0600 lock stopped that user's erasures, drills and health checks."""
        try:
            self.lock_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise BackupError(f"the erasure ledger lock {self.lock_path} cannot be opened "
                              f"({exc.strerror}){_whose(self.lock_path)}") from None
        try:
            owned_like_folder(fd, self.lock_path.parent)
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def read_bytes(self) -> bytes | None:
        """The whole file as it is between two appends (None if there is none)."""
        with self.locked(shared=True):
            return self.read_held()

    def read_held(self) -> bytes | None:
        """The whole file, for a caller that holds :meth:`locked`."""
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BackupError(f"the erasure ledger {self.path} cannot be read "
                              f"({exc.strerror}){_whose(self.path)}") from None

    def entries(self) -> Iterator[dict]:
        """The checked lines, oldest first, streamed (appends after the start are not
        included)."""
        with self.locked(shared=True):
            try:
                fh = open(self.path, "rb")
            except FileNotFoundError:
                return
            size = os.fstat(fh.fileno()).st_size
        with fh:
            yield from iter_verified(_upto(fh, size), self.key(create=False), self.label)

    def append(self, kind: str, guest_ids: Iterable[int] = (), registration_ids: Iterable[int] = (),
               identifiers: Mapping[str, Iterable[str]] | None = None) -> dict:
        """Record one erasure; returns the line written (fsync'ed before returning)."""
        key = self.key()
        record = _new_record(key, kind, guest_ids, registration_ids, identifiers or {})
        with self.locked():
            last, ends_clean = None, True
            with contextlib.suppress(FileNotFoundError), open(self.path, "rb") as fh:
                for last in iter_verified(fh, key, self.label):
                    pass
                if fh.tell():
                    fh.seek(-1, os.SEEK_END)
                    ends_clean = fh.read(1) == b"\n"
            record["seq"] = last["seq"] + 1 if last else 1
            record["prev"] = last["mac"] if last else GENESIS
            record["mac"] = line_mac(key, record)
            self._write_line((b"" if ends_clean else b"\n") + canonical(record) + b"\n")
        return record

    def _write_line(self, data: bytes) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                owned_like_folder(fd, self.path.parent)  # run as root: as the lock
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise BackupError(f"the erasure ledger {self.path} cannot be written "
                              f"({exc.strerror})") from None

    def replace(self, records: Sequence[dict]) -> None:
        """Write ``records`` as the whole file (temporary name, fsync, rename; 0600).
        The caller holds :meth:`locked`."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_private(self.path, serialise(records), sync=True)
        except OSError as exc:
            raise BackupError(f"the erasure ledger {self.path} cannot be written "
                              f"({exc.strerror})") from None


def _whose(path: Path) -> str:
    """``: it belongs to root; …`` when ``path`` is another user's (a root-run
    command's, before this was fixed), else nothing."""
    try:
        owner = path.stat().st_uid
    except OSError:
        return ""
    if owner == os.geteuid():
        return ""
    return (f": it belongs to {user_name(owner)}; run commands as the service's user, "
            f"or chown it")


def _upto(fh, size: int) -> Iterator[bytes]:
    """The lines of ``fh`` within its first ``size`` bytes."""
    while fh.tell() < size:
        line = fh.readline(size - fh.tell())
        if not line:
            return
        yield line


def _ids(values: Iterable[int], what: str) -> list[int]:
    ids = list(values)
    if any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in ids):
        raise ValueError(f"{what} must be record ids (non-negative integers)")
    return ids


def _new_record(key: bytes, kind: str, guest_ids: Iterable[int], registration_ids: Iterable[int],
                identifiers: Mapping[str, Iterable[str]]) -> dict:
    """A line without seq, prev and mac: only ids, the kind, the time and hashes."""
    if kind not in KINDS:
        raise ValueError(f"an erasure is one of {', '.join(KINDS)}, not {kind!r}")
    hashes = {}
    for field, values in identifiers.items():
        if not _FIELD_NAME.fullmatch(field):
            raise ValueError("an identifying field's name is lower-case letters, digits and _")
        found = {keyed_hash(key, field, v) for v in values if normalise(field, v)}
        if found:
            hashes[field] = sorted(found)
    record = {"v": VERSION, "kind": kind, "guest_ids": _ids(guest_ids, "guest_ids"),
              "registration_ids": _ids(registration_ids, "registration_ids"), "hashes": hashes,
              "time": now_text()}
    if not (record["guest_ids"] or record["registration_ids"] or hashes):
        raise ValueError("an erasure names at least one record id or identifying value")
    return record
