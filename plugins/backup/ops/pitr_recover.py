"""Recovery into a new cluster, for ``pitr restore`` and ``pitr drill``
(:mod:`guest_backup.ops.pitr`): "now" made recoverable, the backup chosen for the
target, pgBackRest's restore, and the recovered database checked (row counts,
the Alembic revision) with the erasure ledger re-applied. ``p`` is always a
:class:`~guest_backup.ops.pitr.Pitr` (config, cluster, pgBackRest)."""

from __future__ import annotations

import random
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from guest_backup.errors import BackupError
from guest_backup.ops.context import BackupContext
from guest_backup.ops.page_texts import PITR_NO_BACKUP, PITR_NO_BACKUP_YET, PITR_TOO_EARLY, Text
from guest_backup.physical import PitrError, recovery
from guest_backup.physical.cluster import epoch_time
from guest_backup.physical.info import RepoInfo
from guest_backup.physical.state import Recovered, pg_time, retarget

TABLES = ("trip", "registration", "guest")


def flush(p: Any) -> datetime:
    """Make "now" recoverable: a commit, then pgBackRest's check (switches the WAL and
    waits until the segment is in the repository). Any moment before the returned
    one (the commit's transaction start) can be recovered to."""
    started = p.cluster.psql("SELECT extract(epoch FROM now()), txid_current()")[0][0]
    p.backrest.check()
    return epoch_time(started)


def recover(ctx: BackupContext, p: Any, into: Path, port: int,
             target: datetime | None) -> Recovered:
    repo = RepoInfo.from_json(p.backrest.info())
    chosen = repo.for_target(target)
    if chosen is None:
        window = repo.window(None)
        raise PitrError(Text(PITR_NO_BACKUP) if window is None else Text(
            PITR_TOO_EARLY, target=f"{target:%Y-%m-%d %H:%M:%S}",
            first=f"{window[0]:%Y-%m-%d %H:%M:%S}"))
    url = retarget(ctx.settings.database_url, port)
    checked: list[Recovered] = []

    def check(cluster: Any) -> None:
        """Counted, revision read, ledger re-applied; else the copy goes (it may hold
        a guest the ledger says was erased), as any recovery that did not finish."""
        result = Recovered(cluster, chosen, target, url)
        try:
            check_recovered(ctx, result)
        except BackupError as exc:
            raise PitrError(str(exc)) from None
        checked.append(result)

    recovery.recover(p.backrest, p.cluster, into, port, label=chosen.label,
                     target=pg_time(target) if target else None, check=check)
    return checked[0]


def check_recovered(ctx: BackupContext, result: Recovered) -> None:
    """Row counts, the Alembic revision, and the erasure ledger re-applied."""
    engine = sa.create_engine(result.database_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            for table in TABLES:
                try:
                    result.counts[table] = conn.execute(
                        sa.text(f'SELECT count(*) FROM "{table}"')).scalar_one()
                except sa.exc.SQLAlchemyError:
                    raise PitrError(f"the recovered database has no table {table}") from None
            try:
                result.revisions = list(conn.execute(
                    sa.text("SELECT version_num FROM alembic_version")).scalars())
            except sa.exc.SQLAlchemyError:
                conn.rollback()
        result.erasures = reapply_ledger(ctx, engine, result.notes)
    except sa.exc.SQLAlchemyError as exc:
        raise PitrError(f"the recovered cluster cannot be checked: {short_error(exc)}") from None
    finally:
        engine.dispose()


def reapply_ledger(ctx: BackupContext, engine: Engine, notes: list[str]) -> int | None:
    """The erasure ledger on the recovered database, checked (nobody it names left)
    and marked (None: not in this version). Erasures recorded after this, in the
    cluster it is to replace, show as missing in ``backup-health`` once the app is
    switched to it (``erasure-ledger apply`` re-applies them)."""
    try:
        from guest_backup.ops.finishing import ErasureReapply
        from guest_backup.ops.ledger import ErasureLedger
        from guest_backup.ops.ledger_copies import collect
    except ImportError:
        notes.append("the erasure ledger is not part of this version: nothing re-applied")
        return None
    ledger = ErasureLedger.in_folder(ctx.instance_path)
    erasures = ErasureReapply(collect(ledger, ctx.storages(), warn=notes.append), ledger)
    with engine.begin() as conn:
        erasures.apply(conn)
    return erasures.applied


def random_moment(p: Any, until: datetime, rng: random.Random | None) -> datetime:
    """A moment of the last day inside the window (waiting a moment, and making "now"
    recoverable again, when the only backup has just ended)."""
    window = RepoInfo.from_json(p.backrest.info()).window(None)
    if window is None:
        raise PitrError(Text(PITR_NO_BACKUP_YET))
    if until <= window[0]:
        time.sleep(min(5.0, (window[0] - until).total_seconds() + 0.5))
        until = flush(p)
    start = max(window[0], until - timedelta(days=1))
    return start + (until - start) * (rng or random.Random()).random()


def short_error(exc: Exception) -> str:
    text = str(getattr(exc, "orig", exc)).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
