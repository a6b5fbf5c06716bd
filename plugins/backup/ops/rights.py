"""Guests' rights kept over time: the legal retention of guest records
(GUEST_RETENTION_YEARS, counted from the end of the stay) and the check of every
copy of the erasure ledger.

A stay ends on the trip's ``end_date``; a trip without one: its ``start_date``;
neither: the day the registration was made. ``retention-enforce`` erases (kind
``retention``, through :func:`guest_backup.ops.erasure.erase` and the ledger)
every registration whose stay ended before today less N years, and prunes every
archive created before now less N years from every storage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timezone

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from guest_backup.ops.context import BackupContext
from guest_backup.ops.erasure import NothingToErase, Target, erase
from guest_backup.ops.erasure_sql import G, guest_not_erased, overdue_query
from guest_backup.ops.ledger import ErasureLedger, LedgerBroken
from guest_backup.ops.ledger_copies import collect, publish, storage_label
from guest_backup.ops.ledger_format import LEDGER_NAME, _split, merge_verified, verify_lines
from guest_backup.ops.retention import Decision, Policy, legal_horizon, prune_archives, \
    years_before
from guest_backup.storages import StorageError

#: registrations per erasure (one transaction and one ledger line each)
BATCH = 200


def cutoff(years: int, today: date | None = None) -> date | None:
    """Stays that ended before this day are past the legal retention (None: off)."""
    if years <= 0:
        return None
    today = today or datetime.now(timezone.utc).date()
    return years_before(datetime.combine(today, datetime.min.time()), years).date()


def overdue(conn: Connection, before: date) -> tuple[int, int, int]:
    """Registrations past ``before`` still holding personal data, their guests
    with personal data, and those guests' photos."""
    ids = overdue_query(before).subquery()
    registrations = conn.execute(sa.select(sa.func.count()).select_from(ids)).scalar_one()
    guests, photos = conn.execute(
        sa.select(sa.func.count(), sa.func.count(G.document_photo))
        .where(G.registration_id.in_(sa.select(ids.c.id)), guest_not_erased())).one()
    return registrations, guests, photos


def overdue_registrations(engine: Engine, years: int) -> int:
    """How many registrations are past the legal retention (0 when it is off)."""
    before = cutoff(years)
    if before is None:
        return 0
    with engine.connect() as conn:
        return overdue(conn, before)[0]


@dataclass
class RetentionRun:
    years: int
    before: date | None
    registrations: int = 0
    guests: int = 0
    photos: int = 0
    erasures: int = 0  # ledger lines written
    pruned: dict[str, list[Decision]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def archives(self) -> int:
        return sum(not d.keep for decisions in self.pruned.values() for d in decisions)


def enforce_retention(ctx: BackupContext, engine: Engine, *, dry_run: bool,
                      actor: str | None, via: str) -> RetentionRun:
    """``retention-enforce``: erase every registration past the legal retention
    (batches of :data:`BATCH`, each an erasure of kind ``retention``), then prune
    the archives created before the horizon from every storage. ``dry_run``
    counts only."""
    years = ctx.settings.guest_retention_years
    run = RetentionRun(years, cutoff(years))
    if run.before is None:
        return run
    with engine.connect() as conn:
        run.registrations, run.guests, run.photos = overdue(conn, run.before)
    if not dry_run:
        for _ in range(run.registrations // BATCH + 2):
            try:
                result = erase(ctx, engine, Target.retention(run.before, BATCH), actor=actor,
                               via=via)
            except NothingToErase:
                break
            run.erasures += 1
            run.warnings += result.warnings
    run.pruned = prune_archives(ctx, ctx.storages(), Policy(horizon=legal_horizon(years)),
                                lock=ctx.lock(), dry_run=dry_run, audit_engine=engine,
                                actor=actor, via=via)
    return run


# -- the ledger's copies -------------------------------------------------------------

@dataclass
class CopyCheck:
    label: str
    lines: int | None = None  # None: no copy there
    problem: str | None = None  # broken, forked or behind
    unreadable: bool = False


def check_ledger(ledger: ErasureLedger, storages) -> list[CopyCheck]:
    """Each copy of the ledger (the instance folder's, then each storage's) checked:
    its chain, agreement with the others, and whether it has every line."""
    raw: dict[str, bytes | None] = {ledger.label: ledger.read_bytes()}
    checks = [CopyCheck(ledger.label)]
    for storage in storages:
        label = storage_label(storage)
        checks.append(CopyCheck(label))
        try:
            raw[label] = storage.get_extra(LEDGER_NAME)
        except StorageError as exc:
            checks[-1].problem, checks[-1].unreadable = str(exc), True
    if not any(raw.values()):
        return checks
    key = ledger.key(create=False)
    good: dict[str, list[dict]] = {}
    for check in checks:
        data = raw.get(check.label)
        if check.unreadable or not data:
            continue
        try:
            good[check.label] = verify_lines(_split(data), key, check.label)
            check.lines = len(good[check.label])
        except LedgerBroken as exc:
            check.problem = str(exc)
    _agreement(checks, good)
    return checks


def _agreement(checks: list[CopyCheck], good: dict[str, list[dict]]) -> None:
    try:
        longest = len(merge_verified(good))
    except LedgerBroken as exc:
        for check in checks:
            if check.label in good:
                check.problem = str(exc)
        return
    for check in checks:
        if check.problem is None and (check.lines or 0) < longest:
            check.problem = (f"has {check.lines or 0} of the {longest} lines "
                             f"(behind: run erasure-ledger publish)")


def publish_ledger(ledger: ErasureLedger, storages) -> int:
    """Bring every copy up to date (collect, then publish); the number of lines."""
    storages = list(storages)
    lines = len(collect(ledger, storages))
    if lines:
        publish(ledger, storages)
    return lines


def ledger_problems(checks: list[CopyCheck]) -> tuple[bool, bool]:
    """(a copy is broken, forked or behind; a storage could not be read)."""
    return (any(c.problem and not c.unreadable for c in checks),
            any(c.unreadable for c in checks))

