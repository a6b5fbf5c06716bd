"""How far a database is in the erasure ledger: ``erasure_mark`` (one row, made by
the backup plugin's revision ``backup_0001_erasure_mark``) holds the last ledger
line it reflects.

- An erasure moves the mark in its own transaction, only from the line before its
  own: a database already behind stays behind (its missing lines are not skipped).
- A restore drops the archive's mark inside its load (an archive's word on this
  ledger is worth nothing: another installation's, or forged), re-applies the
  ledger and sets the mark to its last line; a point-in-time recovery does the
  same on the recovered cluster.
- :func:`apply_missing` (``manage.py erasure-ledger apply``) re-applies the lines
  past the mark, checks that nobody the ledger names is left, and moves the mark.
- ``backup-health`` reports a database whose mark is behind the ledger (every
  copy's, merged): a cluster recovered to a point in time and switched in after
  erasures were recorded in the one it replaced, or a restore whose re-apply
  failed after its load.

No row: not known; health reports it once the ledger has a line, and
``erasure-ledger apply`` re-applies every line and marks it. A mark ahead of the
ledger's last line is proof that every copy of the ledger lost lines (an erasure
marks only the line it wrote; a restore marks the ledger's last line): the
erasures of those lines are in no copy, so a restore would bring their guests
back. :func:`refuse_lost_lines` stops a restore, an erasure (its line would take
a lost line's number) and ``erasure-ledger apply`` then; health reports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from guest_backup.errors import BackupError, shown_reason
from guest_backup.ops.ledger_format import LEDGER_NAME

TABLE = "erasure_mark"
ACTION = "erasure-apply"  # the audit log's action
#: seconds an erasure (or a selective restore, or ``erasure-ledger apply``) waits for
#: another erasure or a restore of its database
ERASE_WAIT = 10
_MARK = sa.table(TABLE, sa.column("id"), sa.column("seq"), sa.column("marked_at"))


def database_lock(ctx, engine: Engine, wait: float):
    """The database's :func:`~guest_backup.engines.exclusive` lock (one restore,
    erasure, selective restore or ``erasure-ledger apply`` at a time), waiting up
    to ``wait`` seconds: what an erasure and the others beside it take."""
    from guest_backup.engines import exclusive

    return exclusive(ctx.engine_for(engine.dialect.name, required=False),
                     engine.url.render_as_string(hide_password=False), wait)


def _has_table(conn: Connection) -> bool:
    return sa.inspect(conn).has_table(TABLE)


def read_mark(conn: Connection) -> int | None:
    """The last ledger line this database reflects; None when not known."""
    if not _has_table(conn):
        return None
    return conn.execute(sa.select(_MARK.c.seq).where(_MARK.c.id == 1)).scalar_one_or_none()


def set_mark(conn: Connection, seq: int) -> None:
    """The database reflects every line up to ``seq`` (nothing without the table)."""
    if not _has_table(conn):
        return
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    if not conn.execute(sa.update(_MARK).where(_MARK.c.id == 1)
                        .values(seq=seq, marked_at=now)).rowcount:
        conn.execute(sa.insert(_MARK).values(id=1, seq=seq, marked_at=now))


def clear_mark(conn: Connection) -> None:
    """Not known (a loaded archive's mark never stands for this ledger)."""
    if _has_table(conn):
        conn.execute(sa.delete(_MARK))


def _if_marked(statement: str) -> str:
    """PostgreSQL text running ``statement`` only where the table exists (a schema
    from before it has no mark)."""
    return f"DO $$BEGIN IF to_regclass('{TABLE}') IS NOT NULL THEN {statement}; END IF; END$$;\n"


#: :func:`clear_mark` as PostgreSQL text, for the end of a load that psql runs
FORGET_MARK_SQL = _if_marked(f"DELETE FROM {TABLE}")


def mark_sql(seq: int) -> str:
    """:func:`set_mark` as PostgreSQL text, for the end of a load after
    :data:`FORGET_MARK_SQL`."""
    return _if_marked(f"INSERT INTO {TABLE} (id, seq, marked_at) VALUES "
                      f"(1, {int(seq)}, timezone('UTC', clock_timestamp()))")


def advance_mark(conn: Connection, seq: int) -> None:
    """An erasure's own line: the mark moves from ``seq - 1`` (or from nothing, the
    first line of a database never marked) to ``seq``; a mark further behind stays."""
    if not _has_table(conn):
        return
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    if conn.execute(sa.update(_MARK).where(_MARK.c.id == 1, _MARK.c.seq == seq - 1)
                    .values(seq=seq, marked_at=now)).rowcount:
        return
    if seq == 1 and read_mark(conn) is None:
        conn.execute(sa.insert(_MARK).values(id=1, seq=seq, marked_at=now))


def last_seq(entries) -> int:
    """The ledger's last line (0: no erasure yet)."""
    return max((int(e["seq"]) for e in entries), default=0)


class LedgerLinesLost(BackupError):
    """The database reflects ledger lines that no copy of the ledger holds."""


#: where a complete copy of the ledger may be found
COPIES = (f"{LEDGER_NAME} in the instance folder or beside the archives of a storage, or "
          f"one from a file backup of those folders")


def lost_lines(conn: Connection, entries) -> tuple[int, int] | None:
    """``(last line, mark)`` when the database's mark is past the last line of the
    ledger ``entries`` (every copy's, merged): those lines were lost; else None."""
    mark = read_mark(conn)
    last = last_seq(entries)
    return (last, mark) if mark is not None and mark > last else None


def lost_lines_error(gap: tuple[int, int], outcome: str = "") -> LedgerLinesLost:
    last, mark = gap
    lines = f"line {mark}" if mark == last + 1 else f"lines {last + 1}..{mark}"
    return LedgerLinesLost(
        f"the erasure ledger has lost {lines}: the database reflects line {mark}, every "
        f"copy of the ledger ends at line {last}, and a restore would bring back the guests "
        f"those lines erased. Put back a complete copy ({COPIES})"
        + (f"; {outcome}" if outcome else ""))


def refuse_lost_lines(entries, *databases, outcome: str = "nothing was restored") -> None:
    """LedgerLinesLost when a database's mark is past the ledger's last line.
    ``entries``: the collected ledger (``collect()``'s list, or ``erasures_for()``'s
    ErasureReapply; None: nothing to check); ``databases``: SQLAlchemy engines or
    URLs (None, or one without the table: skipped). A restore calls it once it
    holds the target's lock, before it replaces anything."""
    if entries is None:
        return
    entries = getattr(entries, "entries", entries)
    for database in databases:
        if database is None:
            continue
        engine = sa.create_engine(database, poolclass=sa.pool.NullPool) \
            if isinstance(database, str) else database
        try:
            with engine.connect() as conn:
                gap = lost_lines(conn, entries)
        finally:
            if isinstance(database, str):
                engine.dispose()
        if gap is not None:
            raise lost_lines_error(gap, outcome)


def behind(engine: Engine, entries) -> tuple[int | None, int] | None:
    """``(mark, last line)`` when the database may miss lines of the ledger
    ``entries`` (every copy's, merged): its mark is behind, or not known while the
    ledger has lines; None when it is up to date. A mark ahead of the ledger's last
    line: LedgerLinesLost (the ledger lost lines, see the module)."""
    last = last_seq(entries)
    with engine.connect() as conn:
        if not _has_table(conn):
            return None  # a schema before the mark (setup brings it)
        gap = lost_lines(conn, entries)
        mark = read_mark(conn)
    if gap is not None:
        raise lost_lines_error(gap)
    if mark == last or (mark is None and not last):
        return None
    return mark, last


@dataclass
class Applied:
    """What :func:`apply_missing` did."""

    mark: int | None  # the mark before (None: not known)
    last: int  # the ledger's last line, the mark now
    lines: int  # ledger lines re-applied
    changed: int  # of them, erasures that changed rows

    def describe(self) -> str:
        since = "every line (the mark was not known)" if self.mark is None else (
            f"lines {self.mark + 1} to {self.last}" if self.lines else "no line")
        return (f"{since} re-applied: {self.changed} of {self.lines} erasure(s) changed "
                f"rows; the database reflects the ledger up to line {self.last}")


def apply_missing(ctx, engine: Engine, *, actor: str | None, via: str) -> Applied:
    """Re-apply the ledger lines past the database's mark (every line when it is not
    known), check that nobody the ledger names is left, and move the mark to the
    last line, in one transaction under the database's exclusive lock (the ledger
    is read once the lock is held: no erasure can come between). A mark ahead of
    the ledger: LedgerLinesLost. Audited as ``erasure-apply``; a failure changes
    nothing. (The command then runs :func:`~guest_backup.ops.erasure.finish_pending`.)"""
    from guest_backup.ops.audit import quietly
    from guest_backup.ops.ledger import ErasureLedger
    from guest_backup.ops.ledger_copies import collect

    ledger = ErasureLedger.in_folder(ctx.instance_path)
    try:
        with database_lock(ctx, engine, ERASE_WAIT):
            entries = collect(ledger, ctx.storages())
            with engine.begin() as conn:
                result = _apply(conn, entries, ledger)
            # inside the lock, as an erasure's: a restore cannot set the trail aside first
            quietly("an erasure apply", ctx.audit.record, engine, ACTION, "ok", actor=actor,
                    via=via, rows=result.changed, message=result.describe())
    except Exception as exc:
        message = shown_reason(exc) + (
            "" if isinstance(exc, BackupError) else " (nothing was changed)")
        quietly("an erasure apply", ctx.audit.record, engine, ACTION, "failed", actor=actor,
                via=via, message=message[:500])
        if isinstance(exc, BackupError):
            raise
        raise BackupError(f"the erasures could not be re-applied: {message}") from None
    return result


def _apply(conn: Connection, entries: list, ledger) -> Applied:
    from guest_backup.ops.reapply import reapply_checked

    if not _has_table(conn):
        raise BackupError("the database has no erasure_mark table yet: run manage.py setup "
                          "first")
    mark, last = read_mark(conn), last_seq(entries)
    if (gap := lost_lines(conn, entries)) is not None:
        raise lost_lines_error(gap, "nothing was changed")
    known = mark is not None

    def is_pending(entry: dict) -> bool:
        return not known or int(entry["seq"]) > mark

    # one resolution: the pending entries' rows erased, every entry's rows checked
    changed, left = reapply_checked(conn, entries, ledger, erase=is_pending)
    pending = [e for e in entries if is_pending(e)]
    if left:
        raise BackupError(f"erased records are still present after re-applying the ledger "
                          f"({', '.join(str(x) for x in left[:5])}): nothing was changed; "
                          f"erase them again")
    set_mark(conn, last)
    return Applied(mark if known else None, last, len(pending), changed)


__all__ = ["ACTION", "Applied", "ERASE_WAIT", "LedgerLinesLost", "TABLE", "advance_mark",
           "apply_missing", "behind", "clear_mark", "database_lock", "last_seq", "lost_lines",
           "mark_sql", "read_mark", "refuse_lost_lines", "set_mark"]
