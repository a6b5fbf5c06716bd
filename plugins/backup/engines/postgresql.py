"""The PostgreSQL engine: ``pg_dump`` and ``psql`` with the connection settings
in their environment (never a password in an argument list), their stderr in the
log only (password masked), a short safe reason for the user."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
from typing import IO, Callable

from sqlalchemy import func, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.sql import ColumnElement

from ..errors import EngineError
from . import CHUNK, EngineSettings, ToolInfo, mask

log = logging.getLogger(__name__)

PG_TRAILER = b"-- PostgreSQL database dump complete"

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


class PostgresEngine:
    """``pg_dump`` with the snapshot the row counts come from; ``psql`` in one
    transaction to restore; ``to_char`` for timestamps."""

    dialect = "postgresql"

    def is_complete(self, tail: bytes) -> bool:
        return PG_TRAILER in tail  # pg_dump's "-- PostgreSQL database dump complete"

    def tool(self, settings: EngineSettings, conn: Connection | None) -> ToolInfo:
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
        # plan server-side cursors for all rows, not the first 10%
        conn.exec_driver_sql("SET LOCAL cursor_tuple_fraction = 1.0")

    def timestamp_text(self, column: ColumnElement) -> ColumnElement:
        return func.to_char(column, "YYYY-MM-DD HH24:MI:SS")

    def dump(self, settings: EngineSettings, conn: Connection,
             write: Callable[[bytes], None]) -> None:
        tool = self.tool(settings, conn)
        if not tool.ok:
            raise EngineError(tool.detail)
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
                raise EngineError(_pg_reason(detail, "pg_dump"))

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
            raise EngineError(f"cannot connect to the target database: {_connect_reason(exc)}") from None
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

    def restore(self, settings: EngineSettings, url: str, stream: IO[bytes]) -> None:
        path = shutil.which(settings.psql)
        if path is None:
            raise EngineError(f"psql not found (PATH or PSQL={settings.psql!r})")
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
                raise EngineError(_pg_reason(detail, "psql") + "; nothing was restored")


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
