"""Recovery into a new cluster, for ``pitr restore`` and ``pitr drill``
(:mod:`guest_backup.ops.pitr`): "now" made recoverable, the backup chosen for the
target, pgBackRest's restore, and the recovered database checked (row counts,
the Alembic revision), the scratch databases of the moment dropped, the erasure
ledger re-applied and (a restore's) the audit trail carried over from the running
cluster. ``p`` is always a :class:`~guest_backup.ops.pitr.Pitr` (config, cluster,
pgBackRest)."""

from __future__ import annotations

import random
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import NullPool

from guest_backup.errors import BackupError
from guest_backup.ops.context import BackupContext
from guest_backup.ops.page_texts import PITR_NO_BACKUP, PITR_NO_BACKUP_YET, PITR_TOO_EARLY, Text
from guest_backup.physical import PitrError, recovery
from guest_backup.physical.cluster import epoch_time, sql_literal
from guest_backup.physical.info import RepoInfo
from guest_backup.physical.state import Recovered, pg_time, retarget

TABLES = ("trip", "registration", "guest")
#: a restore drill's scratch database (``engines/postgresql.py``, ``scratch``)
DRILL_PREFIX = "gr_drill_"


def flush(p: Any) -> datetime:
    """Make "now" recoverable: a commit, then pgBackRest's check (switches the WAL and
    waits until the segment is in the repository). Any moment before the returned
    one (the commit's transaction start) can be recovered to."""
    started = p.cluster.psql("SELECT extract(epoch FROM now()), txid_current()")[0][0]
    p.backrest.check()
    return epoch_time(started)


def recover(ctx: BackupContext, p: Any, into: Path, port: int,
            target: datetime | None, *, carry: bool = False) -> Recovered:
    """Recover into ``into`` on ``port`` and check it (``carry``: the running
    cluster's audit trail carried into it, for a cluster that stays)."""
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
            if carry:
                result.audit_carried = carry_audit(ctx, url, result.notes)
        except BackupError as exc:
            raise PitrError(str(exc)) from None
        checked.append(result)

    recovery.recover(p.backrest, p.cluster, into, port, label=chosen.label,
                     target=pg_time(target) if target else None, check=check)
    return checked[0]


def check_recovered(ctx: BackupContext, result: Recovered) -> None:
    """Row counts, the Alembic revision, the scratch databases dropped, and the
    erasure ledger re-applied."""
    drop_scratch_databases(result.cluster, result.notes)
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


def drop_scratch_databases(cluster: Any, notes: list[str]) -> None:
    """Every browse session's and restore drill's scratch database the running
    cluster held at the moment, dropped (as the owner, by force): each is a copy of
    an archive's guests, and the erasure ledger is re-applied in the app's database
    only, so a guest erased after the moment came back whole in them; the process
    that would have dropped one works on the running cluster, never on this one.
    Before, they stayed for good. A failure fails the check (the copy goes)."""
    from guest_backup.ops.browse_load import PREFIX

    found = [row[0] for row in cluster.psql(
        f"SELECT datname FROM pg_catalog.pg_database WHERE starts_with(datname, "
        f"{sql_literal(PREFIX)}) OR starts_with(datname, {sql_literal(DRILL_PREFIX)}) "
        f"ORDER BY datname")]
    for name in found:
        quoted = name.replace('"', '""')
        cluster.psql(f'DROP DATABASE IF EXISTS "{quoted}" WITH (FORCE)')
    if found:
        notes.append(f"dropped {len(found)} scratch database(s) of browse sessions and restore "
                     f"drills ({', '.join(found)}): copies of archives the running cluster "
                     f"held at that moment, in which a guest erased since would be whole")


def carry_audit(ctx: BackupContext, url: str, notes: list[str]) -> bool:
    """The running database's audit entries the recovered one lacks or holds
    unfinished (``running`` at the moment), copied into it (ARCHITECTURE habit 10:
    what brings data back carries the audit trail), the id sequence past them:
    before, the erasures' entries after the moment stayed in the old cluster only.
    A source that cannot be read is a note, not a failure (recovering is likeliest
    when it is broken); whether the trail was carried."""
    from guest_backup.ops.audit_carry import AUDIT_TABLE, AuditCarry

    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            after = conn.execute(sa.text(
                f"SELECT COALESCE(LEAST(max(id), min(id) FILTER (WHERE outcome = 'running') "
                f"- 1), 0) FROM {AUDIT_TABLE}")).scalar_one()
        carry = AuditCarry.set_aside(_timing_out(ctx.settings.database_url), after=after)
        if carry is None:
            notes.append("the running database has no audit trail: none was carried over")
            return False
        try:
            with engine.begin() as conn:
                carry.apply(conn)
        finally:
            carry.discard()
    except Exception as exc:  # whatever it is, the recovered cluster itself is sound
        notes.append(f"the running database's audit trail could not be carried over "
                     f"({short_error(exc)}): the entries after the moment are only there")
        return False
    finally:
        engine.dispose()
    return True


def audit_in_recovered(ctx: BackupContext, result: Recovered, entry: int | None, action: str,
                       outcome: str, **fields: Any) -> None:
    """The recovery's own entry in the recovered database too: carried with its id
    when the running database holds it (``entry``) and gave its trail, else written
    there anew; quietly (a warning in the log): the recovery itself succeeded."""
    if entry is not None and result.audit_carried and carry_audit(ctx, result.database_url, []):
        return
    from guest_backup.ops.audit import quietly

    engine = sa.create_engine(result.database_url, poolclass=NullPool)
    try:
        quietly(f"a {action} in the recovered database", ctx.audit.record, engine, action,
                outcome, **fields)
    finally:
        engine.dispose()


def _timing_out(url: str) -> str:
    """``url`` giving up after 10 s when the server does not answer (a source that is
    down must not hold the recovery); its own connect_timeout kept."""
    u = make_url(url)
    if "connect_timeout" not in u.query:
        u = u.update_query_dict({"connect_timeout": "10"})
    return u.render_as_string(hide_password=False)


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
