"""Retention with restic's semantics (``forget --keep-last/daily/weekly/monthly``).

For each rule, walk the archives newest first and keep the newest archive of
each of the last N days / ISO weeks / months that have one (``last`` keeps the
N newest); an archive is kept when any rule keeps it; the newest archive is
always kept. With no rule set, everything is kept. Times are the archives' signed
creation times (UTC), never a file's time or a name anyone can give a file; only
recognised archives count, and a file that is not recognised is never deleted.

The legal horizon (GUEST_RETENTION_YEARS, :func:`legal_horizon`) overrides every
rule: an archive created before it is removed whatever the rules keep, the
newest one too (it holds guests past their legal retention).

Nothing overrides a storage that holds an archive (S3 Object Lock): retention never
tries to delete it, keeps it with the reason (until when) and removes it in the
first run after the lock expires.

An archive whose latest check in the audit log (``verify`` or ``restore-test`` of
it) failed is kept and not counted by any rule (:func:`failed_checks`): keeping it
must not cost the good archive it would have displaced. It counts again once a
check passes (or goes when deleted by hand); only the legal horizon removes it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterable, Mapping

from guest_backup.archive.manifest import format_time
from guest_backup.errors import BackupError
from guest_backup.ops.audit import quietly
from guest_backup.ops.notify import observed
from guest_backup.storages import ArchiveHeld, StorageError

log = logging.getLogger(__name__)


def years_before(when: datetime, years: int) -> datetime:
    """``when`` less whole calendar years (29 February becomes the 28th)."""
    try:
        return when.replace(year=when.year - years)
    except ValueError:
        return when.replace(year=when.year - years, day=28)


def legal_horizon(years: int, now: datetime | None = None) -> datetime | None:
    """The oldest creation time GUEST_RETENTION_YEARS = ``years`` allows (UTC);
    None when it is 0 (off)."""
    if years <= 0:
        return None
    return years_before(now or datetime.now(timezone.utc), years)


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Policy:
    last: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    #: archives created before it are removed whatever the rules say (None: no horizon)
    horizon: datetime | None = None

    @classmethod
    def of(cls, settings) -> "Policy":
        """BACKUP_KEEP, BACKUP_KEEP_DAILY, _WEEKLY and _MONTHLY, and the legal
        horizon of GUEST_RETENTION_YEARS."""
        return cls(settings.keep, settings.keep_daily, settings.keep_weekly,
                   settings.keep_monthly,
                   legal_horizon(getattr(settings, "guest_retention_years", 0)))

    @property
    def keeps_everything(self) -> bool:
        return not (self.last or self.daily or self.weekly or self.monthly)


@dataclass
class Decision:
    name: str
    when: datetime
    reasons: list[str] = field(default_factory=list)
    past_horizon: bool = False
    #: why the storage does not let it be removed yet (Object Lock), though the rules would
    held: str | None = None

    @property
    def keep(self) -> bool:
        return bool(self.reasons) or self.held is not None

    def describe(self) -> str:
        if self.held is not None:
            return f"keep ({self.held})"
        if self.past_horizon:
            return "remove (past the legal retention)"
        return "keep (" + ", ".join(self.reasons) + ")" if self.reasons else "remove"


_BUCKETS: dict[str, Callable[[datetime], tuple]] = {
    "daily": lambda t: (t.year, t.month, t.day),
    "weekly": lambda t: tuple(t.isocalendar()[:2]),
    "monthly": lambda t: (t.year, t.month),
}


def plan(archives: Iterable[tuple[str, datetime]], policy: Policy,
         unrecognised: Iterable[str] = (),
         future: Iterable[tuple[str, datetime]] = (),
         damaged: Mapping[str, str] | None = None) -> list[Decision]:
    """One decision per recognised archive (name and signed creation time), newest
    first, then those signed with a creation time in the future and the
    unrecognised files, which are always kept and never counted. ``damaged``: the
    archives known to fail their check, each with why it is kept: never counted,
    kept unless past the legal horizon."""
    damaged = damaged or {}
    archives = list(archives)
    decisions = [Decision(name, when) for name, when in archives if name not in damaged]
    suspect = [Decision(name, when, [damaged[name]]) for name, when in archives
               if name in damaged]
    undated = [Decision(name, when, ["signed with a creation time in the future (check the "
                                     "clock): never deleted by retention"])
               for name, when in future]
    undated += [Decision(name, datetime.min, ["unrecognised: never deleted by retention"])
                for name in unrecognised]
    decisions.sort(key=lambda d: (d.when, d.name), reverse=True)
    if policy.keeps_everything:
        for d in decisions:
            d.reasons.append("no retention rule set")
        return _past_horizon(_merged(decisions, suspect), policy.horizon) + undated
    for i, d in enumerate(decisions[:policy.last]):
        d.reasons.append(f"last {i + 1}")
    for rule, bucket_of in _BUCKETS.items():
        budget, previous = getattr(policy, rule), None
        for d in decisions:
            if budget <= 0:
                break
            bucket = bucket_of(d.when)
            if bucket != previous:
                d.reasons.append(f"{rule} {bucket_label(rule, d.when)}")
                previous, budget = bucket, budget - 1
    if decisions and not decisions[0].reasons:
        decisions[0].reasons.append("newest")
    return _past_horizon(_merged(decisions, suspect), policy.horizon) + undated


def _merged(decisions: list[Decision], suspect: list[Decision]) -> list[Decision]:
    return sorted(decisions + suspect, key=lambda d: (d.when, d.name), reverse=True)


def failed_checks(audit, engine) -> dict[str, dict]:
    """The archives whose latest check in the audit log failed, by name: a ``verify``
    or ``restore-test`` entry naming the archive (the one the Backup page shows per
    archive), with ``action``, ``at`` and ``message``. One grouped query: every
    archive's latest check counts, however long ago it ran."""
    failed = audit.latest_by_target(engine, ("verify", "restore-test"),
                                    latest_outcome="failed")
    return {row["target"]: {"id": row["id"], "action": row["action"],
                            "message": row["message"],
                            "at": format_time(row["finished_at"] or row["created_at"])}
            for row in failed}


def damaged_archives(ctx, engine) -> dict[str, str]:
    """:func:`failed_checks` as :func:`plan` takes them (why each is kept); a
    BackupError when the audit log cannot be read, so that nothing is removed on a
    guess."""
    try:
        found = failed_checks(ctx.audit, engine)
    except Exception as exc:
        log.warning("the archives' checks could not be read (%s)", type(exc).__name__)
        raise BackupError("the archives' last checks could not be read from the audit log, "
                          "so retention removed nothing") from None
    return {name: f"failed verification on {c['at']} ({c['action']}); not counted"
            for name, c in found.items()}


def _past_horizon(decisions: list[Decision], horizon: datetime | None) -> list[Decision]:
    """Remove what was created before the legal horizon, whatever kept it."""
    if horizon is not None:
        for d in decisions:
            if _aware(d.when) < _aware(horizon):
                d.reasons.clear()
                d.past_horizon = True
    return decisions


def bucket_label(rule: str, when: datetime) -> str:
    if rule == "daily":
        return when.strftime("%Y-%m-%d")
    if rule == "weekly":
        year, week, _ = when.isocalendar()
        return f"{year}-W{week:02d}"
    return when.strftime("%Y-%m")


def prune_storage(ctx, storage, policy: Policy, *, protect: str | None = None,
                  dry_run: bool = False, audit_engine=None) -> list[Decision]:
    """Apply ``policy`` to one storage's recognised archives, dated by their signed
    creation time (never removing ``protect``, never touching a file that is not
    recognised, never trying to delete what the storage :meth:`held`, and with
    ``audit_engine``, never counting an archive whose last check failed); returns
    every decision, newest first."""
    from guest_backup.ops.listing import recognised

    damaged = damaged_archives(ctx, audit_engine) if audit_engine is not None else {}
    ahead: list = []
    good, bad = recognised(ctx, storage, ahead)
    decisions = plan([(a.name, a.created) for a in good], policy, bad,
                     [(a.name, a.created) for a in ahead], damaged)
    held = getattr(storage, "held", None)
    for d in decisions:
        if d.name == protect and not d.keep:
            d.reasons.append("just made")
        if d.keep:
            continue
        if dry_run:
            d.held = held(d.name) if held is not None else None
            continue
        try:  # a delete looks at the hold itself: asking held() first would look twice
            storage.delete(d.name)
        except ArchiveHeld as exc:
            d.held = exc.reason
        except StorageError:  # a plugin storage may refuse with a plain StorageError
            d.held = held(d.name) if held is not None else None
            if d.held is None:
                raise
    return decisions


class PruningIncomplete(BackupError):
    """``backup-prune`` could not apply retention to every storage: raised once each
    was tried, with what it did in the others (``found``: storage -> decisions)
    and why it failed where it did (``errors``: storage -> safe message)."""

    def __init__(self, found: dict[str, list[Decision]], errors: dict[str, str]) -> None:
        self.found, self.errors = found, errors
        done = [f"removed {sum(not d.keep for d in decisions)} of {len(decisions)} "
                f"archive(s) from {name}" for name, decisions in found.items()]
        super().__init__("; ".join([f"retention failed in {name}: {why}"
                                    for name, why in errors.items()] + done))


@observed("prune")  # metrics and notifications when it ends; never raises
def prune_archives(ctx, storages, policy: Policy, *, lock, dry_run: bool, audit_engine,
                   actor: str | None, via: str) -> dict[str, list[Decision]]:
    """``backup-prune``: apply ``policy`` to each storage separately, under the
    backup lock; a real run is audited per storage. A storage that fails does not
    stop the others: :class:`PruningIncomplete` says what was done where, after."""
    found: dict[str, list[Decision]] = {}
    errors: dict[str, str] = {}
    with lock:
        for storage in storages:
            try:
                decisions = prune_storage(ctx, storage, policy, dry_run=dry_run,
                                          audit_engine=audit_engine)
            except Exception as exc:
                errors[storage.name] = why = _reason(exc)
                if not dry_run:
                    quietly("the failed pruning", ctx.audit.record, audit_engine, "prune",
                            "failed", actor=actor, via=via, message=f"{storage.name}: {why}")
                continue
            found[storage.name] = decisions
            if not dry_run:
                record_pruning(ctx.audit, audit_engine, storage.name, decisions, actor=actor,
                               via=via)
    if errors:
        raise PruningIncomplete(found, errors)
    return found


def _reason(exc: Exception) -> str:
    if isinstance(exc, BackupError):
        return str(exc)
    log.warning("retention failed (%s)", type(exc).__name__, exc_info=exc)
    return f"{type(exc).__name__}; details are in the server log"


def record_pruning(audit, engine, storage: str, decisions: list[Decision], *,
                   actor: str | None, via: str) -> None:
    """The one audit entry of a pruning: which storage, how many of how many, which."""
    removed = [d.name for d in decisions if not d.keep]
    held = [f"{d.name} ({d.held})" for d in decisions if d.held is not None]
    audit.record(engine, "prune", "ok", actor=actor, via=via,
                 message=f"{storage}: removed {len(removed)} of {len(decisions)}"
                         + (f": {', '.join(removed)}" if removed else "")
                         + (f"; kept {len(held)} locked: {', '.join(held)}" if held else ""))
