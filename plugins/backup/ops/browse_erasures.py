"""Erasures made while an archive is open: the scratch copy had the ledger
re-applied when it was loaded, but a guest erased afterwards would still show
there (and a selective restore would leave it out, but the page would show the
name). Before each use the ledger in the instance folder (where every erasure
is written first) is compared with what the copy has seen; when it grew, the
ledger is re-applied to the scratch copy."""

from __future__ import annotations

from guest_backup.ops.browse import BrowseSession
from guest_backup.ops.browse_registry import Registry
from guest_backup.ops.finishing import ErasureReapply
from guest_backup.ops.ledger import ErasureLedger
from guest_backup.ops.ledger_copies import collect


def _stamp(ledger: ErasureLedger) -> int:
    """How much the ledger holds (it only grows: one line per erasure)."""
    try:
        return ledger.path.stat().st_size
    except OSError:
        return 0


def refresh_erasures(session: BrowseSession) -> int:
    """Re-apply the ledger to ``session``'s scratch copy if it grew since the copy
    last saw it; how many erasures were applied now (0: nothing new)."""
    ctx = session.ctx
    ledger = ErasureLedger.in_folder(ctx.instance_path)
    stamp = _stamp(ledger)
    registry = Registry(ctx.instance_path)
    seen = registry.read().get(session.id, {}).get("ledger_size")
    if session.state != "open" or stamp == seen or (stamp == 0 and seen is None):
        return 0  # (first use: applied again, in case it grew since the load read it)
    reapply = ErasureReapply(collect(ledger, [ctx.local()]), ledger)
    with session.engine.begin() as conn:
        reapply.apply(conn)
    _remember(registry, session, stamp)
    return reapply.applied


def _remember(registry: Registry, session: BrowseSession, stamp: int) -> None:
    with registry.edit() as entries:
        if session.id in entries:
            entries[session.id]["ledger_size"] = stamp
