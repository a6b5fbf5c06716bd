"""The SQLite engine: the ``sqlite3`` module's own dump and a restore that
builds a new file beside the target and moves it into place only when complete."""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path
from typing import IO, Callable, Iterator

from sqlalchemy import func
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.sql import ColumnElement

from ..errors import EngineError
from . import CHUNK, EngineSettings, ToolInfo

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

    def is_empty(self, url: str) -> bool:
        path = sqlite_path(url)
        if not path.exists() or path.stat().st_size == 0:
            return True
        with sqlite3.connect(path) as con:
            return con.execute("SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
                               ).fetchone()[0] == 0

    def clear(self, url: str) -> None:
        path = sqlite_path(url)
        path.unlink(missing_ok=True)

    def restore(self, settings: EngineSettings, url: str, stream: IO[bytes]) -> None:
        """Run the dump statement by statement in one transaction into a new file
        beside the target, and move it into place only when all of it worked."""
        target = sqlite_path(url)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.restoring")
        tmp.unlink(missing_ok=True)
        con = sqlite3.connect(tmp, isolation_level=None)
        try:
            for statement in _sql_statements(stream):
                upper = statement.lstrip()[:20].upper()
                if upper.startswith(("BEGIN", "COMMIT")):
                    con.execute(statement)
                    continue
                try:
                    con.execute(statement)
                except sqlite3.Error as exc:
                    log.warning("SQLite restore failed at %r: %s", statement[:200], exc)
                    raise EngineError("the SQL dump has an error; nothing was restored") from None
            if con.in_transaction:
                raise EngineError("the SQL dump is incomplete (no COMMIT); nothing was restored")
            con.close()
            os.replace(tmp, target)
        except BaseException:
            con.close()
            tmp.unlink(missing_ok=True)
            raise


def _sql_statements(stream: IO[bytes]) -> Iterator[str]:
    """Split a dump into complete statements without reading it all."""
    pending: list[str] = []
    for raw in stream:
        pending.append(raw.decode("utf-8"))
        candidate = "".join(pending)
        if sqlite3.complete_statement(candidate):
            yield candidate
            pending = []
    if "".join(pending).strip():
        raise EngineError("the SQL dump ends in the middle of a statement; nothing was restored")
