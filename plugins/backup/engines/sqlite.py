"""The SQLite engine: the ``sqlite3`` module's own dump and a restore that loads
it into a new file beside the target, checks it, and copies it into the live
database with SQLite's backup API (never a file moved over a database whose
``-wal``/``-shm`` would then be applied to the wrong file), checked again after
(that swap: ``sqlite_swap.py``)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sqlite3
import tempfile
import threading
from pathlib import Path
from typing import IO, TYPE_CHECKING, Callable, Iterator

from guest_backup.errors import BackupBusy, EngineError, shown_reason
from guest_backup.engines import sqlite_swap as swap
from guest_backup.engines.sqlite_swap import (NOTHING_RESTORED, connect, create_private, private,
                                              remove)
from guest_backup.engines import (CHUNK, DumpRefused, EngineSettings, ToolInfo, file_lock,
                                   parse_url)

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection
    from sqlalchemy.sql import ColumnElement

    from guest_backup.engines.sqlitescreen import SQLiteDumpScreen

log = logging.getLogger(__name__)

SQLITE_TRAILER = b"COMMIT;"


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
        if conn is not None:  # a backup, `status`: a killed restore's copy goes (if free)
            _tidy_if_free(conn.engine.url.database)
        return ToolInfo("python-sqlite3", sqlite3.sqlite_version, None, True,
                        f"built-in (SQLite {sqlite3.sqlite_version})")

    def server_version(self, conn: Connection) -> str:
        return conn.exec_driver_sql("SELECT sqlite_version()").scalar_one()

    def begin_snapshot(self, conn: Connection) -> None:
        # pysqlite opens no transaction for reads: start one, and take its snapshot
        conn.exec_driver_sql("BEGIN")
        conn.exec_driver_sql("SELECT count(*) FROM sqlite_master")

    def exclusive(self, url: str, wait: float = 0.0):
        """An ``flock`` on ``<database file>.lock`` beside the database, its real
        path (a symlinked name of the same file skipped it), nothing for an
        in-memory one; once held, a killed restore's loaded copy goes."""
        if parse_url(url).database in (None, "", ":memory:"):
            return contextlib.nullcontext()
        return _locked(sqlite_path(url).resolve(), wait)

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
            with contextlib.closing(connect(path)) as con:
                return con.execute("SELECT count(*) FROM sqlite_master "
                                   "WHERE name NOT LIKE 'sqlite_%'").fetchone()[0] == 0
        except sqlite3.Error:
            raise EngineError(f"the target {path.name} is not an SQLite database") from None

    def screen(self) -> "SQLiteDumpScreen":
        from guest_backup.engines import sqlitescreen  # only when a dump is read

        return sqlitescreen.SQLiteDumpScreen()

    @contextlib.contextmanager
    def scratch(self, url: str) -> Iterator[str]:
        """A temporary database file for a restore drill, removed afterwards; its
        folder named with this process, so that the next drill removes one a
        killed drill left (``ops/drill.py``)."""
        folder = tempfile.mkdtemp(prefix=f"gr-drill-{os.getpid()}-")
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
        target = sqlite_path(url).resolve()  # the lock's and the copies' names
        target.parent.mkdir(parents=True, exist_ok=True)
        existed = target.exists()
        tmp = target.with_name(f".{target.name}.restoring")
        with _terminated_as_interrupted():
            self._restore(target, tmp, existed, stream, finish)

    def _restore(self, target: Path, tmp: Path, existed: bool, stream: IO[bytes],
                 finish) -> None:
        try:
            src = _load(tmp, stream, _page_size(target))
            try:
                if finish is not None:
                    _finish_loaded(tmp, finish)
                    only_tables_and_indexes(src)  # as the upgrade left it, too
                problems, loaded = swap.inspect(src)
                why = swap.verdict(problems, loaded, None)
                if why:
                    raise EngineError(f"the loaded dump {why}; {NOTHING_RESTORED}")
                swap.swap_in(src, target, loaded, getattr(finish, "before_swap", None))
            finally:
                src.close()
        except BaseException:
            if not existed:  # as it was: absent
                remove(target)
            raise
        finally:
            remove(tmp)
            private(target)


@contextlib.contextmanager
def _locked(path: Path, wait: float) -> Iterator[None]:
    """The database's lock, and what a restore killed with SIGKILL left removed."""
    with file_lock(path.with_name(path.name + ".lock"), wait):
        swap.tidy(path)
        yield


def _tidy_if_free(database: str | None) -> None:
    """Remove a killed restore's loaded copy beside ``database`` if there is one
    and no restore, erasure or selective restore holds the lock (never waits)."""
    if database in (None, "", ":memory:"):
        return
    path = Path(database).resolve()
    if swap.leftovers(path):
        with contextlib.suppress(BackupBusy, OSError), _locked(path, 0.0):
            pass


@contextlib.contextmanager
def _terminated_as_interrupted() -> Iterator[None]:
    """SIGTERM (systemctl stop, kill, a timeout) taken as Ctrl-C while a restore
    runs: KeyboardInterrupt, so that the loaded copy is removed, the target is left
    as it was and the restore is audited ``aborted``. Before, SIGTERM ended the
    process where it stood and the copy, holding guests erased since the backup,
    stayed beside the database. Only in the main thread, and where nothing else
    handles SIGTERM (a server or a worker keeps its own way of stopping)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _finish_loaded(tmp: Path, finish) -> None:
    """Finish the loaded copy (the target is not touched yet: a failure here
    leaves it as it was)."""
    from sqlalchemy import create_engine

    engine = create_engine(f"sqlite:///{tmp}")
    try:
        with engine.begin() as conn:
            finish.apply(conn)
    except Exception as exc:
        _no_room(getattr(exc, "orig", exc), tmp)
        log.warning("SQLite restore: finishing the loaded copy failed: %s", exc)
        why = shown_reason(exc)
        raise EngineError(f"the loaded archive could not be brought up to date (schema "
                          f"upgrade, audit trail, erasures: {why}); {NOTHING_RESTORED}") from None
    finally:
        engine.dispose()


def _page_size(target: Path) -> int:
    """The target's page size: the backup API cannot change it on a WAL database."""
    if not target.exists() or target.stat().st_size == 0:
        return 4096
    try:
        with contextlib.closing(connect(target)) as con:
            return int(con.execute("PRAGMA page_size").fetchone()[0])
    except sqlite3.Error as exc:
        log.warning("SQLite restore: reading the target's page size failed: %s", exc)
        raise EngineError(f"the target {target.name} cannot be read as an SQLite database; "
                          f"{NOTHING_RESTORED}") from None


def _load(tmp: Path, stream: IO[bytes], page_size: int) -> sqlite3.Connection:
    """Run the dump statement by statement (each screened, under an authorizer that
    denies ATTACH and file or extension access) in one transaction into the new
    private file ``tmp``; return the open connection to it."""
    remove(tmp)
    create_private(tmp)
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
                _no_room(exc, tmp)
                log.warning("SQLite restore failed at %r: %s", statement[:200], exc)
                raise EngineError("the SQL dump has an error; nothing was restored") from None
        if con.in_transaction or not screen.committed:
            raise EngineError("the SQL dump is incomplete (no COMMIT); nothing was restored")
        con.set_authorizer(None)
        only_tables_and_indexes(con)
        return con
    except BaseException:
        con.close()
        raise


def only_tables_and_indexes(con: sqlite3.Connection) -> None:
    """DumpRefused unless every object of the loaded copy is a table or an index
    (:data:`~guest_backup.engines.sqlitescreen.SCHEMA_OBJECTS`). A trigger runs as
    the app on later writes, a view on later reads: a view named ``trip`` (the
    table renamed beside it) showed every guest's document number on the public
    trip list. Tables and indexes share one namespace, so no name the app's models
    know can then be anything but a table (or missing, which the app reports)."""
    from guest_backup.engines.sqlitescreen import SCHEMA_OBJECTS

    marks = ", ".join("?" * len(SCHEMA_OBJECTS))
    odd = con.execute(f"SELECT type, name FROM sqlite_master WHERE type NOT IN ({marks}) "
                      f"ORDER BY type, name", SCHEMA_OBJECTS).fetchall()
    if odd:
        raise DumpRefused(f"the SQL dump leaves a {odd[0][0][:20]} in the database, which "
                          f"an SQLite dump of this app never has; {NOTHING_RESTORED}")


#: SQLITE_FULL, SQLITE_IOERR (primary codes): the disk, not the dump
_DISK_CODES = (13, 10)


def _no_room(exc: BaseException, tmp: Path) -> None:
    """An EngineError naming the folder when ``exc`` is SQLite finding no room
    (disk full, a quota, a file size limit: SQLITE_FULL or SQLITE_IOERR) for the
    copy being loaded in ``tmp``'s folder. Before, that was "the SQL dump has an
    error", blaming a good archive (restore and restore drill alike)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(exc, sqlite3.Error) and code is not None and (code & 0xFF) in _DISK_CODES:
        log.warning("SQLite restore: no room for the loaded copy in %s: %s", tmp.parent, exc)
        raise EngineError(f"there is no room to load the copy in {tmp.parent} ({exc}); "
                          f"{NOTHING_RESTORED}") from None
