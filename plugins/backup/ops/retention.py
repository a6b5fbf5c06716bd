"""Retention with restic's semantics (``forget --keep-last/daily/weekly/monthly``).

For each rule, walk the archives newest first and keep the newest archive of
each of the last N days / ISO weeks / months that have one (``last`` keeps the
N newest); an archive is kept when any rule keeps it; the newest archive is
always kept. With no rule set, everything is kept. Times are the archives' signed
creation times (UTC), never a file's time or a name anyone can give a file; only
recognised archives count, and a file that is not recognised is never deleted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Iterable



@dataclass(frozen=True)
class Policy:
    last: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0

    @classmethod
    def of(cls, settings) -> "Policy":
        """BACKUP_KEEP, BACKUP_KEEP_DAILY, _WEEKLY and _MONTHLY."""
        return cls(settings.keep, settings.keep_daily, settings.keep_weekly,
                   settings.keep_monthly)

    @property
    def keeps_everything(self) -> bool:
        return not (self.last or self.daily or self.weekly or self.monthly)


@dataclass
class Decision:
    name: str
    when: datetime
    reasons: list[str] = field(default_factory=list)

    @property
    def keep(self) -> bool:
        return bool(self.reasons)

    def describe(self) -> str:
        return "keep (" + ", ".join(self.reasons) + ")" if self.reasons else "remove"


_BUCKETS: dict[str, Callable[[datetime], tuple]] = {
    "daily": lambda t: (t.year, t.month, t.day),
    "weekly": lambda t: tuple(t.isocalendar()[:2]),
    "monthly": lambda t: (t.year, t.month),
}


def plan(archives: Iterable[tuple[str, datetime]], policy: Policy,
         unrecognised: Iterable[str] = ()) -> list[Decision]:
    """One decision per recognised archive (name and signed creation time), newest
    first, then the unrecognised files, which are always kept."""
    decisions = [Decision(name, when) for name, when in archives]
    undated = [Decision(name, datetime.min, ["unrecognised: never deleted by retention"])
               for name in unrecognised]
    decisions.sort(key=lambda d: (d.when, d.name), reverse=True)
    if policy.keeps_everything:
        for d in decisions:
            d.reasons.append("no retention rule set")
        return decisions + undated
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
    return decisions + undated


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
    recognised); returns every decision, newest first."""
    from guest_backup.ops.listing import recognised

    good, bad = recognised(ctx, storage)
    decisions = plan([(a.name, a.created) for a in good], policy, bad)
    for d in decisions:
        if d.name == protect and not d.keep:
            d.reasons.append("just made")
        if not d.keep and not dry_run:
            storage.delete(d.name)
    return decisions


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
    audit.record(engine, "prune", "ok", actor=actor, via=via,
                 message=f"{storage}: removed {len(removed)} of {len(decisions)}"
                         + (f": {', '.join(removed)}" if removed else ""))
