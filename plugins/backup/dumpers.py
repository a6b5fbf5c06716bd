"""Database dumpers: one per engine, registered through the
``register_database_dumpers`` hook (the built-in PostgreSQL and SQLite ones below
are registered the same way, by ``plugins.backup``).

A dumper streams a plain-SQL dump into a writer, says whether a dump is
complete, restores a dump from a stream into an empty database, and reports
its tool. It never puts a password on a command line and never lets a tool's
raw error text escape: :class:`DumpError` carries a message safe for users,
the detail goes to the log with the password masked.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator, Protocol

from sqlalchemy import text
from sqlalchemy.engine import Connection, URL, make_url

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
PG_TRAILER = b"-- PostgreSQL database dump complete"
SQLITE_TRAILER = b"COMMIT;"


class DumpError(RuntimeError):
    """A dump or restore failed; the message is safe to show to a user."""


@dataclass
class ToolInfo:
    """The external tool a dumper uses, as ``status`` and the manifest report it."""

    name: str
    version: str | None
    path: str | None
    ok: bool
    detail: str


class DatabaseDumper(Protocol):
    """How the system backup handles one database engine."""

    dialect: str

    def is_complete(self, tail: bytes) -> bool:
        """Whether a dump ending in ``tail`` (its last 256 bytes) is complete."""

    def tool(self, settings: "DumperSettings", conn: Connection | None) -> ToolInfo: ...

    def server_version(self, conn: Connection) -> str: ...

    def dump(self, settings: "DumperSettings", conn: Connection,
             write: Callable[[bytes], None]) -> None:
        """Stream a plain-SQL dump of the database, consistent with the snapshot
        of ``conn`` (an open transaction the caller also counts rows in)."""

    def begin_snapshot(self, conn: Connection) -> None:
        """Start the transaction whose snapshot the dump and the row counts share."""

    def is_empty(self, url: str) -> bool: ...

    def clear(self, url: str) -> None:
        """Remove every object from the target (``restore --replace``)."""

    def restore(self, settings: "DumperSettings", url: str, stream: IO[bytes]) -> None:
        """Load a dump into an empty database; stop at the first error, change nothing then."""


@dataclass
class DumperSettings:
    """Plain settings, so dumpers work without Flask."""

    database_url: str
    pg_dump: str = "pg_dump"
    psql: str = "psql"


def mask(text_: str, url: str | URL) -> str:
    """``text_`` with the URL's password (if any) replaced by ``***``."""
    password = make_url(str(url)).password if not isinstance(url, URL) else url.password
    return text_.replace(password, "***") if password else text_


# --- PostgreSQL -----------------------------------------------------------------

PG_ENV = {"host": "PGHOST", "port": "PGPORT", "username": "PGUSER", "password": "PGPASSWORD",
          "database": "PGDATABASE"}
PG_QUERY_ENV = {"sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT", "sslcert": "PGSSLCERT",
                "sslkey": "PGSSLKEY", "connect_timeout": "PGCONNECT_TIMEOUT",
                "application_name": "PGAPPNAME", "options": "PGOPTIONS"}


def pg_environment(url: str) -> dict[str, str]:
    """Connection settings for libpq tools as environment variables: the password
    never appears in a process's argument list."""
    u = make_url(url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    for attr, var in PG_ENV.items():
        value = getattr(u, attr)
        if value not in (None, ""):
            env[var] = str(value)
    for key, var in PG_QUERY_ENV.items():
        if key in u.query:
            value = u.query[key]
            env[var] = value if isinstance(value, str) else value[0]
    env.setdefault("PGCONNECT_TIMEOUT", "10")
    return env


def _major(version: str) -> int:
    m = re.search(r"(\d+)(?:\.(\d+))?", version)
    if not m:
        return 0
    major = int(m.group(1))
    return major if major >= 10 else major * 100 + int(m.group(2) or 0)  # 9.6 -> 906


def _tool_version(path: str) -> str | None:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"(\d+(?:\.\d+)*)", out.stdout)
    return m.group(1) if out.returncode == 0 and m else None


class PostgresDumper:
    dialect = "postgresql"

    def is_complete(self, tail: bytes) -> bool:
        return PG_TRAILER in tail  # pg_dump's "-- PostgreSQL database dump complete"

    def tool(self, settings: DumperSettings, conn: Connection | None) -> ToolInfo:
        path = shutil.which(settings.pg_dump)
        if path is None:
            return ToolInfo("pg_dump", None, None, False,
                            f"pg_dump not found (PATH or PG_DUMP={settings.pg_dump!r})")
        version = _tool_version(path)
        if version is None:
            return ToolInfo("pg_dump", None, path, False, f"{path} did not report a version")
        if conn is None:
            return ToolInfo("pg_dump", version, path, True, f"pg_dump {version} at {path}")
        server = self.server_version(conn)
        if _major(version) < _major(server):
            return ToolInfo("pg_dump", version, path, False,
                            f"pg_dump {version} at {path} cannot dump server {server}: "
                            f"install pg_dump {_major(server)} or newer")
        return ToolInfo("pg_dump", version, path, True,
                        f"pg_dump {version} at {path}, can dump server {server}")

    def server_version(self, conn: Connection) -> str:
        return conn.exec_driver_sql("SHOW server_version").scalar_one().split()[0]

    def begin_snapshot(self, conn: Connection) -> None:
        conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def dump(self, settings: DumperSettings, conn: Connection,
             write: Callable[[bytes], None]) -> None:
        tool = self.tool(settings, conn)
        if not tool.ok:
            raise DumpError(tool.detail)
        snapshot = conn.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()
        args = [tool.path, "--format=plain", "--no-owner", "--no-privileges", "--encoding=UTF8",
                f"--snapshot={snapshot}"]
        env = pg_environment(settings.database_url)
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, env=env,
                                    stdin=subprocess.DEVNULL)
            try:
                while chunk := proc.stdout.read(CHUNK):
                    write(chunk)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            finally:
                proc.stdout.close()
            rc = proc.wait()
            if rc != 0:
                err.seek(0)
                detail = mask(err.read(4000).decode("utf-8", "replace"), settings.database_url)
                log.warning("pg_dump exited with %s: %s", rc, detail.strip())
                raise DumpError(_pg_reason(detail, "pg_dump"))

    def is_empty(self, url: str) -> bool:
        from sqlalchemy import create_engine

        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                n = conn.execute(text(
                    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') "
                    "AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%' "
                    "AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')")).scalar_one()
                return n == 0
        except Exception as exc:
            raise DumpError(f"cannot connect to the target database: {_connect_reason(exc)}") from None
        finally:
            engine.dispose()

    def clear(self, url: str) -> None:
        from sqlalchemy import create_engine

        engine = create_engine(url)
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql("DROP SCHEMA IF EXISTS public CASCADE")
                conn.exec_driver_sql("CREATE SCHEMA public")
        finally:
            engine.dispose()

    def restore(self, settings: DumperSettings, url: str, stream: IO[bytes]) -> None:
        path = shutil.which(settings.psql)
        if path is None:
            raise DumpError(f"psql not found (PATH or PSQL={settings.psql!r})")
        args = [path, "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction", "-f", "-"]
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=err, env=pg_environment(url))
            try:
                while chunk := stream.read(CHUNK):
                    proc.stdin.write(chunk)
                proc.stdin.close()
            except BrokenPipeError:
                pass  # psql stopped at an error; its exit code says so
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            rc = proc.wait()
            if rc != 0:
                err.seek(0)
                detail = mask(err.read(4000).decode("utf-8", "replace"), url)
                log.warning("psql exited with %s: %s", rc, detail.strip())
                raise DumpError(_pg_reason(detail, "psql") + "; nothing was restored")


def _pg_reason(stderr: str, tool: str) -> str:
    """A short, safe reason from a libpq tool's stderr (never the text itself)."""
    lowered = stderr.lower()
    if "password authentication failed" in lowered or "no password supplied" in lowered:
        return f"{tool} could not log in to the database (wrong user or password)"
    if "could not connect" in lowered or "connection refused" in lowered or "connection to server" in lowered:
        return f"{tool} could not connect to the database server"
    if "does not exist" in lowered and "database" in lowered:
        return f"{tool}: the database does not exist"
    if "server version mismatch" in lowered:
        return f"{tool} is older than the database server"
    if "permission denied" in lowered:
        return f"{tool}: permission denied in the database"
    return f"{tool} failed (details are in the server log)"


def _connect_reason(exc: Exception) -> str:
    return _pg_reason(str(getattr(exc, "orig", exc)), "the connection").split(": ", 1)[-1]


# --- SQLite ---------------------------------------------------------------------

def sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise DumpError("an in-memory SQLite database cannot be backed up or restored")
    return Path(database)


class SQLiteDumper:
    """Python's own ``sqlite3`` dump: ``BEGIN TRANSACTION; ... COMMIT;``."""

    dialect = "sqlite"

    def is_complete(self, tail: bytes) -> bool:
        return tail.rstrip().endswith(SQLITE_TRAILER)

    def tool(self, settings: DumperSettings, conn: Connection | None) -> ToolInfo:
        return ToolInfo("python-sqlite3", sqlite3.sqlite_version, None, True,
                        f"built-in (SQLite {sqlite3.sqlite_version})")

    def server_version(self, conn: Connection) -> str:
        return conn.exec_driver_sql("SELECT sqlite_version()").scalar_one()

    def begin_snapshot(self, conn: Connection) -> None:
        # pysqlite opens no transaction for reads: start one, and its snapshot
        conn.exec_driver_sql("BEGIN")
        conn.exec_driver_sql("SELECT count(*) FROM sqlite_master")

    def dump(self, settings: DumperSettings, conn: Connection,
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

    def restore(self, settings: DumperSettings, url: str, stream: IO[bytes]) -> None:
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
                    raise DumpError("the SQL dump has an error; nothing was restored") from None
            if con.in_transaction:
                raise DumpError("the SQL dump is incomplete (no COMMIT); nothing was restored")
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
        raise DumpError("the SQL dump ends in the middle of a statement; nothing was restored")
