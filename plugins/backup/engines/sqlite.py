"""The SQLite engine: the ``sqlite3`` module's own dump and a restore that loads
it into a new file beside the target, checks it, and copies it into the live
database with SQLite's backup API (never a file moved over a database whose
``-wal``/``-shm`` would then be applied to the wrong file), checked again after."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Callable, Iterator

from guest_backup.errors import EngineError, shown_reason
from guest_backup.engines import (CHUNK, DumpRefused, EngineSettings, ToolInfo, file_lock,
                                   parse_url)

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection
    from sqlalchemy.sql import ColumnElement

    from guest_backup.engines.sqlitescreen import SQLiteDumpScreen

log = logging.getLogger(__name__)

SQLITE_TRAILER = b"COMMIT;"
#: how long a restore waits for other connections' locks on the target (seconds)
BUSY_SECONDS = 30.0
NOTHING_RESTORED = "nothing was restored"
_BUSY_CODES = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED: the backup step is retried


def sqlite_path(url: str) -> Path:
    database = parse_url(url).database
    if not database or database == ":memory:":
        raise EngineError("an in-memory SQLite database cannot be backed up or restored")
    return Path(database)


class SQLiteEngine:
    """Python's own ``sqlite3`` dump (``BEGIN TRANSACTION; ... COMMIT;``), loaded
    into a new file and copied into the target only when all of it loaded."""

    dialect = "sqlite"

    def is_complete(self, tail: bytes) -> bool:
        return tail.rstrip().endswith(SQLITE_TRAILER)

    def tool(self, settings: EngineSettings, conn: Connection | None) -> ToolInfo:
        return ToolInfo("python-sqlite3", sqlite3.sqlite_version, None, True,
                        f"built-in (SQLite {sqlite3.sqlite_version})")

    def server_version(self, conn: Connection) -> str:
        return conn.exec_driver_sql("SELECT sqlite_version()").scalar_one()

    def begin_snapshot(self, conn: Connection) -> None:
        # pysqlite opens no transaction for reads: start one, and take its snapshot
        conn.exec_driver_sql("BEGIN")
        conn.exec_driver_sql("SELECT count(*) FROM sqlite_master")

    def exclusive(self, url: str, wait: float = 0.0):
        """An ``flock`` on ``<database file>.lock`` beside the database (nothing
        for an in-memory one, which no other process shares)."""
        if parse_url(url).database in (None, "", ":memory:"):
            return contextlib.nullcontext()
        path = sqlite_path(url)
        return file_lock(path.with_name(path.name + ".lock"), wait)

    def timestamp_text(self, column: ColumnElement) -> ColumnElement:
        from sqlalchemy import func

        return func.strftime("%Y-%m-%d %H:%M:%S", column)

    def dump(self, settings: EngineSettings, conn: Connection,
             write: Callable[[bytes], None]) -> None:
        raw = conn.connection.dbapi_connection
        buf: list[bytes] = []
        size = 0
        for line in raw.iterdump():
            data = (line + "\n").encode("utf-8")
            buf.append(data)
            size += len(data)
            if size >= CHUNK:
                write(b"".join(buf))
                buf, size = [], 0
        if buf:
            write(b"".join(buf))

    def prepare_target(self, url: str) -> bool:
        """Whether the target holds no tables (a missing file is empty)."""
        path = sqlite_path(url)
        if not path.exists() or path.stat().st_size == 0:
            return True
        try:
            with contextlib.closing(_connect(path)) as con:
                return con.execute("SELECT count(*) FROM sqlite_master "
                                   "WHERE name NOT LIKE 'sqlite_%'").fetchone()[0] == 0
        except sqlite3.Error:
            raise EngineError(f"the target {path.name} is not an SQLite database") from None

    def screen(self) -> "SQLiteDumpScreen":
        from guest_backup.engines import sqlitescreen  # only when a dump is read

        return sqlitescreen.SQLiteDumpScreen()

    @contextlib.contextmanager
    def scratch(self, url: str) -> Iterator[str]:
        """A temporary database file for a restore drill, removed afterwards."""
        folder = tempfile.mkdtemp(prefix="gr-drill-")
        try:
            yield f"sqlite:///{folder}/drill.db"
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def restore(self, settings: EngineSettings, url: str, stream: IO[bytes], *,
                replace: bool = False, finish=None) -> None:
        """Load the dump (screened, under an authorizer) into a new file beside the
        target, finish it (``finish``: the schema upgrade, the audit trail carried
        over, erasures re-applied; see ``ops/finishing.py``), and check
        it; then copy it INTO the target with SQLite's backup API,
        one write transaction through the target's own connection (its WAL, its
        other connections and a running server stay consistent), and check the
        result. On any failure the target keeps (or gets back) its old contents."""
        target = sqlite_path(url)
        target.parent.mkdir(parents=True, exist_ok=True)
        existed = target.exists()
        tmp = target.with_name(f".{target.name}.restoring")
        try:
            src = _load(tmp, stream, _page_size(target))
            try:
                if finish is not None:
                    _finish_loaded(tmp, finish)
                problems, loaded = _inspect(src)
                why = _verdict(problems, loaded, None)
                if why:
                    raise EngineError(f"the loaded dump {why}; {NOTHING_RESTORED}")
                _swap_in(src, target, loaded)
            finally:
                src.close()
        except BaseException:
            if not existed:  # as it was: absent
                _remove(target)
            raise
        finally:
            _remove(tmp)
            _private(target)


def _finish_loaded(tmp: Path, finish) -> None:
    """Finish the loaded copy (the target is not touched yet: a failure here
    leaves it as it was)."""
    from sqlalchemy import create_engine

    engine = create_engine(f"sqlite:///{tmp}")
    try:
        with engine.begin() as conn:
            finish.apply(conn)
    except Exception as exc:
        log.warning("SQLite restore: finishing the loaded copy failed: %s", exc)
        why = shown_reason(exc)
        raise EngineError(f"the loaded archive could not be brought up to date (schema "
                          f"upgrade, audit trail, erasures: {why}); {NOTHING_RESTORED}") from None
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- the swap

class _GaveUp(Exception):
    """The target stayed locked past BUSY_SECONDS: abandon the backup step."""


def _connect(path: Path) -> sqlite3.Connection:
    """A connection without implicit transactions that waits for other locks."""
    return sqlite3.connect(path, timeout=BUSY_SECONDS, isolation_level=None)


def _create_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists (SQLite uses the umask)."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))


def _private(path: Path) -> None:
    """Mode 0600 for the database and its ``-wal``/``-shm``: guest data."""
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            os.chmod(f"{path}{suffix}", 0o600)


def _remove(path: Path) -> None:
    """``path`` and the journal files SQLite may have left beside it."""
    for suffix in ("", "-journal", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _page_size(target: Path) -> int:
    """The target's page size: the backup API cannot change it on a WAL database."""
    if not target.exists() or target.stat().st_size == 0:
        return 4096
    try:
        with contextlib.closing(_connect(target)) as con:
            return int(con.execute("PRAGMA page_size").fetchone()[0])
    except sqlite3.Error as exc:
        log.warning("SQLite restore: reading the target's page size failed: %s", exc)
        raise EngineError(f"the target {target.name} cannot be read as an SQLite database; "
                          f"{NOTHING_RESTORED}") from None


def _load(tmp: Path, stream: IO[bytes], page_size: int) -> sqlite3.Connection:
    """Run the dump statement by statement (each screened, under an authorizer that
    denies ATTACH and file or extension access) in one transaction into the new
    private file ``tmp``; return the open connection to it."""
    _remove(tmp)
    _create_private(tmp)
    con = sqlite3.connect(tmp, isolation_level=None)
    try:
        con.execute(f"PRAGMA page_size = {int(page_size)}")
        from guest_backup.engines import sqlitescreen

        con.set_authorizer(sqlitescreen._authorizer)
        screen = sqlitescreen.SQLiteDumpScreen()
        for statement in sqlitescreen._sql_statements(stream):
            screen.check(statement)
            try:
                con.execute(statement)
            except sqlite3.Error as exc:
                log.warning("SQLite restore failed at %r: %s", statement[:200], exc)
                raise EngineError("the SQL dump has an error; nothing was restored") from None
        if con.in_transaction or not screen.committed:
            raise EngineError("the SQL dump is incomplete (no COMMIT); nothing was restored")
        con.set_authorizer(None)
        odd = con.execute("SELECT type, name FROM sqlite_master WHERE type NOT IN (?, ?, ?)",
                          sqlitescreen.SCHEMA_OBJECTS).fetchall()
        if odd:  # a trigger runs as the app on later writes: never from an archive
            raise DumpRefused(f"the SQL dump leaves a {odd[0][0][:20]} in the database, which "
                              f"an SQLite dump of this app never has; {NOTHING_RESTORED}")
        return con
    except BaseException:
        con.close()
        raise


def _inspect(con: sqlite3.Connection) -> tuple[list[str], dict[str, int]]:
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


def _verdict(problems: list[str], counts: dict[str, int],
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
    """The target's current contents into the new private file ``keep``."""
    _remove(keep)
    _create_private(keep)
    with contextlib.closing(sqlite3.connect(keep, isolation_level=None)) as out:
        _backup(dst, out, f"its current contents could not be copied aside; {NOTHING_RESTORED}")


def _put_back(keep: Path, dst: sqlite3.Connection) -> bool:
    """Copy the contents kept aside back into the target; whether that worked."""
    try:
        with contextlib.closing(sqlite3.connect(keep, isolation_level=None)) as old:
            _backup(old, dst, "")
        return _verdict(*_inspect(dst), None) is None
    except (EngineError, sqlite3.Error) as exc:
        log.warning("SQLite restore: putting the previous database back failed: %s", exc)
        return False


def _swap_in(src: sqlite3.Connection, target: Path, loaded: dict[str, int]) -> None:
    """Copy ``src`` into ``target`` through the target's own connection, the old
    contents kept in a private file beside it until the result checked out (and
    put back if it does not); then checkpoint the WAL into the database file."""
    keep = target.with_name(f".{target.name}.before-restore")
    _create_private(target)
    dst = _connect(target)
    kept = False
    try:
        _copy_aside(dst, keep)
        _backup(src, dst, f"{NOTHING_RESTORED}; the database is as it was")
        why = _verdict(*_inspect(dst), loaded)
        if why and _put_back(keep, dst):
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
            _remove(keep)
