"""A backup as operators run it: write the archive, copy it to the remote
storage, apply retention to each storage, and ping the dead-man's switch.

``run_backup`` is what ``manage.py backup`` and the Backup page call. An upload
that fails keeps the local archive, is audited, pings ``/fail`` and raises
:class:`UploadFailed`, whose message names the storage (never a credential).
"""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from guest_backup.ops.audit import quietly
from guest_backup.ops.context import BackupContext
from guest_backup.ops.locks import BackupLock, RedisBackupLock
from guest_backup.ops.create import BackupResult, create_backup
from guest_backup.ops.notify import observed
from guest_backup.errors import BackupBusy, BackupError
from guest_backup.ops.retention import Policy, prune_storage, record_pruning
from guest_backup.storages import Storage, StorageError
from guest_backup.archive.writer import Progress

log = logging.getLogger(__name__)
PING_TIMEOUT = 10


class UploadFailed(BackupError):
    """The archive was written locally but its remote copy (or retention) failed."""

    def __init__(self, message: str, path) -> None:
        super().__init__(message)
        self.path = path


@dataclass
class BackupRun:
    result: BackupResult
    uploaded_to: list[str] = field(default_factory=list)
    pruned: dict[str, list[str]] = field(default_factory=dict)  # storage → removed names


def ping(url: str, ok: bool) -> None:
    """GET ``url`` (or ``url/fail``), the Healthchecks convention. Never raises,
    never logs the URL (it is a secret: whoever has it can fake a backup)."""
    if not url:
        return
    target = url.rstrip("/") + ("" if ok else "/fail")
    try:
        with urllib.request.urlopen(target, timeout=PING_TIMEOUT) as response:
            response.read(1024)
    except Exception as exc:
        log.warning("the health-check ping failed (%s)", type(exc).__name__)


@observed("backup")  # metrics and notifications when it ends; never raises
def run_backup(ctx: BackupContext, engine: Engine, *, output=None, keep: int | None = None,
               actor: str | None, via: str, progress: Progress | None = None,
               lock: BackupLock | RedisBackupLock | None = None) -> BackupRun:
    """Hold the backup lock for the whole run (a run already going makes this
    one raise :class:`BackupBusy` at once); ``lock`` is one the caller holds."""
    settings = ctx.settings
    if keep is not None:
        settings.keep = keep
    own_lock = lock is None
    try:
        if own_lock:
            lock = ctx.lock().acquire()
    except BackupBusy:
        raise
    except BackupError as exc:
        _record_failure(ctx, engine, actor, via, str(exc))
        ping(settings.healthcheck_url, ok=False)
        raise
    try:
        return _run(ctx, engine, settings, output, actor, via, progress, lock)
    finally:
        if own_lock:
            lock.release()


def _run(ctx, engine, settings, output, actor, via, progress, lock) -> BackupRun:
    # The remote's client (boto3: ~0.3 s to import and build) is prepared in a
    # thread while the dump runs; a remote that cannot work fails the run first.
    opened: dict = {}
    opener = threading.Thread(target=_open_remote, args=(ctx, opened), daemon=True)
    if output is None and settings.remote_url:
        opener.start()
    try:
        result = create_backup(engine, ctx.engine_for(engine.dialect.name), settings,
                               output=output, actor=actor, via=via, progress=progress, lock=lock,
                               audit=ctx.audit)
    except BackupError:
        ping(settings.healthcheck_url, ok=False)
        raise
    finally:
        if opener.is_alive() or opener.ident:
            opener.join()
    if "error" in opened:
        message = f"{opened['error']}; the archive was kept locally at {result.path}"
        _record_failure(ctx, engine, actor, via, str(opened["error"]))
        ping(settings.healthcheck_url, ok=False)
        raise UploadFailed(message, result.path)
    remote = opened.get("remote")
    run = BackupRun(result)
    failure = None
    if remote is not None:
        if progress:
            progress("uploading", result.size)
        failure = _upload(ctx, remote, result, engine, actor, via)
        if failure is None:
            run.uploaded_to.append(remote.url)
    if output is None:
        for storage in [ctx.local()] + ([remote] if remote and failure is None else []):
            try:
                decisions = prune_storage(ctx, storage, Policy.of(settings),
                                          protect=result.path.name)
            except StorageError as exc:
                failure = failure or str(exc)
                continue
            run.pruned[storage.name] = [d.name for d in decisions if not d.keep]
            if run.pruned[storage.name]:
                record_pruning(ctx.audit, engine, storage.name, decisions, actor=actor, via=via)
    ping(settings.healthcheck_url, ok=failure is None)
    if failure is not None:
        raise UploadFailed(f"{failure}; the archive was kept locally at {result.path}",
                           result.path)
    if progress:
        progress("done", result.size)
    return run


def _upload(ctx: BackupContext, remote: Storage, result: BackupResult, engine: Engine, actor,
            via) -> str | None:
    audit = ctx.audit
    entry = audit.start(engine, "upload", actor=actor, via=via, target=result.path.name)
    try:
        remote.upload(result.path)
    except StorageError as exc:
        audit.finish(engine, entry, "failed", message=str(exc))
        return str(exc)
    except BaseException:
        audit.finish(engine, entry, "aborted", message="interrupted")
        raise
    audit.finish(engine, entry, "ok", bytes=result.size, message=f"copied to {remote.url}")
    return None


def _record_failure(ctx: BackupContext, engine: Engine, actor, via, message: str) -> None:
    """A backup that failed before it started writing is audited all the same."""
    quietly("the failed backup", ctx.audit.record, engine, "backup", "failed", actor=actor,
            via=via, message=message)


def _open_remote(ctx: BackupContext, opened: dict) -> None:
    try:
        opened["remote"] = ctx.remote()
    except StorageError as exc:
        opened["error"] = exc
    except Exception as exc:  # reported like a storage error, never a traceback
        opened["error"] = StorageError(f"the remote storage cannot be used ({type(exc).__name__})")
