"""A PostgreSQL restore's psql session: our script around the screened dump (one
transaction, the restore role, psql restricted by our key), the finishing SQL
before the COMMIT, and what became of the transaction when psql stopped (see
:meth:`guest_backup.engines.postgresql.PostgresEngine.restore`)."""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import subprocess
import time
from typing import IO

from guest_backup.engines import CHUNK, mask, parse_url, sql
from guest_backup.engines.pgrole import _connected
from guest_backup.engines.psqlsession import PsqlEnded, PsqlOutput, PsqlSession

log = logging.getLogger(__name__)

COMMITTED = b"gr-restore-committed"
XID_MARK = re.compile(rb"gr-restore-xid (\d+)")
#: a check of the finishing SQL that stops psql first prints why on a line of its
#: own (``guest_backup.ops.schema.heads_check_sql``): the reason says it
REFUSED = b"gr-schema-refused "
#: printed by psql as it reaches each step of the restore (a nonce and the step's
#: number after it): an error is the step's whose mark came last
STEP = b"gr-restore-step "


#: right after the dump, still as the restore role (which owns what the dump made):
#: every default, check and index expression of its tables as PostgreSQL renders
#: them back, where ``(x).f`` or any other spelling of a call reads ``f(x)``; a call
#: of anything but the screen's few harmless functions stops the load. The screen
#: reads the dump's text; this reads what the server made of it.
_CALLS_CHECK = r"""DO $gr$ DECLARE found text; BEGIN
SELECT pg_catalog.string_agg(DISTINCT pg_catalog.lower(m[1]), ', ') INTO found
FROM (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user) AS mine, LATERAL (
 SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid) AS e FROM pg_catalog.pg_attrdef d
  JOIN pg_catalog.pg_class c ON c.oid = d.adrelid WHERE c.relowner = mine.oid
 UNION ALL SELECT pg_catalog.pg_get_constraintdef(k.oid) FROM pg_catalog.pg_constraint k
  JOIN pg_catalog.pg_class c ON c.oid = k.conrelid
  WHERE k.contype IN ('c', 'x') AND c.relowner = mine.oid
 UNION ALL SELECT pg_catalog.pg_get_indexdef(i.indexrelid) FROM pg_catalog.pg_index i
  JOIN pg_catalog.pg_class c ON c.oid = i.indrelid WHERE c.relowner = mine.oid
  AND (i.indexprs IS NOT NULL OR i.indpred IS NOT NULL)
) AS x, LATERAL pg_catalog.regexp_matches(x.e, '([A-Za-z_][A-Za-z0-9_$]*)\(', 'g') AS m
WHERE pg_catalog.lower(m[1]) <> ALL (%s::text[]);
IF found IS NOT NULL THEN RAISE EXCEPTION 'gr-function-refused: %%', found; END IF;
END $gr$;"""


def calls_check() -> str:
    """:data:`_CALLS_CHECK` with the screen's allow-list (imported here: the screen
    is read only when a dump is, not by ``--help``)."""
    from guest_backup.engines.pgscreen_statements import ALLOWED_CALLS

    return _CALLS_CHECK % ("'{" + ",".join(sorted(ALLOWED_CALLS)) + "}'")


def load_script(role: str, replace: bool, key: str | None,
                lock_wait: float = 0.0) -> tuple[bytes, ...]:
    """psql's input at the start (our transaction, its xid), before the dump (the
    old schema dropped, the restore role, psql restricted by our key), after it (the objects handed to the connecting
    user: the role keeps nothing; the session's search_path back for the finishing
    SQL), once the finishing SQL ran (psql unrestricted, for the finishers'
    statements: the dump is behind it) and at the end (the marker printed only once
    the COMMIT succeeded). Until the old schema is gone, a lock waited for longer
    than ``lock_wait`` seconds (BACKUP_LOCK_WAIT) ends the restore: a backup holds
    its tables for its whole dump and writes its audit entry meanwhile, which the
    restore's lock on the audit trail held back; both waited for good."""
    r = f'"{role}"'
    wait = [f"SET lock_timeout = {max(1, int(lock_wait * 1000))};"] if lock_wait > 0 else []
    begin = ["SET standard_conforming_strings = on;", "BEGIN;", *wait,
             "SELECT pg_catalog.txid_current() AS gr_restore_xid \\gset",
             "\\echo gr-restore-xid :gr_restore_xid"]
    before = [*(["DROP SCHEMA IF EXISTS public CASCADE;", "CREATE SCHEMA public;"] * replace),
              *(["SET lock_timeout = 0;"] if wait else []),
              f"GRANT USAGE, CREATE ON SCHEMA public TO {r};", f"SET LOCAL ROLE {r};",
              *([f"\\restrict {key}"] if key else [])]
    after = [calls_check(), "RESET ROLE;", "SET search_path = public, pg_temp;",
             f"REASSIGN OWNED BY {r} TO CURRENT_USER;", f"DROP OWNED BY {r};"]
    unrestrict = [f"\\unrestrict {key}"] if key else []
    end = ["COMMIT;", "\\echo " + COMMITTED.decode()]
    return tuple(("\n" + "\n".join(lines) + "\n").encode()
                 for lines in (begin, before, after, unrestrict, end))


def marks(line: bytes) -> bool:
    """The lines of psql's output a restore keeps (:func:`outcome` reads them)."""
    return line.startswith((COMMITTED, b"gr-restore-xid ", REFUSED, STEP))


class _Steps:
    """The steps of our script, each announced by a mark psql prints once all
    before it ran (``COPY … TO STDOUT``: the finishing SQL runs restricted, where
    ``\\echo`` is refused; a nonce drawn now, so no row of the archive can print
    one): psql stopping after step n's mark stopped in step n. Before, the
    finishers' session was blamed for an error in SQL written before it began
    (a failing schema upgrade reported as 're-applying the erasure ledger')."""

    def __init__(self, stdin: IO[bytes]) -> None:
        self._stdin, self.labels = stdin, []
        self._mark = STEP + secrets.token_hex(8).encode() + b" "

    def begin(self, label: str | None) -> None:
        """What follows is ``label`` ("upgrading the archive's schema"; None: the dump)."""
        self.labels.append(label)
        self._stdin.write(b"\nCOPY (SELECT '%s%d') TO STDOUT;\n"
                          % (self._mark, len(self.labels) - 1))

    def stopped_in(self, kept: list[bytes]) -> str | None:
        """The step psql stopped in (the last whose mark it printed)."""
        seen = [line[len(self._mark):].strip() for line in kept if line.startswith(self._mark)]
        return self.labels[int(seen[-1])] if seen and seen[-1].isdigit() else None


def feed_psql(proc: subprocess.Popen, stream: IO[bytes], script: tuple, finish, url: str,
              output: PsqlOutput) -> str | None:
    """Our script around the screened dump; the finishing SQL (still restricted)
    and the finishers' statements on psql's open transaction (unrestricted: the
    dump is behind us) before the COMMIT; psql (and its transaction) killed on
    any error but its own. Returns the step psql stopped in (each finisher's
    ``doing``), or why a check of the finishing SQL stopped psql (for the reason)."""
    from guest_backup.engines import pgscreen

    screen, (begin, before, after, unrestrict, end) = pgscreen.PgDumpScreen(), script
    parts = (getattr(finish, "parts", None) or [finish]) if finish else []
    steps, session = _Steps(proc.stdin), None
    try:
        proc.stdin.write(begin)
        for part in parts:  # the old schema is still there
            if hasattr(part, "sql_before"):
                steps.begin(getattr(part, "doing", None))
                for text in part.sql_before(url):
                    proc.stdin.write(text.encode())
        steps.begin(None)  # the dump: psql's error says what it was
        proc.stdin.write(before)
        while chunk := stream.read(CHUNK):
            proc.stdin.write(screen.feed(chunk))
        proc.stdin.write(screen.finish() + after)
        for part in parts:
            steps.begin(getattr(part, "doing", None))
            for text in part.sql(url):
                proc.stdin.write(text.encode())
        proc.stdin.write(unrestrict)
        if any(getattr(part, "in_session", False) for part in parts):
            session = PsqlSession.open(proc.stdin, output)
            _run_session(session, parts)
        steps.begin(None)  # the COMMIT
        proc.stdin.write(end)
        proc.stdin.close()
    except (BrokenPipeError, PsqlEnded):
        with contextlib.suppress(OSError):
            proc.stdin.close()  # psql stopped at an error; its exit code says so
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    output.wait()  # psql has ended: every mark it printed is read
    refused = next((line for line in output.kept if line.startswith(REFUSED)), None)
    if refused is not None:
        from guest_backup.archive.manifest import shown

        return "checking the archive's schema: " + shown(
            refused[len(REFUSED):].decode("utf-8", "replace").strip(), 300)
    if session is not None and output.started:  # psql ran all that came before it
        return session.doing
    return steps.stopped_in(output.kept)


def _run_session(session: PsqlSession, parts: list) -> None:
    """The finishers that need Python on psql's open transaction, each named
    (``doing``) while its statements run."""
    for part in parts:
        if getattr(part, "in_session", False):
            session.doing = getattr(part, "doing", None)
            part.run(session)


def outcome(url: str, printed: bytes, stderr: str) -> str | None:
    """``committed`` (our marker, or the server's word on the xid psql printed),
    ``aborted``, ``not started`` (psql could not connect) or None (nobody knows)."""
    if b"\n" + COMMITTED + b"\n" in b"\n" + printed:  # our \echo's whole line
        return "committed"
    m = XID_MARK.search(printed)
    if m is None:
        never = ("could not connect", "connection refused", "connection to server",
                 "password authentication failed", "no password supplied", "does not exist")
        return "not started" if any(w in stderr.lower() for w in never) else None
    try:
        with _connected(url, autocommit=True) as conn:
            for _ in range(100):  # the server soon ends a dead client's transaction
                status = conn.execute(sql("SELECT pg_catalog.txid_status(:x)"),
                                      {"x": int(m.group(1))}).scalar()
                if status != "in progress":
                    return status
                time.sleep(0.1)
    except Exception as exc:
        log.warning("cannot ask about the restore's transaction: %s", mask(str(exc), url))
    return None


def database_missing(url: str) -> bool:
    """Whether ``url``'s database does not exist (the server says so when we connect,
    as :meth:`~guest_backup.engines.postgresql.PostgresEngine.prepare_target` reads it)."""
    try:
        with _connected(url) as conn:
            conn.exec_driver_sql("SELECT 1")
        return False
    except Exception as exc:
        said = str(exc).lower()
        return "does not exist" in said and "database" in said  # not a missing role


def drop_unused(url: str) -> None:
    """Drop ``url``'s database, created for a restore that ended refused or failed:
    only while it holds no table (no other restore loaded it meanwhile), never by
    force (one connected to it keeps it)."""
    name = parse_url(url).database or ""
    try:
        with _connected(url, autocommit=True) as conn:
            if conn.execute(sql("SELECT count(*) FROM pg_catalog.pg_class c JOIN "
                                "pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE "
                                "n.nspname NOT IN ('pg_catalog', 'information_schema') AND "
                                "n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%' "
                                "AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')")).scalar_one():
                return
        with _connected(parse_url(url).set(database="postgres"), autocommit=True) as conn:
            conn.exec_driver_sql('DROP DATABASE "%s"' % name.replace('"', '""'))
        log.info("dropped the target database %s, created for a restore that did not happen",
                 name)
    except Exception as exc:
        log.warning("could not drop the target database %s created for the restore: %s", name,
                    mask(str(exc), url))
