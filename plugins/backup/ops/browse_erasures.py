"""Erasures made while an archive is open: the scratch copy had the ledger
re-applied when it was loaded, but a guest erased afterwards would still show
there (and a selective restore would leave it out, but the page would show the
name). Before each use the ledger in the instance folder (where every erasure
is written first) is compared with what the copy has seen; when it grew, the
ledger is re-applied to the scratch copy. Each erasure (and ``erasure-ledger
apply``) does it too, at once (:func:`after_erasure`): a copy nobody used kept
the erased guest's whole record until it was reaped, hours later."""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy.engine import Engine

from guest_backup.ops.browse import BrowseSession
from guest_backup.ops.browse_registry import FILE, FOLDER, Registry
from guest_backup.ops.finishing import ErasureReapply
from guest_backup.ops.ledger import ErasureLedger
from guest_backup.ops.ledger_copies import collect

log = logging.getLogger(__name__)


def _stamp(ledger: ErasureLedger) -> int:
    """How much the ledger holds (it only grows: one line per erasure)."""
    try:
        return ledger.path.stat().st_size
    except OSError:
        return 0


def refresh_erasures(session: BrowseSession) -> int:
    """Re-apply the ledger to ``session``'s scratch copy if it grew since the copy
    last saw it; how many erasures were applied now (0: nothing new). On SQLite
    the values replaced are overwritten in the file (``secure_delete``), not left
    in its free space."""
    ctx = session.ctx
    ledger = ErasureLedger.in_folder(ctx.instance_path)
    stamp = _stamp(ledger)
    registry = Registry(ctx.instance_path)
    seen = registry.read().get(session.id, {}).get("ledger_size")
    if session.state != "open" or stamp == seen or (stamp == 0 and seen is None):
        return 0  # (first use: applied again, in case it grew since the load read it)
    reapply = ErasureReapply(collect(ledger, [ctx.local()]), ledger)
    with session.engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("PRAGMA secure_delete=ON")
        reapply.apply(conn)
    _remember(registry, session, stamp)
    return reapply.applied


def _remember(registry: Registry, session: BrowseSession, stamp: int) -> None:
    with registry.edit() as entries:
        if session.id in entries:
            entries[session.id]["ledger_size"] = stamp


def after_erasure(ctx, live_engine: Engine | None = None, via: str = "cli") -> list[str]:
    """After an erasure commits: the sessions idle for longer than
    BACKUP_BROWSE_IDLE_MINUTES dropped (:func:`~guest_backup.ops.browse.reap`), and
    the ledger re-applied to every open one now. A copy it cannot be re-applied to
    is dropped. What went wrong is a warning: the erasure stands."""
    if not (Path(ctx.instance_path) / FOLDER / FILE).is_file():
        return []  # no archive was ever opened here
    from guest_backup.ops.browse import reap, sessions
    from guest_backup.ops.browse_session import engines

    warnings = []
    try:
        reap(ctx, live_engine, via)
    except Exception as exc:
        log.warning("browse: idle sessions could not be dropped after an erasure",
                    exc_info=True)
        warnings.append(f"idle browse sessions could not be dropped ({type(exc).__name__}): "
                        f"close them on the browse page")
    for session in sessions(ctx):
        if session.state != "open":
            continue  # one still opening re-applies the ledger at its first use
        mine = session.id not in engines  # this process had no engine on it: none is left
        try:
            refresh_erasures(session)
            if mine and (engine := engines.pop(session.id, None)) is not None:
                engine.dispose()
        except Exception as exc:
            log.warning("browse: the erasure ledger could not be re-applied to session %s",
                        session.id, exc_info=True)
            session.close(live_engine, via=via, reason="the erasure ledger could not be "
                          "re-applied to it")
            warnings.append(f"the erasure could not be applied to the archive open in a "
                            f"browse session ({session.archive}, {type(exc).__name__}): its "
                            f"scratch copy was dropped")
    return warnings
