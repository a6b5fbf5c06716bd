"""The PostgreSQL engine: ``pg_dump`` and ``psql`` with the connection settings
in their environment (never a password in an argument list), their stderr in the
log only (password masked), a short safe reason for the user."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from typing import IO, Callable, Iterator

from sqlalchemy import func, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.sql import ColumnElement

from guest_backup.errors import EngineError
from guest_backup.engines import CHUNK, EngineSettings, ToolInfo, mask
from guest_backup.engines.pgscreen import PgDumpScreen

log = logging.getLogger(__name__)

PG_TRAILER = b"-- PostgreSQL database dump complete"
COMMITTED = b"gr-restore-committed"

PG_ENV = {"host": "PGHOST", "port": "PGPORT", "username": "PGUSER", "password": "PGPASSWORD",
          "database": "PGDATABASE"}
PG_KEEP_ENV = frozenset({"PGPASSWORD", "PGPASSFILE", "PGSSLMODE", "PGSSLROOTCERT", "PGSSLCERT",
                         "PGSSLKEY"})
PG_QUERY_ENV = {"sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT", "sslcert": "PGSSLCERT",
                "sslkey": "PGSSLKEY", "connect_timeout": "PGCONNECT_TIMEOUT",
                "application_name": "PGAPPNAME", "options": "PGOPTIONS"}


def pg_environment(url: str) -> dict[str, str]:
    """Connection settings for libpq tools as environment variables: the password
    never appears in a process's argument list."""
    u = make_url(url)
    # the URL says where to connect; the environment may still give the password
    # (PGPASSWORD, PGPASSFILE) and TLS files, as for any libpq program
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") or k in PG_KEEP_ENV}
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
        # a snapshot transaction waits on its reader (a slow client, pg_dump): the app's
        # idle-in-transaction timeout is for stalled requests, not for this one
        conn.exec_driver_sql("SET LOCAL idle_in_transaction_session_timeout = 0")

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

    def screen(self) -> PgDumpScreen:
        return PgDumpScreen()

    @contextlib.contextmanager
    def scratch(self, url: str) -> Iterator[str]:
        """A new, empty database on the same server for a restore drill, dropped
        afterwards whatever happens."""
        name = f"gr_drill_{uuid.uuid4().hex[:12]}"
        target = make_url(url).set(database=name).render_as_string(hide_password=False)
        self._create_database(target)
        try:
            yield target
        finally:
            from sqlalchemy import create_engine

            engine = create_engine(make_url(url).set(database="postgres"),
                                   isolation_level="AUTOCOMMIT")
            try:
                with engine.connect() as conn:
                    conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except Exception:
                log.warning("could not drop the drill database %s", name)
            finally:
                engine.dispose()

    def prepare_target(self, url: str) -> bool:
        """Whether the target holds no tables; a database that does not exist is
        created when this role may, else named in a one-line error."""
        try:
            return self._count_relations(url) == 0
        except EngineError as exc:
            if "does not exist" not in str(exc):
                raise
        self._create_database(url)
        return True

    def _count_relations(self, url: str) -> int:
        from sqlalchemy import create_engine

        engine = create_engine(url, connect_args={"connect_timeout": 10})
        try:
            with engine.connect() as conn:
                return conn.execute(text(
                    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') "
                    "AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%' "
                    "AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')")).scalar_one()
        except Exception as exc:
            raise EngineError(f"cannot connect to the target database: {_connect_reason(exc)}") from None
        finally:
            engine.dispose()

    def _create_database(self, url: str) -> None:
        from sqlalchemy import create_engine

        target = make_url(url)
        name = target.database or ""
        engine = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT",
                               connect_args={"connect_timeout": 10})
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql('CREATE DATABASE "%s"' % name.replace('"', '""'))
            log.info("created the target database %s", name)
        except Exception as exc:
            log.warning("cannot create database %s: %s", name, mask(str(exc), url))
            raise EngineError(f"the target database {name!r} does not exist and this role may "
                              f"not create it; create it first") from None
        finally:
            engine.dispose()

    def restore(self, settings: EngineSettings, url: str, stream: IO[bytes], *,
                replace: bool = False) -> None:
        """Load the dump with ``psql`` (``ON_ERROR_STOP``) in one transaction that
        we open and commit ourselves: every chunk is screened before psql sees it,
        and ``COMMIT`` is sent only after the whole member was read and checked
        (``stream`` raises at its end when the bytes differ from the verified
        ones). With ``replace`` the old schema is dropped inside that same
        transaction, so a failed load leaves the target exactly as it was."""
        path = shutil.which(settings.psql)
        if path is None:
            raise EngineError(f"psql not found (PATH or PSQL={settings.psql!r})")
        screen = PgDumpScreen()
        args = [path, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"]
        prologue = b"BEGIN;\n"
        if replace:
            prologue += b"DROP SCHEMA IF EXISTS public CASCADE;\nCREATE SCHEMA public;\n"
        # our own epilogue (not the dump's): psql prints the marker only once the
        # COMMIT succeeded, so an input cut short (psql exits 0 and rolls back) is no success
        epilogue = b"\nCOMMIT;\n\\echo " + COMMITTED + b"\n"
        with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as out:
            proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=out, stderr=err,
                                    env=pg_environment(url))
            try:
                proc.stdin.write(prologue)
                while chunk := stream.read(CHUNK):
                    screen.feed(chunk)
                    proc.stdin.write(chunk)
                screen.finish()
                proc.stdin.write(epilogue)
                proc.stdin.close()
            except BrokenPipeError:
                pass  # psql stopped at an error; its exit code says so
            except BaseException:
                proc.kill()  # the open transaction dies with the connection
                proc.wait()
                raise
            rc = proc.wait()
            out.seek(0)
            committed = COMMITTED in out.read(64 * 1024)
            if rc != 0 or not committed:
                err.seek(0)
                detail = mask(err.read(4000).decode("utf-8", "replace"), url)
                log.warning("psql exited with %s (committed: %s): %s", rc, committed,
                            detail.strip())
                reason = _pg_reason(detail, "psql") if rc else "psql ended before the commit"
                raise EngineError(reason + "; nothing was restored, the target database is as "
                                  "it was")


def _pg_reason(stderr: str, tool: str) -> str:
    """A short, safe reason from a libpq tool's stderr (never the text itself)."""
    lowered = stderr.lower()
    if "password authentication failed" in lowered or "no password supplied" in lowered:
        return f"{tool} could not log in to the database (wrong user or password)"
    if "does not exist" in lowered and "database" in lowered:
        return f"{tool}: the database does not exist"
    if "could not connect" in lowered or "connection refused" in lowered or "connection to server" in lowered:
        return f"{tool} could not connect to the database server"
    if "server version mismatch" in lowered:
        return f"{tool} is older than the database server"
    if "permission denied" in lowered:
        return f"{tool}: permission denied in the database"
    return f"{tool} failed (details are in the server log)"


def _connect_reason(exc: Exception) -> str:
    return _pg_reason(str(getattr(exc, "orig", exc)), "the connection").split(": ", 1)[-1]
