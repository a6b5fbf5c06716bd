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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterable

from guest_backup.ops.notify import observed
from guest_backup.storages import ArchiveHeld, StorageError


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
         future: Iterable[tuple[str, datetime]] = ()) -> list[Decision]:
    """One decision per recognised archive (name and signed creation time), newest
    first, then those signed with a creation time in the future and the
    unrecognised files, which are always kept and never counted."""
    decisions = [Decision(name, when) for name, when in archives]
    undated = [Decision(name, when, ["signed with a creation time in the future (check the "
                                     "clock): never deleted by retention"])
               for name, when in future]
    undated += [Decision(name, datetime.min, ["unrecognised: never deleted by retention"])
                for name in unrecognised]
    decisions.sort(key=lambda d: (d.when, d.name), reverse=True)
    if policy.keeps_everything:
        for d in decisions:
            d.reasons.append("no retention rule set")
        return _past_horizon(decisions, policy.horizon) + undated
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
    return _past_horizon(decisions, policy.horizon) + undated


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
                  dry_run: bool = False) -> list[Decision]:
    """Apply ``policy`` to one storage's recognised archives, dated by their signed
    creation time (never removing ``protect``, never touching a file that is not
    recognised, never trying to delete what the storage :meth:`held`); returns every
    decision, newest first."""
    from guest_backup.ops.listing import recognised

    ahead: list = []
    good, bad = recognised(ctx, storage, ahead)
    decisions = plan([(a.name, a.created) for a in good], policy, bad,
                     [(a.name, a.created) for a in ahead])
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


@observed("prune")  # metrics and notifications when it ends; never raises
def prune_archives(ctx, storages, policy: Policy, *, lock, dry_run: bool, audit_engine,
                   actor: str | None, via: str) -> dict[str, list[Decision]]:
    """``backup-prune``: apply ``policy`` to each storage separately, under the
    backup lock; a real run is audited per storage."""
    found: dict[str, list[Decision]] = {}
    with lock:
        for storage in storages:
            decisions = found[storage.name] = prune_storage(ctx, storage, policy,
                                                            dry_run=dry_run)
            if not dry_run:
                record_pruning(ctx.audit, audit_engine, storage.name, decisions, actor=actor,
                               via=via)
    return found


def record_pruning(audit, engine, storage: str, decisions: list[Decision], *,
                   actor: str | None, via: str) -> None:
    """The one audit entry of a pruning: which storage, how many of how many, which."""
    removed = [d.name for d in decisions if not d.keep]
    held = [f"{d.name} ({d.held})" for d in decisions if d.held is not None]
    audit.record(engine, "prune", "ok", actor=actor, via=via,
                 message=f"{storage}: removed {len(removed)} of {len(decisions)}"
                         + (f": {', '.join(removed)}" if removed else "")
                         + (f"; kept {len(held)} locked: {', '.join(held)}" if held else ""))
