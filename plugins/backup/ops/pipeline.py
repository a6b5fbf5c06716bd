"""A backup as operators run it: write the archive while streaming it to the
remote storage, apply retention to each storage, and ping the dead-man's switch.

``run_backup`` is what ``manage.py backup`` and the Backup page call. An upload
that fails keeps the local archive, is audited, pings ``/fail`` and raises
:class:`UploadFailed`, whose message names the storage (never a credential).
With BACKUP_KEEP_LOCAL off the archive goes to the remote only: a failed upload
is then a failed backup, and nothing archive-sized is written here. A run with
``output`` (a copy in a folder of its own) is not the storages' backup: it never
pings, and its audit entries carry the marker health and the metrics skip.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from dataclasses import dataclass, field, replace

from sqlalchemy.engine import Engine

from guest_backup.ops.audit import quietly
from guest_backup.ops.context import BackupContext
from guest_backup.ops.locks import BackupLock, RedisBackupLock
from guest_backup.ops.create import BackupResult, create_backup
from guest_backup.ops.metrics import OUTPUT_FAILED
from guest_backup.ops.notify import observed
from guest_backup.errors import BackupBusy, BackupError
from guest_backup.ops.retention import Policy, prune_storage, record_pruning
from guest_backup.storages import Storage, StorageError
from guest_backup.archive.writer import Progress

log = logging.getLogger(__name__)
PING_TIMEOUT = 10
#: seconds the /fail ping of a run stopped by SIGTERM or Ctrl-C may take: the
#: process is on its way out (systemd kills it at TimeoutStopSec)
DYING_PING_TIMEOUT = 3


class UploadFailed(BackupError):
    """The archive was written locally but its remote copy (or retention) failed."""

    def __init__(self, message: str, path) -> None:
        super().__init__(message)
        self.path = path


class RetentionFailed(UploadFailed):
    """The backup was made (and copied), but retention failed: ``run`` is the backup,
    ``retention_failure`` why. Notifications tell it as retention's, not the backup's."""

    def __init__(self, message: str, path, run: "BackupRun", why: str) -> None:
        super().__init__(message, path)
        self.run, self.retention_failure = run, why


@dataclass
class BackupRun:
    result: BackupResult
    uploaded_to: list[str] = field(default_factory=list)
    pruned: dict[str, list[str]] = field(default_factory=dict)  # storage → removed names
    #: storage → (name, why) of archives retention would remove but may not yet (Object Lock)
    held: dict[str, list[tuple[str, str]]] = field(default_factory=dict)


def ping(url: str, ok: bool, timeout: float = PING_TIMEOUT) -> None:
    """GET ``url`` (or ``url/fail``), the Healthchecks convention. Never raises,
    never logs the URL (it is a secret: whoever has it can fake a backup)."""
    if not url:
        return
    target = url.rstrip("/") + ("" if ok else "/fail")
    try:
        with urllib.request.urlopen(target, timeout=timeout) as response:
            response.read(1024)
    except Exception as exc:
        log.warning("the health-check ping failed (%s)", type(exc).__name__)


def _healthcheck(settings, output) -> str:
    """The dead-man's switch to ping: none for an --output copy, which is not the
    storages' backup (a good copy reset the switch while the timer's backups failed)."""
    return settings.healthcheck_url if output is None else ""


class _OutputAudit:
    """The audit log as an --output run writes it: a backup entry that ends other
    than ok gets :data:`OUTPUT_FAILED` before its reason (a copy made is marked
    ``OUTPUT_COPY`` by ``create``), so that health and the metrics skip it."""

    def __init__(self, audit) -> None:
        self.audit, self.backups = audit, set()

    def __getattr__(self, name: str):
        return getattr(self.audit, name)

    def start(self, bind, action: str, **fields) -> int:
        entry = self.audit.start(bind, action, **fields)
        if action == "backup":
            self.backups.add(entry)
        return entry

    def finish(self, bind, entry_id: int, outcome: str, **fields) -> bool:
        if entry_id in self.backups and outcome != "ok":
            fields["message"] = OUTPUT_FAILED + str(fields.get("message") or "?")
        return self.audit.finish(bind, entry_id, outcome, **fields)


@observed("backup")  # metrics and notifications when it ends; never raises
def run_backup(ctx: BackupContext, engine: Engine, *, output=None, keep: int | None = None,
               actor: str | None, via: str, progress: Progress | None = None,
               lock: BackupLock | RedisBackupLock | None = None) -> BackupRun:
    """Hold the backup lock for the whole run (a run already going makes this
    one raise :class:`BackupBusy` at once); ``lock`` is one the caller holds."""
    from guest_backup.ops.uploads import overlap_problem

    settings, audited = ctx.settings, ctx
    if keep is not None:
        settings.keep = keep
    if output is not None:
        audited = replace(ctx, audit=_OutputAudit(ctx.audit))
    if problem := overlap_problem(settings, ctx.instance_path):  # the page's backups too
        _record_failure(ctx, engine, actor, via, problem, output)
        ping(_healthcheck(settings, output), ok=False)
        raise BackupError(f"{problem}; no backup was made")
    own_lock = lock is None
    try:
        if own_lock:
            lock = ctx.lock().acquire()
    except BackupBusy:
        raise
    except BackupError as exc:
        _record_failure(ctx, engine, actor, via, str(exc), output)
        ping(_healthcheck(settings, output), ok=False)
        raise
    try:
        return _run(audited, engine, settings, output, actor, via, progress, lock)
    except Exception:
        raise
    except BaseException:  # SIGTERM or Ctrl-C (the entry is ``aborted``): a failed run
        ping(_healthcheck(settings, output), ok=False, timeout=DYING_PING_TIMEOUT)
        raise
    finally:
        if own_lock:
            lock.release()
        reap_idle(ctx, engine, via)


def reap_idle(ctx: BackupContext, engine: Engine | None, via: str) -> None:
    """Browse copies idle past BACKUP_BROWSE_IDLE_MINUTES dropped (each a scratch
    database of an archive's guests): only the browse pages and commands did it,
    so a copy nobody came back to stayed for good. Never fails the caller."""
    try:
        from guest_backup.ops.browse import reap

        reap(ctx, engine, via)
    except Exception as exc:  # a bad key setting, a database that is down: said elsewhere
        log.warning("dropping idle browse copies failed: %s", type(exc).__name__)


def _run(ctx, engine, settings, output, actor, via, progress, lock) -> BackupRun:
    from guest_backup.ops.uploads import protected_paths

    remote, remote_error = _remote_for(ctx, settings, output)
    keep_local = settings.keep_local or remote is None
    if remote_error is not None and not settings.keep_local:
        message = f"{remote_error}; no archive was made (BACKUP_KEEP_LOCAL is off)"
        _record_failure(ctx, engine, actor, via, message)
        ping(_healthcheck(settings, output), ok=False)
        raise BackupError(message)
    try:
        result = create_backup(engine, ctx.engine_for(engine.dialect.name), settings,
                               output=output, actor=actor, via=via, progress=progress, lock=lock,
                               audit=ctx.audit, remote=remote, keep_local=keep_local,
                               skip=protected_paths(settings, ctx.instance_path))
    except BackupError as exc:
        if isinstance(exc, StorageError) and not keep_local:
            _record_upload(ctx, engine, None, str(exc), actor, via)
        ping(_healthcheck(settings, output), ok=False)
        raise
    if remote_error is not None:
        message = f"{remote_error}; the archive was kept locally at {result.path}"
        _record_failure(ctx, engine, actor, via, str(remote_error))
        ping(_healthcheck(settings, output), ok=False)
        raise UploadFailed(message, result.path)
    run = BackupRun(result)
    failure = pruning = None
    if remote is not None:
        failure = result.copy_failure
        _record_upload(ctx, engine, result, failure, actor, via)
        if failure is None:
            run.uploaded_to.append(remote.url)
    if output is None:
        for storage in [ctx.local()] + ([remote] if remote and failure is None else []):
            try:
                decisions = prune_storage(ctx, storage, Policy.of(settings),
                                          protect=result.path.name, audit_engine=engine)
            except StorageError as exc:
                pruning = pruning or (str(exc), f"{storage.name}: {exc}")
                continue
            except BackupError as exc:  # a setting retention needs (BACKUP_TRUSTED_KEYS)
                pruning = pruning or (f"the backup was made, but retention was not applied "
                                      f"({exc})", f"{storage.name}: {exc}")
                continue
            run.pruned[storage.name] = [d.name for d in decisions if not d.keep]
            run.held[storage.name] = [(d.name, d.held) for d in decisions if d.held]
            if run.pruned[storage.name] or run.held[storage.name]:
                record_pruning(ctx.audit, engine, storage.name, decisions, actor=actor, via=via)
    ping(_healthcheck(settings, output), ok=failure is None and pruning is None)
    if failure is not None or pruning is not None:
        kept = (f"the archive was kept locally at {result.path}" if keep_local else
                f"the archive is at {result.path}")
        if failure is None:
            raise RetentionFailed(f"{pruning[0]}; {kept}", result.path, run, pruning[1])
        raise UploadFailed(f"{failure}; {kept}", result.path)
    if progress:
        progress("done", result.size)
    return run


def _record_upload(ctx: BackupContext, engine: Engine, result: BackupResult | None,
                   failure: str | None, actor, via) -> None:
    """The audit entry of the remote copy (streamed while the archive was written)."""
    fields = {"target": result.path.name, "bytes": result.size} if result else {}
    if failure is None:
        fields["message"] = f"copied to {result.remote_url}"
    else:
        fields["message"] = failure
    quietly("the upload", ctx.audit.record, engine, "upload", "ok" if failure is None else
            "failed", actor=actor, via=via, **fields)


def _record_failure(ctx: BackupContext, engine: Engine, actor, via, message: str,
                    output=None) -> None:
    """A backup that failed before it started writing is audited all the same (an
    --output run's marked as such)."""
    quietly("the failed backup", ctx.audit.record, engine, "backup", "failed", actor=actor,
            via=via, message=(OUTPUT_FAILED if output is not None else "") + message)


def _remote_for(ctx: BackupContext, settings, output) -> tuple[Storage | None,
                                                              StorageError | None]:
    """The remote the archive is streamed to (none with ``output``), or why it
    cannot be used. Its client is built by the upload as it begins, just before
    the snapshot (:meth:`~guest_backup.storages.s3_upload.MultipartUpload._warm`)."""
    if output is not None or not settings.remote_url:
        return None, None
    try:
        remote = ctx.remote()
    except StorageError as exc:
        return None, exc
    except Exception as exc:  # reported like a storage error, never a traceback
        return None, StorageError(f"the remote storage cannot be used ({type(exc).__name__})")
    return remote, None
