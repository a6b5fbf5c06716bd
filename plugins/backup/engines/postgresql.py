"""The PostgreSQL engine: ``pg_dump`` and ``psql`` with the connection settings
in their environment, their stderr in the log only, a short safe reason for the
user. A restore loads the screened dump after our ``SET LOCAL ROLE`` to the
restore role (no superuser, no server files or programs; CREATE on ``public``
for the load), psql restricted by a key of ours; in the same transaction the
objects are handed to the connecting user (``REASSIGN OWNED``) and the role's
grants taken back (``DROP OWNED``)."""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import shutil
import subprocess
import tempfile
import uuid
from typing import IO, TYPE_CHECKING, Callable, Iterator

from guest_backup.errors import EngineError
from guest_backup.engines import (CHUNK, TABLES_LOCKED, EngineSettings, ToolInfo, libpq, mask,
                                   parse_url, retry_until, sql)
from guest_backup.engines.pgrole import _connect_reason, _connected, prepare_restore_role
from guest_backup.engines.pgload import feed_psql, load_script, marks, outcome
from guest_backup.engines.psqlsession import PsqlOutput

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement, Connection

    from guest_backup.engines.pgscreen import PgDumpScreen

log = logging.getLogger(__name__)

PG_TRAILER = b"-- PostgreSQL database dump complete"
#: the advisory lock key of a database's restores and erasures ("erase")
TARGET_LOCK = 0x6572617365
#: CREATE DATABASE lost to another one of the same name: duplicate_database, or
#: the catalog's unique index when both ran at the same moment
_CREATED_MEANWHILE = {"42P04", "23505"}
#: what pg_export_snapshot() returns: hexadecimal numbers joined by dashes
_SNAPSHOT_ID = re.compile(r"[0-9A-F]{1,16}(?:-[0-9A-F]{1,16}){1,3}")


def _milliseconds(seconds: float) -> int:
    """A wait in seconds as PostgreSQL's milliseconds (0: without limit)."""
    return max(1, round(seconds * 1000)) if seconds > 0 else 0


def _quoted(conn: Connection, tables: list[str]) -> str:
    quote = conn.dialect.identifier_preparer.quote
    return ", ".join(map(quote, tables))


class PostgresEngine:
    """``pg_dump`` of the row counts' snapshot; ``psql`` to restore; ``to_char``."""

    dialect = "postgresql"

    def is_complete(self, tail: bytes) -> bool:
        return PG_TRAILER in tail  # pg_dump's "-- PostgreSQL database dump complete"

    def tool(self, settings: EngineSettings, conn: Connection | None) -> ToolInfo:
        path = shutil.which(settings.pg_dump)
        if path is None:
            return ToolInfo("pg_dump", None, None, False,
                            f"pg_dump not found (PATH or PG_DUMP={settings.pg_dump!r})")
        version = libpq.tool_version(path)
        if version is None:
            return ToolInfo("pg_dump", None, path, False, f"{path} did not report a version")
        if conn is None:
            return ToolInfo("pg_dump", version, path, True, f"pg_dump {version} at {path}")
        server = self.server_version(conn)
        if libpq.pg_major(version) < libpq.pg_major(server):
            return ToolInfo("pg_dump", version, path, False,
                            f"pg_dump {version} at {path} cannot dump server {server}: "
                            f"install pg_dump {libpq.pg_major(server)} or newer")
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

    def hold_tables(self, conn: Connection, tables: list[str], wait: float) -> None:
        """``LOCK TABLE … IN ACCESS SHARE MODE``, as pg_dump does, but held by the
        snapshot's own transaction: a rewrite (``ALTER TABLE … TYPE``, not
        MVCC-safe) waits for the whole backup (dump, counts, the photo names read
        after them) instead of showing a table empty to the snapshot. The wait is
        ``lock_timeout``, left in force for the transaction."""
        from sqlalchemy.exc import DBAPIError

        conn.exec_driver_sql(f"SET LOCAL lock_timeout = {_milliseconds(wait)}")
        if not tables:
            return
        try:
            conn.exec_driver_sql(f"LOCK TABLE {_quoted(conn, tables)} IN ACCESS SHARE MODE")
        except DBAPIError as exc:
            if getattr(exc.orig, "pgcode", None) != "55P03":  # lock_not_available
                raise
            log.warning("backup: a table stayed locked for %s s", wait)
            raise EngineError(TABLES_LOCKED) from None

    def share_snapshot(self, conn: Connection) -> Callable[[Connection, list[str]], None]:
        """``pg_export_snapshot()``, imported by ``SET TRANSACTION SNAPSHOT`` (as
        ``pg_dump --snapshot`` does) on the other connection, which then locks the
        tables ``IN ACCESS SHARE MODE`` as pg_dump does, ``NOWAIT``: a rewrite of one
        queued behind ``conn``'s locks would wait for it, and it for the rewrite."""
        snapshot = conn.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()
        if not _SNAPSHOT_ID.fullmatch(snapshot):  # it goes into a statement as a literal
            raise EngineError("PostgreSQL returned an unexpected snapshot id")

        def join(other: Connection, tables: list[str]) -> None:
            self.begin_snapshot(other)
            other.exec_driver_sql(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
            if tables:
                other.exec_driver_sql(f"LOCK TABLE {_quoted(other, tables)} "
                                      "IN ACCESS SHARE MODE NOWAIT")
        return join

    @contextlib.contextmanager
    def exclusive(self, url: str, wait: float = 0.0) -> Iterator[None]:
        """A session advisory lock in the database at ``url`` (so across servers
        too), on a connection of its own held until the block ends."""
        with _connected(url, autocommit=True) as conn:
            retry_until(lambda: conn.exec_driver_sql(
                f"SELECT pg_try_advisory_lock({TARGET_LOCK})").scalar_one(), wait)
            try:
                yield
            finally:
                with contextlib.suppress(Exception):  # closing the connection frees it too
                    conn.exec_driver_sql(f"SELECT pg_advisory_unlock({TARGET_LOCK})")

    def timestamp_text(self, column: ColumnElement) -> ColumnElement:
        from sqlalchemy import func
        return func.to_char(column, "YYYY-MM-DD HH24:MI:SS")

    def dump(self, settings: EngineSettings, conn: Connection,
             write: Callable[[bytes], None]) -> None:
        tool = self.tool(settings, conn)
        if not tool.ok:
            raise EngineError(tool.detail)
        snapshot = conn.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()
        args = [tool.path, "--format=plain", "--no-owner", "--no-privileges", "--encoding=UTF8",
                f"--snapshot={snapshot}"]
        if settings.lock_wait > 0:  # pg_dump waits for its own locks without limit
            args.append(f"--lock-wait-timeout={_milliseconds(settings.lock_wait)}")
        env = libpq.pg_environment(settings.database_url)
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
                raise EngineError(libpq.pg_reason(detail, "pg_dump"))

    def screen(self) -> "PgDumpScreen":
        from guest_backup.engines import pgscreen  # its patterns: only when a dump is read

        return pgscreen.PgDumpScreen()

    @contextlib.contextmanager
    def scratch(self, url: str) -> Iterator[str]:
        """A new, empty database on the same server for a restore drill, dropped
        afterwards whatever happens."""
        name = f"gr_drill_{uuid.uuid4().hex[:12]}"
        target = parse_url(url).set(database=name).render_as_string(hide_password=False)
        self._create_database(target, scratch=True)
        try:
            yield target
        finally:
            try:
                with _connected(parse_url(url).set(database="postgres"), autocommit=True) as conn:
                    conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except Exception:
                log.warning("could not drop the drill database %s", name)

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
        try:
            with _connected(url) as conn:
                return conn.execute(sql(
                    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') "
                    "AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%' "
                    "AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')")).scalar_one()
        except Exception as exc:
            raise EngineError("cannot connect to the target database: "
                              f"{_connect_reason(exc)}") from None

    def _create_database(self, url: str, scratch: bool = False) -> None:
        """Create ``url``'s database; refused, one line naming the role and what a
        superuser runs (a drill's or a browse copy's scratch database has a made-up
        name: "create it first" would be no advice at all)."""
        target = parse_url(url)
        name = target.database or ""
        try:
            with _connected(target.set(database="postgres"), autocommit=True) as conn:
                conn.exec_driver_sql('CREATE DATABASE "%s"' % name.replace('"', '""'))
            log.info("created the target database %s", name)
        except Exception as exc:
            code = getattr(getattr(exc, "orig", None), "pgcode", None)
            if code in _CREATED_MEANWHILE:
                return  # another restore created it first: the lock decides which goes on
            log.warning("cannot create database %s (%s, SQLSTATE %s)", name,
                        type(exc).__name__, code)
            raise EngineError(_not_created(target, scratch, code, exc)) from None

    def restore(self, settings: EngineSettings, url: str, stream: IO[bytes], *,
                replace: bool = False, finish=None) -> None:
        """Load the dump with ``psql`` as the restore role in one transaction of ours:
        every chunk screened before psql sees it, ``COMMIT`` only once the whole
        member was read and checked (``stream`` raises at its end if it changed since
        it was verified); ``replace`` drops the old schema, ``finish`` (its SQL, as
        the connecting user, then its statements on psql's open transaction: see
        :mod:`~guest_backup.engines.psqlsession`) brings the loaded one up to date
        and re-applies the erasure ledger, in that transaction."""
        path = shutil.which(settings.psql)
        if path is None:
            raise EngineError(f"psql not found (PATH or PSQL={settings.psql!r})")
        prepare_restore_role(url, settings.restore_role)
        key = secrets.token_hex(24) if libpq.psql_restricts(path) else None
        script = load_script(settings.restore_role, replace, key, settings.lock_wait)
        env = {**libpq.pg_environment(url), "PGCLIENTENCODING": "UTF8"}
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen([path, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                    env=env)
            output = PsqlOutput(proc.stdout, marks)
            try:
                doing = feed_psql(proc, stream, script, finish, url, output)
            finally:
                rc = proc.wait()
                printed = output.printed()
                proc.stdout.close()
            err.seek(0)
            detail = mask(err.read(4000).decode("utf-8", "replace"), url)
        status = outcome(url, printed, detail)
        if rc == 0 and status == "committed":
            return
        log.warning("psql exited with %s (transaction: %s): %s", rc, status, detail.strip())
        reason = libpq.pg_reason(detail, "psql") if rc else "psql ended before the commit"
        if doing and status != "committed":
            reason += f" while {doing}"
        if status == "committed":
            done = "replaced with the archive's database" if replace else "restored"
            raise EngineError(f"{reason} after the load was committed: the target database "
                              f"WAS {done}{'' if replace else ' from the archive'}")
        if status in ("aborted", "not started"):
            raise EngineError(reason + "; nothing was restored, the target database is as it was")
        raise EngineError(reason + "; it is not known whether the load was committed: check "
                          "the target database before using it")


def _not_created(target, scratch: bool, code: str | None, exc: Exception) -> str:
    """Why CREATE DATABASE failed, in one line: the role's privileges only for
    insufficient_privilege (42501); a session on template1 (55006, a psql or a probe
    left there) is not the role's fault, though a superuser was told to grant itself
    CREATEDB. Never the server's text."""
    role, name = target.username or "this role", target.database or ""
    grant = f'as a superuser: ALTER ROLE "{role}" CREATEDB'
    if code == "42501":
        return (f"a scratch database is needed and the role {role} may not create databases "
                f"({grant})" if scratch else f"the target database {name!r} does not exist "
                f"and the role {role} may not create it: create it first, or {grant}")
    reason = ("template1 (the template database) is in use by another session; try again"
              if code == "55006" else f"the server refused it (SQLSTATE {code})" if code
              else _connect_reason(exc))
    what = "a scratch database is needed" if scratch else \
        f"the target database {name!r} does not exist"
    return f"{what} and cannot be created: {reason}"
