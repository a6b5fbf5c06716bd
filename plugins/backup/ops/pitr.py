"""Point-in-time recovery over the pgBackRest driver (:mod:`guest_backup.physical`):
setup, backups (audited), the state (``info``, the archiver, the recoverable
window), recovery into a new cluster (audited; its steps and checks, the erasure
ledger re-applied, in :mod:`guest_backup.ops.pitr_recover`), the drill (audited).

Everything PITR does is off until PITR_PG_DATA names the cluster's data directory.
"""

from __future__ import annotations

import logging
import random
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from guest_backup.errors import BackupError
from guest_backup.ops.audit import quietly
from guest_backup.ops.context import BackupContext
from guest_backup.ops.page_texts import (PITR_ARCHIVER_UNREADABLE, PITR_IN_FUTURE,
                                         PITR_NOT_CONFIGURED, PITR_STATE_UNKNOWN, Text,
                                         text_of)
from guest_backup.ops.pitr_recover import (audit_in_recovered, flush, random_moment, recover,
                                           short_error)
from guest_backup.physical import PitrError, recovery
from guest_backup.physical.cluster import ARCHIVER_SQL, Archiver, Cluster, epoch_time
from guest_backup.physical.config import PitrConfig
from guest_backup.physical.info import BackupSet, RepoInfo
from guest_backup.physical.pgbackrest import PgBackRest
from guest_backup.physical.setup import SetupReport, run_setup
from guest_backup.physical.state import (PitrStatus, Recovered, counts_text, load_snapshot,
                                         parse_target, save_snapshot, target_text)

log = logging.getLogger(__name__)
_READY_SQL = ("SELECT count(*), extract(epoch FROM min(modification)) "
              "FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'")


@dataclass
class Pitr:
    """The driver of one installation: settings, its cluster, pgBackRest."""

    config: PitrConfig
    cluster: Cluster
    backrest: PgBackRest


def open_pitr(ctx: BackupContext) -> Pitr:
    config = PitrConfig.from_config(ctx.settings.pitr)
    if config is None:
        raise PitrError(Text(PITR_NOT_CONFIGURED))
    cluster = Cluster.at(config.pg_data, config.pg_port, config.pg_socket, config.bindir)
    return Pitr(config, cluster, PgBackRest(config, cluster.owner))


def setup(ctx: BackupContext, apply: bool) -> SetupReport:
    p = open_pitr(ctx)
    return run_setup(p.config, p.cluster, p.backrest, apply, Path(ctx.instance_path))


def check(ctx: BackupContext) -> Pitr:
    """A CHECKPOINT, then pgBackRest's check. After a crash restart PostgreSQL waits
    for its next checkpoint (up to checkpoint_timeout) before archive_timeout works
    again; the CHECKPOINT ends that wait."""
    p = open_pitr(ctx)
    p.cluster.psql("CHECKPOINT")
    p.backrest.check()
    return p


def _refreshed(ctx: BackupContext, p: Pitr) -> RepoInfo:
    """``info`` now, kept for processes that cannot run pgBackRest (the web server)."""
    raw = p.backrest.info()
    save_snapshot(ctx.instance_path, {"info": raw})
    return RepoInfo.from_json(raw)


def backup(ctx: BackupContext, engine: Engine | None, kind: str, *, actor: str | None,
           via: str, started: Callable[[int], None] | None = None) -> BackupSet:
    """One pgBackRest backup (pgBackRest's own lock: PitrBusy when one runs); audited
    as ``pitr-backup`` (``started`` is given the entry's id: a page job that dies
    finishes it, :func:`guest_backup.ops.jobs.read_job`)."""
    from guest_backup.ops.create import safe_message

    p = open_pitr(ctx)
    entry = quietly("a PITR backup", ctx.audit.start, engine, "pitr-backup", actor=actor,
                    via=via, target=kind) if engine is not None else None
    if entry and started:
        started(entry)
    try:
        p.backrest.backup(kind)
        made = _refreshed(ctx, p).usable[-1]
    except BaseException as exc:  # an interrupt too: never an entry left running
        if entry:
            quietly("a PITR backup", ctx.audit.finish, engine, entry, "failed" if isinstance(
                exc, Exception) else "aborted", message=safe_message(exc, "PITR backup"))
        raise
    if entry:
        quietly("a PITR backup", ctx.audit.finish, engine, entry, "ok", target=made.label,
                bytes=made.repo_delta, message=f"{made.type} backup, {made.size} bytes of "
                f"cluster, {int(made.duration.total_seconds())} s")
    return made


def status(ctx: BackupContext, engine: Engine | None = None) -> PitrStatus:
    """The repository (``pgbackrest info`` when this process may run it, else the last
    one kept) and the archiver; what could not be read is in ``errors``."""
    try:
        p = open_pitr(ctx)
    except PitrError as exc:  # off, or settings that cannot work
        return PitrStatus(None, errors=[text_of(exc) or str(exc)]
                          if ctx.settings.pitr_enabled else [])
    result = PitrStatus(p.config)
    if p.cluster.owner.can_act():
        try:
            result.repo, result.read_at, result.live = _refreshed(ctx, p), _now(), True
        except PitrError as exc:
            result.errors.append(str(exc))
    if result.repo is None:
        kept = load_snapshot(ctx.instance_path)
        if kept:
            result.repo, result.read_at = RepoInfo.from_json(kept[0]["info"]), kept[1]
    if result.repo is None and not result.errors:
        result.errors.append(Text(PITR_STATE_UNKNOWN, owner=p.cluster.owner.name))
    try:
        result.archiver = read_archiver(p, engine)
    except (PitrError, sa.exc.SQLAlchemyError) as exc:
        result.errors.append(Text(PITR_ARCHIVER_UNREADABLE, error=short_error(exc)))
    return result


def read_archiver(p: Pitr, engine: Engine | None) -> Archiver | None:
    """From the cluster as its owner; else through the app's connection (the .ready
    files then need pg_monitor or a superuser)."""
    if p.cluster.owner.can_act():
        return Archiver.from_row(p.cluster.psql(ARCHIVER_SQL)[0], p.cluster.ready_files())
    if engine is None or engine.dialect.name != "postgresql":
        return None
    with engine.connect() as conn:
        row = conn.execute(sa.text(ARCHIVER_SQL)).one()
        try:
            with conn.begin_nested():
                waiting, oldest = conn.execute(sa.text(_READY_SQL)).one()
            ready = (int(waiting), epoch_time(oldest))
        except sa.exc.SQLAlchemyError:  # neither pg_monitor nor a superuser
            ready = None
        conn.rollback()
    return Archiver.from_row(tuple(row), ready)


def restore(ctx: BackupContext, engine: Engine | None, *, to: str, into: str,
            port: int | None, actor: str | None, via: str) -> Recovered:
    """Recover into a new cluster in ``into`` on ``port`` and check it; it keeps
    running. Audited as ``pitr-restore`` (quietly: the source may be down)."""
    p = open_pitr(ctx)
    target = parse_target(to)
    if target is not None and target > _now():
        raise PitrError(Text(PITR_IN_FUTURE, target=f"{target:%Y-%m-%d %H:%M:%S}"))
    folder = recovery.check_target(Path(into), p.config.pg_data)
    p.cluster.owner.refuse_foreign(folder)  # another user's: refused before any step
    port = port or recovery.free_port()
    recovery.check_port(port, p.cluster.socket, live=p.cluster.port)
    try:
        unflushed = _flush_for(p, target)
        result = recover(ctx, p, folder, port, target, carry=True)
        if unflushed:
            result.notes.insert(0, unflushed)
    except BaseException as exc:  # an interrupt (Ctrl-C, SIGTERM, SIGHUP) too: aborted
        raise _failed(ctx, engine, "pitr-restore", actor, via, str(into), exc) from None
    done = dict(actor=actor, via=via, target=str(folder), rows=sum(result.counts.values()),
                message=f"{target_text(target)} from {result.backup.label} on port {port}: "
                        f"{counts_text(result.counts)}")
    entry = quietly("a pitr-restore", ctx.audit.record, engine, "pitr-restore", "ok",
                    **done) if engine is not None else None
    audit_in_recovered(ctx, result, entry, "pitr-restore", "ok", **done)
    return result


def _flush_for(p, target) -> str | None:
    """Make "now" recoverable while the cluster runs. Failing that (its archiving
    broken: when recovering is likely), a moment may still be in the archive: go
    on from what it holds, and say so; ``latest`` means now, and is refused."""
    if not p.cluster.running():
        return None
    try:
        flush(p)
        return None
    except PitrError as exc:
        if target is None:
            raise
        return (f"the running cluster's latest writes could not be archived ({exc}); "
                f"recovered from what the archive already held")


def drill(ctx: BackupContext, engine: Engine | None, *, actor: str | None, via: str,
          rng: random.Random | None = None) -> Recovered:
    """Recover to a random moment of the last day (inside the window) into a scratch
    cluster, check it, stop and remove it. Audited as ``pitr-drill``."""
    p = open_pitr(ctx)
    try:
        scratch = Path(tempfile.mkdtemp(prefix="drill-", dir=p.config.folder))
    except OSError:
        raise PitrError(f"no scratch folder can be made in {p.config.folder} (run pitr setup)")
    port, left = recovery.free_port(), []
    try:
        if not p.cluster.running():
            raise PitrError(f"the cluster in {p.config.pg_data} is not running")
        target = random_moment(p, flush(p), rng)
        result = recover(ctx, p, scratch, port, target)
        if not result.revisions:
            raise PitrError("the recovered database has no Alembic revision")
    except BaseException as exc:  # an interrupt too: audited aborted
        raise _failed(ctx, engine, "pitr-drill", actor, via, None, exc) from None
    finally:  # its own failure no longer replaces the drill's outcome (nor its audit)
        left.append(_scrap(Cluster(scratch, port, p.cluster.socket, p.cluster.owner,
                                   p.cluster.bindir)))
    result.scratch_left = left[0]
    _audit(ctx, engine, "pitr-drill", "ok", actor, via, result.backup.label,
           f"{target_text(target)}: {counts_text(result.counts)}"
           + (f"; {left[0]}" if left[0] else ""), rows=sum(result.counts.values()))
    return result


def _scrap(cluster: Cluster) -> str | None:
    """The drill's scratch cluster stopped and removed; what is left, if anything."""
    try:
        recovery.remove(cluster)
        return None
    except PitrError as exc:
        log.warning("the PITR drill's scratch cluster could not be removed: %s", exc)
        return (f"the scratch cluster in {cluster.data} could not be stopped and removed "
                f"({exc}): stop it and delete the folder")


def _failed(ctx: BackupContext, engine: Engine | None, action: str, actor: str | None,
            via: str, target: str | None, exc: BaseException) -> BaseException:
    """A failure audited (before: only a BackupError was, anything else left no
    entry), an interrupt as ``aborted`` (before: none at all); the error to raise,
    with a message safe for users (an interrupt: itself)."""
    from guest_backup.ops.create import safe_message

    message = safe_message(exc, "point-in-time recovery")
    _audit(ctx, engine, action, "failed" if isinstance(exc, Exception) else "aborted", actor,
           via, target, message)
    if isinstance(exc, BackupError) or not isinstance(exc, Exception):
        return exc
    log.warning("%s failed (%s)", action, type(exc).__name__, exc_info=exc)
    return PitrError(message)


def _audit(ctx: BackupContext, engine: Engine | None, action: str, outcome: str,
           actor: str | None, via: str, target: str | None, message: str, **fields) -> None:
    if engine is not None:
        quietly(f"a {action}", ctx.audit.record, engine, action, outcome, actor=actor, via=via,
                target=target, message=message, **fields)


def _now() -> datetime:
    return datetime.now(timezone.utc)
