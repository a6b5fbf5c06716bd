"""The SQLite engine: the ``sqlite3`` module's own dump and a restore that
builds a new file beside the target and moves it into place only when complete."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterator

from sqlalchemy import func
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.sql import ColumnElement

from guest_backup.errors import EngineError
from guest_backup.engines import CHUNK, EngineSettings, ToolInfo

log = logging.getLogger(__name__)

SQLITE_TRAILER = b"COMMIT;"

def sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise EngineError("an in-memory SQLite database cannot be backed up or restored")
    return Path(database)


class SQLiteEngine:
    """Python's own ``sqlite3`` dump (``BEGIN TRANSACTION; ... COMMIT;``), restored
    into a new file moved into place only when all of it loaded."""

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

    def timestamp_text(self, column: ColumnElement) -> ColumnElement:
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
            with sqlite3.connect(path) as con:
                return con.execute("SELECT count(*) FROM sqlite_master "
                                   "WHERE name NOT LIKE 'sqlite_%'").fetchone()[0] == 0
        except sqlite3.Error:
            raise EngineError(f"the target {path.name} is not an SQLite database") from None

    def screen(self) -> "SQLiteDumpScreen":
        return SQLiteDumpScreen()

    @contextlib.contextmanager
    def scratch(self, url: str) -> Iterator[str]:
        """A temporary database file for a restore drill, removed afterwards."""
        folder = tempfile.mkdtemp(prefix="gr-drill-")
        try:
            yield f"sqlite:///{folder}/drill.db"
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def restore(self, settings: EngineSettings, url: str, stream: IO[bytes], *,
                replace: bool = False) -> None:
        """Run the dump statement by statement (each screened, under an authorizer
        that denies ATTACH and file or extension access) in one transaction into a
        new file beside the target, and move it into place only when all of it
        worked: with ``replace`` the old file is swapped atomically, never emptied."""
        target = sqlite_path(url)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.restoring")
        tmp.unlink(missing_ok=True)
        con = sqlite3.connect(tmp, isolation_level=None)
        con.set_authorizer(_authorizer)
        screen = SQLiteDumpScreen()
        try:
            for statement in _sql_statements(stream):
                screen.check(statement)
                try:
                    con.execute(statement)
                except sqlite3.Error as exc:
                    log.warning("SQLite restore failed at %r: %s", statement[:200], exc)
                    raise EngineError("the SQL dump has an error; nothing was restored") from None
            if con.in_transaction or not screen.committed:
                raise EngineError("the SQL dump is incomplete (no COMMIT); nothing was restored")
            con.close()
            os.replace(tmp, target)
            os.chmod(target, 0o600)
        except BaseException:
            con.close()
            tmp.unlink(missing_ok=True)
            raise


#: What Python's ``iterdump`` writes; anything else refuses the dump.
_STATEMENT = re.compile(
    r"""\s*(?:BEGIN\ TRANSACTION|COMMIT
    |CREATE\ (?:TABLE|INDEX|UNIQUE\ INDEX|VIEW)\b
    |INSERT\ INTO\ (?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_]*)\ VALUES\(
    |DELETE\ FROM\ "?sqlite_sequence"?
    |ANALYZE\ "?sqlite_master"?
    |PRAGMA\ (?:foreign_keys|writable_schema)\ ?=\ ?(?:ON|OFF))""", re.I | re.X)
_LITERALS = re.compile(r"'(?:[^']|'')*'|X'[0-9A-Fa-f]*'|NULL", re.I)
_NUMBERS_ONLY = re.compile(r"[\s0-9.eE+\-,();]*")
_DENIED_FUNCTIONS = {"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"}


class SQLiteDumpScreen:
    """Checks an SQLite dump statement by statement: only iterdump's statements,
    and INSERTs of literal values only (no function calls, no subqueries)."""

    def __init__(self) -> None:
        self._partial = b""
        self._pending: list[str] = []
        self.committed = False

    def check(self, statement: str) -> None:
        m = _STATEMENT.match(statement)
        if not m:
            words = " ".join(statement.split()[:2])[:30]
            raise EngineError(f"the SQL dump holds a statement an SQLite dump does not have "
                              f"({words} …); nothing was restored")
        if m.group().strip().upper().startswith("INSERT"):
            values = statement[m.end():].rstrip().rstrip(";")
            if not _NUMBERS_ONLY.fullmatch(_LITERALS.sub("", values)):
                raise EngineError("the SQL dump inserts something other than plain values; "
                                  "nothing was restored")
        self.committed = statement.strip().upper().startswith("COMMIT")

    def feed(self, chunk: bytes) -> None:
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._pending.append(line.decode("utf-8", "replace") + "\n")
            candidate = "".join(self._pending)
            if sqlite3.complete_statement(candidate):
                self._pending = []
                self.check(candidate)

    def finish(self) -> None:
        if self._partial.strip() or "".join(self._pending).strip():
            raise EngineError("the SQL dump ends in the middle of a statement")
        if not self.committed:
            raise EngineError("the SQL dump is incomplete (no COMMIT)")


def _authorizer(action: int, arg1, arg2, database, source) -> int:
    """Deny what reaches beyond the new database file."""
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _DENIED_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() not in ("foreign_keys",
                                                                       "writable_schema"):
        return sqlite3.SQLITE_DENY
    if database not in (None, "main", "temp"):
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def _sql_statements(stream: IO[bytes]) -> Iterator[str]:
    """Split a dump into complete statements without reading it all."""
    pending: list[str] = []
    for raw in _lines(stream):
        pending.append(raw.decode("utf-8"))
        candidate = "".join(pending)
        if sqlite3.complete_statement(candidate):
            yield candidate
            pending = []
    if "".join(pending).strip():
        raise EngineError("the SQL dump ends in the middle of a statement; nothing was restored")


def _lines(stream: IO[bytes]) -> Iterator[bytes]:
    partial = b""
    while chunk := stream.read(CHUNK):
        lines = (partial + chunk).split(b"\n")
        partial = lines.pop()
        for line in lines:
            yield line + b"\n"
    if partial:
        yield partial
