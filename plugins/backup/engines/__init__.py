"""Database engines: one object per SQLAlchemy dialect, everything the export
and the system backup do differently per engine.

The built-in PostgreSQL and SQLite engines are contributed through the backup
plugin's own ``register_database_engines`` hook, exactly as a third-party plugin
would contribute one (see :mod:`guest_backup.hookspecs`). An engine never puts
a password on a command line and never lets a tool's raw error text escape:
:class:`~guest_backup.errors.EngineError` carries a message safe for users,
the detail goes to the log with the password masked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Callable, ContextManager, Protocol

from guest_backup.errors import BackupBusy, EngineError
from guest_backup.files import owned_like_folder

if TYPE_CHECKING:  # SQLAlchemy is imported by what connects, not by ``--help``
    from sqlalchemy.engine import URL, Connection
    from sqlalchemy.sql import ColumnElement

#: size of the pieces streamed between a tool, the archive and the database
CHUNK = 1024 * 1024
#: what a restore or an erasure is told when another holds its database (``exclusive``)
TARGET_BUSY = ("another restore or an erasure of this database is running; wait for it to "
               "finish")
#: what a restore is told when the target's tables stayed locked by another session (a
#: backup's dump holds them to its end) for longer than BACKUP_LOCK_WAIT
TARGET_LOCKED = ("the target database stayed locked by another session (a backup's dump, "
                 "an export, a migration) for longer than BACKUP_LOCK_WAIT allows")
#: what a backup is told when a table stayed locked by another session (``hold_tables``,
#: the dump tool's own locks) for longer than BACKUP_LOCK_WAIT
TABLES_LOCKED = ("a table stayed locked by another session (a schema migration, say) for "
                 "longer than BACKUP_LOCK_WAIT allows; no archive was made: try again once "
                 "that session has finished")


@dataclass
class ToolInfo:
    """The external tool an engine uses, as ``status`` and the manifest report it."""

    name: str
    version: str | None
    path: str | None
    ok: bool
    detail: str


@dataclass
class EngineSettings:
    """Plain settings, so engines work without Flask."""

    database_url: str
    pg_dump: str = "pg_dump"
    psql: str = "psql"
    #: the role a PostgreSQL restore loads the dump as (RESTORE_DATABASE_ROLE)
    restore_role: str = "guest_restore"
    #: how long a backup waits for a table another session holds, seconds
    #: (BACKUP_LOCK_WAIT; 0: without limit)
    lock_wait: float = 0.0


class DatabaseEngine(Protocol):
    """How the export and the system backup handle one database engine."""

    #: the SQLAlchemy dialect name, e.g. ``"postgresql"``
    dialect: str

    def begin_snapshot(self, conn: Connection) -> None:
        """Start the read-only transaction whose snapshot a backup (dump and row
        counts) or an export (count and rows) reads from, start to end."""

    def hold_tables(self, conn: Connection, tables: list[str], wait: float) -> None:
        """Optional. Lock ``tables`` against a rewrite in ``conn``'s snapshot
        transaction (begun by :meth:`begin_snapshot`), to its end: a table rewritten
        after the snapshot reads as empty in it. Wait at most ``wait`` seconds (0:
        without limit) for a table another session holds, then raise
        :class:`EngineError` (:data:`TABLES_LOCKED`); the dump honours the same
        wait (``EngineSettings.lock_wait``)."""

    def share_snapshot(self, conn: Connection) -> "Callable[[Connection, list[str]], None] | None":
        """Optional. A function ``join(other, tables)`` that begins ``conn``'s
        snapshot (already begun by :meth:`begin_snapshot`) on another connection
        and takes the dump's own locks on ``tables`` there without waiting (``conn``
        holds them: a wait could only be behind a rewrite waiting for ``conn``), so
        that work in that snapshot can run beside the dump (the backup's row counts);
        valid while ``conn``'s transaction is open. None, or no such method: the
        engine cannot share a snapshot, and that work runs on ``conn`` before the
        dump."""

    def server_version(self, conn: Connection) -> str:
        """The server's version, e.g. ``"15.4"``."""

    def exclusive(self, url: str, wait: float = 0.0) -> ContextManager[None]:
        """Optional. One restore or erasure at a time in the database at ``url``,
        across processes: held while the block runs; BackupBusy (``TARGET_BUSY``)
        when another holds it for longer than ``wait`` seconds (see
        :func:`exclusive`)."""

    def timestamp_text(self, column: ColumnElement) -> ColumnElement:
        """``column`` rendered by the database as ``YYYY-MM-DD HH:MM:SS`` text."""

    def tool(self, settings: EngineSettings, conn: Connection | None) -> ToolInfo:
        """The dump tool and whether it can dump this server (``conn`` may be None)."""

    def dump(self, settings: EngineSettings, conn: Connection,
             write: Callable[[bytes], None]) -> None:
        """Stream a plain-SQL dump consistent with the snapshot of ``conn``."""

    def is_complete(self, tail: bytes) -> bool:
        """Whether a dump ending in ``tail`` (its last 256 bytes) is complete."""

    def screen(self) -> "DumpScreen":
        """A fresh screen for one dump: what ``verify`` and ``restore`` run over it."""

    def scratch(self, url: str) -> "ContextManager[str]":
        """A new empty database beside ``url`` for a restore drill (its URL),
        removed when the block ends, whatever happens."""

    def prepare_target(self, url: str) -> bool:
        """Whether the target holds no tables; create it if missing and possible
        (raise EngineError with a one-line reason otherwise)."""

    def restore(self, settings: EngineSettings, url: str, stream: IO[bytes], *,
                replace: bool = False, finish=None) -> None:
        """Load a dump (screened as it goes) in one transaction; with ``replace``
        swap out the old contents in that same step, with ``finish`` (see
        ``guest_backup.ops.finishing``: ``sql(url)`` and ``apply(connection)``)
        bring the loaded database up to date before it commits. On a failure
        before the commit the target is exactly as it was; the error says so."""


class DumpRefused(EngineError):
    """A dump screen refused the dump: it holds what the engine's dump tool does
    not write. Nothing of it is loaded (or kept)."""


class DumpScreen(Protocol):
    """Refuses (raises EngineError) a dump holding anything its engine's dump tool
    does not write: fed the dump in chunks, then told it ended. A screen may pass
    the dump through: ``feed`` and ``finish`` then return the screened bytes the
    loader may be given (verification ignores the return value)."""

    def feed(self, chunk: bytes) -> bytes | None: ...

    def finish(self) -> bytes | None: ...


def exclusive(db_engine, url: str, wait: float = 0.0) -> ContextManager[None]:
    """``db_engine.exclusive(url, wait)``, or nothing held for an engine without it.
    Two restores into one database at once each reported success, one's audit entry
    lost and whichever loaded last left; an erasure committed while a restore
    loaded was overwritten by it."""
    method = getattr(db_engine, "exclusive", None)
    return method(url, wait) if method is not None else contextlib.nullcontext()


def retry_until(take: Callable[[], bool], wait: float) -> None:
    """Call ``take`` (a try-lock) until it succeeds; BackupBusy after ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while not take():
        if time.monotonic() >= deadline:
            raise BackupBusy(TARGET_BUSY)
        time.sleep(0.1)


def try_flock(path: Path, create: bool = True) -> int | None:
    """The one try-lock-or-skip on a file (the backup lock, the export slots, the
    SQLite engine's :func:`file_lock`): an open descriptor holding an exclusive
    ``flock`` on ``path`` (closing it releases the lock), or None when another
    process or thread holds it (or, without ``create``, when there is no file)."""
    try:
        fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o600)
    except FileNotFoundError:
        if create:
            raise
        return None
    try:
        owned_like_folder(fd, Path(path).parent)  # made by root: the folder owner's
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def held_flock(path: Path, shared: bool = False):
    """The one waiting lock on a file (a JSON state file's lock beside it: notify
    states, browse sessions, a listing's kept verdicts): an ``flock`` on ``path``
    (created 0600), exclusive unless ``shared``, held while the block runs."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:  # made by root in the service's folder, it is the service's (a root-owned
        owned_like_folder(fd, Path(path).parent)  # lock stopped its notifications)
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing frees the flock


@contextlib.contextmanager
def file_lock(path: Path, wait: float = 0.0):
    """:func:`try_flock` on ``path`` held while the block runs (the file removed
    when released), for every process of this machine; BackupBusy after ``wait``
    seconds. A lock won on a file its holder removed meanwhile is tried again on
    the new one."""
    held: list[int] = []

    def take() -> bool:
        while (fd := try_flock(path)) is not None:
            try:
                current = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                held.append(fd)
                return True
            os.close(fd)
        return False
    retry_until(take, wait)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # while still held: a waiter then locks a new file
        os.close(held[0])


def sql(statement: str):
    """``sqlalchemy.text(statement)``: the engines import SQLAlchemy when they run SQL."""
    from sqlalchemy import text

    return text(statement)


def parse_url(url: str | URL) -> URL:
    """``sqlalchemy.engine.make_url(url)``, imported on first use."""
    from sqlalchemy.engine import make_url

    return make_url(url)


def mask(text_: str, url: str | URL) -> str:
    """``text_`` with the URL's password (if any) replaced by ``***``."""
    password = parse_url(url).password if isinstance(url, str) else url.password
    return text_.replace(password, "***") if password else text_
