"""Applying a selective restore's plan: one transaction on the live database
while the site keeps serving. Today's rows the plan relies on are checked first
(on PostgreSQL under row locks that never block a sign-up: FOR SHARE on rows
left alone, FOR NO KEY UPDATE on rows overwritten; on SQLite after taking its
write lock); a row that changed since the preview, one that appeared where the
plan inserts, a copy of a row it inserts that appeared under another id, or a
guest that links a photo file it links again, stops the restore with everything
rolled back (another restore of the same rows since the preview: two copies of
one person). Then the archive's rows are read again from the scratch database
in batches, checked to fit today's columns, and written: trips, registrations,
guests, then the overwrites."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from guest_backup.archive.manifest import TIME_FORMAT
from guest_backup.errors import BackupError
from guest_backup.ops.audit import quietly
from guest_backup.ops.create import safe_message
from guest_backup.ops.erasure_mark import last_seq, refuse_lost_lines
from guest_backup.ops.erasure_sql import CHUNK
from guest_backup.ops.page_texts import (ERASED_SINCE, ROW_ADDED, ROW_CHANGED, ROW_DELETED,
                                         ROW_REFUSED, ROW_TABLES, Text)
from guest_backup.ops.selection_plan import plan_selection
from guest_backup.ops.selection_steps import (Plan, Selection, SelectionChanged, Step,
                                              failure_line)
from guest_backup.ops.selection_rows import (PARENT, TABLES, UP, Tables, check_fit, copies,
                                             fingerprint, record_key)

ACTION = "restore-select"  # the audit log's action

log = logging.getLogger(__name__)


def apply_plan(live_engine: Engine, plan: Plan) -> dict[str, dict[str, int]]:
    """Do what ``plan`` says, in one transaction; returns its counts. Raises
    :class:`SelectionChanged` (nothing written) when today's rows are not as
    previewed."""
    if plan.source is None:
        raise BackupError("the plan has no archive to read from (open the archive again)")
    with plan.source.connect() as src:
        try:
            with live_engine.begin() as dst:
                tables = Tables.reflect(src, dst)
                if dst.dialect.name == "sqlite":  # the write lock first: check, then write
                    dst.execute(sa.text("UPDATE trip SET id = id WHERE 1 = 0"))
                _check(dst, tables, plan)
                _no_copy_since(src, dst, tables, plan)
                _no_photo_linked_since(src, dst, tables, plan)
                for name in TABLES:
                    _insert(src, dst, tables, plan.of("insert", name))
                for name in TABLES:
                    _overwrite(src, dst, tables, plan.of("overwrite", name))
        except sa.exc.IntegrityError:
            raise SelectionChanged(Text(ROW_REFUSED)) from None
    return plan.counts()


def _check(dst: Connection, tables: Tables, plan: Plan) -> None:
    for name in TABLES:
        for action, lock in (("leave", "share"), ("overwrite", "update"), ("insert", None)):
            steps = plan.of(action, name)
            found = tables.rows_by_id(dst, name, [s.target for s in steps], lock=lock)
            for step in steps:
                if fingerprint(found.get(step.target)) != step.live:
                    raise SelectionChanged(_changed(step, found.get(step.target)),
                                           "preview again to see today's state")


def _changed(step: Step, row) -> Text:
    what = ROW_ADDED if step.live is None else ROW_DELETED if row is None else ROW_CHANGED
    return Text(what, table=Text(ROW_TABLES[step.table]), id=step.target)


def _added(name: str, live_id: int) -> SelectionChanged:
    return SelectionChanged(Text(ROW_ADDED, table=Text(ROW_TABLES[name]), id=live_id),
                            "preview again to see today's state")


def _no_copy_since(src: Connection, dst: Connection, tables: Tables, plan: Plan) -> None:
    """No row the plan inserts is in today's database under another id (a restore
    of it since the preview), looked up as the preview does (``record_key``), under
    parents that were there today; never one of the plan's own rows."""
    for name in TABLES:
        inserted = {s.id for s in plan.of("insert", UP[name])} if UP[name] else set()
        steps = [s for s in plan.of("insert", name) if s.parent not in inserted]
        mine = {s.target for s in plan.steps if s.table == name and s.action != "erased"}
        for start in range(0, len(steps), CHUNK):
            part = steps[start:start + CHUNK]
            rows = tables.rows_by_id(src, name, [s.id for s in part])
            wanted = {s.id: record_key(name, rows[s.id], s.target_parent)
                      for s in part if s.id in rows}
            found = copies(dst, tables, name, wanted, mine)
            if found:
                raise _added(name, min(row.id for row in found.values()))


def _no_photo_linked_since(src: Connection, dst: Connection, tables: Tables,
                           plan: Plan) -> None:
    """No guest links a photo file the plan links again (a restore of another
    preview since: one person's document on two records). Only a restore links an
    existing file: a sign-up and the admin store a new one."""
    steps = [s for s in plan.of("insert", "guest") if s.photo == "kept"]
    column = tables.tables["guest"].c
    for start in range(0, len(steps), CHUNK):
        part = steps[start:start + CHUNK]
        rows = tables.rows_by_id(src, "guest", [s.id for s in part])
        names = {rows[s.id].document_photo for s in part if s.id in rows} - {None}
        linked = dst.execute(sa.select(column.id).where(column.document_photo.in_(names))
                             .order_by(column.id).limit(1)).scalar() if names else None
        if linked is not None:
            raise _added("guest", linked)


def _insert(src: Connection, dst: Connection, tables: Tables, steps: list[Step]) -> None:
    if not steps:
        return
    name, table = steps[0].table, tables.tables[steps[0].table]
    for start in range(0, len(steps), CHUNK):
        part = steps[start:start + CHUNK]
        rows = tables.rows_by_id(src, name, [s.id for s in part])
        values = []
        for step in part:
            row = dict(rows[step.id]._mapping)
            row["id"] = step.target
            if PARENT[name]:
                row[PARENT[name]] = step.target_parent
            if step.photo == "missing":
                row["document_photo"] = None
            check_fit(tables, name, step.id, row, row)
            values.append(row)
        dst.execute(sa.insert(table), values)
    # no sequence to move: an id is kept only if its sequence handed it out already
    # (selection_plan: "id-ahead"), and sequences only grow


def _overwrite(src: Connection, dst: Connection, tables: Tables, steps: list[Step]) -> None:
    if not steps:
        return
    name, table = steps[0].table, tables.tables[steps[0].table]
    columns = tables.compared(name)
    rows = tables.rows_by_id(src, name, [s.id for s in steps])
    for step in steps:
        values = {c: getattr(rows[step.id], c) for c in columns}
        check_fit(tables, name, step.id, values, values)
        dst.execute(sa.update(table).where(table.c.id == step.target).values(values))


@dataclass
class SelectionResult:
    plan: Plan
    applied: bool
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"applied": self.applied, "seconds": round(self.seconds, 3),
                **self.plan.to_dict()}


def erasures_after(erasures, when: datetime | None):
    """The ledger's entries from ``when`` on (10 minutes' leeway for an erasure
    committed while the copy was loading); all of them when ``when`` is None.
    Looking an entry up may stream the archive's tables (by keyed hash): the
    entries a load already re-applied need not be looked up again."""
    from guest_backup.ops.finishing import ErasureReapply
    from guest_backup.ops.reapply import LEEWAY

    if when is None or erasures is None:
        return erasures
    since = (when.astimezone(timezone.utc).replace(tzinfo=None) if when.tzinfo else when) - LEEWAY
    later = [e for e in erasures.entries
             if datetime.strptime(e["time"], TIME_FORMAT) >= since]
    return ErasureReapply(later, erasures.ledger)


def photo_check(ctx):
    """Whether a photo file is still in the upload folder (the name was checked to
    be a plain photo name before this is asked)."""
    from pathlib import Path

    folder = ctx.config.get("UPLOAD_FOLDER")
    if not folder:
        return None
    return lambda name: (Path(folder) / name).is_file()


def restore_selection(ctx, live_engine: Engine, source_engine: Engine, selection: Selection,
                      *, archive: str, actor: str | None, via: str,
                      dry_run: bool = False, plan: Plan | None = None,
                      reapplied_at: datetime | None = None) -> SelectionResult:
    """Plan (the ledger's erasures applied), then, unless ``dry_run``, apply;
    ``plan``: the one previewed (and confirmed) instead of planning again;
    ``reapplied_at``: when the scratch copy was loaded with the ledger re-applied
    (its erased rows hold erased values: only later erasures are looked up). The
    restore is audited as ``restore-select`` (who, which archive, what came back,
    by ids and counts: no personal data), a failure too.

    Applying holds the live database's :func:`~guest_backup.engines.exclusive`
    lock (an erasure waits; a full restore or an erasure holding it refuses this
    one after ``ERASE_WAIT``), and under it a previewed plan is refused when the
    erasure ledger has a line the preview did not know: that person's rows could
    be among the ones the plan brings back."""
    try:
        if dry_run:
            return SelectionResult(_planned(ctx, live_engine, source_engine, selection,
                                            reapplied_at), applied=False)
        with _exclusive(ctx, live_engine):
            if plan is None:  # under the lock: no erasure can come between
                plan = _planned(ctx, live_engine, source_engine, selection, reapplied_at)
            else:
                _no_erasure_since(plan, ctx, live_engine)
            started = time.monotonic()
            apply_plan(live_engine, plan)
            seconds = time.monotonic() - started
            # audited inside the lock, as an erasure: a restore replacing the database
            # cannot set its audit trail aside before this entry is written
            counts = plan.counts()
            quietly("the selective restore", ctx.audit.record, live_engine, ACTION, "ok",
                    actor=actor, via=via, target=archive, message=plan.summary(),
                    rows=sum(counts["insert"].values()) + sum(counts["overwrite"].values()))
    except Exception as exc:
        if not dry_run:
            quietly("the selective restore", ctx.audit.record, live_engine, ACTION, "failed",
                    actor=actor, via=via, target=archive,
                    message=failure_line(selection, safe_message(exc, "selective restore")))
        if isinstance(exc, BackupError):
            raise
        log.warning("selective restore failed (%s)", type(exc).__name__, exc_info=True)
        raise BackupError(safe_message(exc, "selective restore")) from None
    return SelectionResult(plan, applied=True, seconds=seconds)


def _planned(ctx, live_engine: Engine, source_engine: Engine, selection: Selection,
             reapplied_at: datetime | None) -> Plan:
    """The plan, with the ledger's last line it accounted for."""
    from guest_backup.ops.finishing import erasures_for

    erasures = erasures_for(ctx)
    refuse_lost_lines(erasures, live_engine)  # lost lines: erasures no copy re-applies
    plan = plan_selection(source_engine, live_engine, selection,
                          erasures_after(erasures, reapplied_at),
                          photo_present=photo_check(ctx))
    plan.ledger_seq = last_seq(erasures.entries)
    return plan


def _no_erasure_since(plan: Plan, ctx, live_engine: Engine) -> None:
    """SelectionChanged when the ledger went past the plan's last line;
    LedgerLinesLost when it lost lines since."""
    from guest_backup.ops.finishing import erasures_for

    erasures = erasures_for(ctx)
    refuse_lost_lines(erasures, live_engine)
    last, seen = last_seq(erasures.entries), plan.ledger_seq
    if not isinstance(seen, int) or isinstance(seen, bool) or seen != last:
        raise SelectionChanged(Text(ERASED_SINCE))


def _exclusive(ctx, live_engine: Engine):
    from guest_backup.ops.erasure import ERASE_WAIT  # (read here: tests shorten it)
    from guest_backup.ops.erasure_mark import database_lock

    return database_lock(ctx, live_engine, ERASE_WAIT)


__all__ = ["ACTION", "SelectionResult", "apply_plan", "photo_check", "restore_selection"]
