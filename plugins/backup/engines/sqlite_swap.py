"""The SQLite restore's swap: the loaded copy copied INTO the live database with
SQLite's backup API through the target's own connection (its WAL and its other
connections stay consistent), the old contents kept aside in a private file until
the result checked out, and put back if it does not; and the checks both sides
share (integrity, row counts)."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Callable

from guest_backup.errors import EngineError
from guest_backup.files import owned_like_folder

log = logging.getLogger(__name__)

#: how long a restore waits for other connections' locks on the target (seconds)
BUSY_SECONDS = 30.0
NOTHING_RESTORED = "nothing was restored"
_BUSY_CODES = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED: the backup step is retried


class _GaveUp(Exception):
    """The target stayed locked past BUSY_SECONDS: abandon the backup step."""


def connect(path: Path) -> sqlite3.Connection:
    """A connection without implicit transactions that waits for other locks."""
    return sqlite3.connect(path, timeout=BUSY_SECONDS, isolation_level=None)


def create_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists (SQLite uses the umask);
    run as root, the folder owner's (SQLite gives its journals the file's owner): a
    root-owned new database stopped the service that was to use it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return
    try:
        owned_like_folder(fd, path.parent)
    finally:
        os.close(fd)


def private(path: Path) -> None:
    """Mode 0600 for the database and its ``-wal``/``-shm``: guest data."""
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            os.chmod(f"{path}{suffix}", 0o600)


def remove(path: Path) -> None:
    """``path`` and the journal files SQLite may have left beside it."""
    for suffix in ("", "-journal", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def leftovers(target: Path) -> list[Path]:
    """The loaded copy (and journals) a killed restore left: ``.<name>.restoring``."""
    name = f".{target.name}.restoring"
    with contextlib.suppress(OSError):
        return [path for path in target.parent.iterdir() if path.name in
                (name, f"{name}-journal", f"{name}-wal", f"{name}-shm")]
    return []


def tidy(target: Path) -> None:
    """With ``target``'s lock held (no restore runs): remove the loaded copy a
    restore killed with SIGKILL left (the archive's guests, erased ones too). The
    contents a restore keeps aside (``.<name>.before-restore``) stay, logged: kept
    on purpose when a swap could not be undone, they may be the only copy."""
    for path in leftovers(target):
        with contextlib.suppress(OSError):
            path.unlink()
            log.warning("removed %s, left by a restore that was killed", path)
    keep = target.with_name(f".{target.name}.before-restore")
    if keep.exists():
        log.warning("%s holds the database as it was before a restore that failed or was "
                    "killed; check %s, then delete it", keep, target)


def inspect(con: sqlite3.Connection) -> tuple[list[str], dict[str, int]]:
    """What ``PRAGMA integrity_check`` says and every table's row count, read in
    one transaction (a database SQLite cannot read gives the error as problem)."""
    try:
        con.execute("BEGIN")
        problems = [str(row[0]) for row in con.execute("PRAGMA integrity_check")]
        names = [row[0] for row in con.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        counts = {name: con.execute('SELECT count(*) FROM "{}"'.format(
            name.replace('"', '""'))).fetchone()[0] for name in names}
        con.execute("COMMIT")
        return problems, counts
    except sqlite3.Error as exc:
        if con.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
        return [f"{type(exc).__name__}: {exc}"], {}


def verdict(problems: list[str], counts: dict[str, int],
             loaded: dict[str, int] | None) -> str | None:
    """Why a database is not sound (or not what was loaded), or None."""
    if problems != ["ok"]:
        log.warning("SQLite integrity check: %s", "; ".join(problems[:5]))
        return "failed SQLite's integrity check"
    if loaded is not None and counts != loaded:
        differ = sorted(t for t in set(counts) | set(loaded) if counts.get(t) != loaded.get(t))
        log.warning("SQLite restore: row counts (loaded, now): %s",
                    {t: (loaded.get(t), counts.get(t)) for t in differ})
        return f"holds other row counts than the dump loaded ({', '.join(differ[:5])})"
    return None


def _backup(src: sqlite3.Connection, dst: sqlite3.Connection, consequence: str) -> None:
    """Every page of ``src`` into ``dst`` in one step: one write transaction of
    ``dst``, through its own pager (its WAL and its other connections stay
    consistent; a failed step leaves it as it was). Waits up to BUSY_SECONDS."""
    deadline = time.monotonic() + BUSY_SECONDS

    def progress(status: int, remaining: int, total: int) -> None:
        if status in _BUSY_CODES and time.monotonic() > deadline:
            raise _GaveUp

    try:
        src.backup(dst, pages=-1, progress=progress, sleep=0.05)
    except _GaveUp:
        raise EngineError(f"the database stayed locked by other connections for "
                          f"{BUSY_SECONDS:.0f} s; {consequence}") from None
    except sqlite3.Error as exc:
        log.warning("SQLite backup API failed: %s", exc)
        raise EngineError(f"SQLite could not copy the database ({exc}); {consequence}") from None


def _copy_aside(dst: sqlite3.Connection, keep: Path) -> None:
    """The target's current contents (read through ``dst``) into the new private
    file ``keep``."""
    remove(keep)
    create_private(keep)
    with contextlib.closing(sqlite3.connect(keep, isolation_level=None)) as out:
        _backup(dst, out, f"its current contents could not be copied aside; {NOTHING_RESTORED}")


def put_back(keep: Path, dst: sqlite3.Connection) -> bool:
    """Copy the contents kept aside back into the target; whether that worked."""
    try:
        with contextlib.closing(sqlite3.connect(keep, isolation_level=None)) as old:
            _backup(old, dst, "")
        return verdict(*inspect(dst), None) is None
    except (EngineError, sqlite3.Error) as exc:
        log.warning("SQLite restore: putting the previous database back failed: %s", exc)
        return False


def after_swap(dst: sqlite3.Connection) -> str | None:
    """Why the swapped-in database is not sound (SQLite's integrity check), or None."""
    return verdict(*inspect(dst), None)


def swap_in(src: sqlite3.Connection, target: Path, loaded: dict[str, int],
            before: "Callable[[sqlite3.Connection, Path], None] | None" = None) -> None:
    """Copy ``src`` into ``target`` through the target's own connection, the old
    contents kept in a private file beside it until the result checked out (and
    put back if it does not); then checkpoint the WAL into the database file.

    The check after the swap is SQLite's integrity check only: ``loaded`` (the row
    counts) was checked on ``src`` before, and the backup step copies its pages
    as they are. The live database's counts differ by what other connections
    wrote since (a guest registering): before, that was taken for a failed swap,
    the old contents were put back and the registration, committed and answered,
    was lost, while the restore said "nothing was restored"."""
    keep = target.with_name(f".{target.name}.before-restore")
    create_private(target)
    dst = connect(target)
    kept = False
    try:
        _swap(src, dst, target, keep, before)
        why = after_swap(dst)
        if why and put_back(keep, dst):
            raise EngineError(f"the restored database {why}; the previous contents were put "
                              f"back, {NOTHING_RESTORED}")
        if why:
            kept = True
            raise EngineError(f"the restored database {why}, and the previous contents could "
                              f"not be put back: the database WAS changed; its previous "
                              f"contents are kept in {keep}")
        with contextlib.suppress(sqlite3.Error):
            dst.execute("PRAGMA wal_checkpoint(PASSIVE)")
    finally:
        dst.close()
        if not kept:
            remove(keep)


def _swap(src: sqlite3.Connection, dst: sqlite3.Connection, target: Path, keep: Path,
          before: "Callable[[sqlite3.Connection, Path], None] | None") -> None:
    """``src`` into ``dst``, the target copied aside into ``keep`` (and ``before``
    run) under the target's write lock, held from the copy aside through the swap,
    so that no other connection commits in between. Before, the copy was made
    first, unlocked: an audit entry committed in between (a backup starting) was
    lost, the restore's own entry took its id, and that backup's end overwrote it.
    A transaction held on ``dst`` cannot do it (the backup API refuses a destination
    in a transaction, and another connection's lock would block the backup's own):
    with WAL (the app's), the backup's first page takes the lock, held until its
    last page commits, and the copy aside is read meanwhile by another connection
    (WAL readers are not blocked); without WAL, ``dst`` keeps the lock in exclusive
    locking mode, which WAL refuses while other connections are open."""
    consequence = f"{NOTHING_RESTORED}; the database is as it was"

    def aside(reader: sqlite3.Connection) -> None:
        _copy_aside(reader, keep)
        if before is not None:  # e.g. the audit entries as they are now
            before(src, keep)

    if dst.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        with _locked(dst, consequence):
            aside(dst)
            _backup(src, dst, consequence)
    elif src.execute("PRAGMA page_count").fetchone()[0] < 2:  # no table: nothing to carry
        aside(dst)
        _backup(src, dst, consequence)
    else:
        def first() -> None:
            with contextlib.closing(connect(target)) as reader:
                aside(reader)

        source = _FirstPageFirst(src, first)
        _backup(source, dst, consequence)  # type: ignore[arg-type]
        if not source.ran:  # cannot happen: src has more than one page
            raise EngineError(f"the database was copied before its contents were set aside; "
                              f"{consequence}")


@contextlib.contextmanager
def _locked(dst: sqlite3.Connection, consequence: str):
    """The write lock of ``dst`` (a database without WAL) kept between its
    transactions (exclusive locking mode), given back on leaving."""
    dst.execute("PRAGMA locking_mode = EXCLUSIVE").fetchall()
    try:
        try:
            dst.execute("BEGIN IMMEDIATE")
            dst.execute("COMMIT")  # the lock stays: nothing else writes until released
        except sqlite3.Error as exc:
            log.warning("SQLite restore: locking the target failed: %s", exc)
            if (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _BUSY_CODES:
                raise EngineError(f"the database stayed locked by other connections for "
                                  f"{BUSY_SECONDS:.0f} s; {consequence}") from None
            raise EngineError(f"SQLite could not lock the database ({exc}); "
                              f"{consequence}") from None
        yield
    finally:
        with contextlib.suppress(sqlite3.Error):
            dst.execute("PRAGMA locking_mode = NORMAL").fetchall()
            dst.execute("SELECT count(*) FROM sqlite_master").fetchall()  # lets it go


class _FirstPageFirst:
    """The loaded copy as the swap's source: its backup runs page by page, and
    ``first`` runs after the first page, when the backup holds the target's write
    lock (until its last page commits) and nothing is written yet."""

    def __init__(self, con: sqlite3.Connection, first: Callable[[], None]) -> None:
        self.con, self.first, self.ran = con, first, False

    def backup(self, dst: sqlite3.Connection, *, pages: int, progress, sleep: float) -> None:
        def step(status: int, remaining: int, total: int) -> None:
            progress(status, remaining, total)
            if status == 0 and not self.ran:  # SQLITE_OK: locked, more pages to come
                self.ran = True
                self.first()

        self.con.backup(dst, pages=1, progress=step, sleep=sleep)
