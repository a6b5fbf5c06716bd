"""Backups started from the web page: one at a time, their progress readable by
every web process (and found again on a reload).

- Embedded (no ``REDIS_URL``): the backup runs in a thread of the web process;
  its state is a small JSON file in BACKUP_FOLDER. Stopping that process
  interrupts it (the page then says so).
- With ``REDIS_URL``: the backup is queued for ``manage.py worker`` and its state
  is a Redis key; the web process may stop right after the click and the backup
  still finishes.

Either way the backup lock is taken at the click, so a second click is refused
at once, and a job whose lock is free while it says "running" died with its
process: it is reported as interrupted, its audit entry (if the job had not
finished it) as failed.

Two kinds of job (:class:`JobKind`), each with its own state and its own lock:
the logical backup (:data:`LOGICAL`, the backup lock every logical backup takes)
and the pgBackRest backup of the PITR page (:data:`PITR`). A logical and a PITR
backup may run together: both only read the database (pgBackRest copies the
data files between ``pg_backup_start`` and ``pg_backup_stop``, which block
nobody; the logical backup reads one snapshot) and neither touches the other's
files. Two PITR backups never run together: the PITR lock refuses a second
click, and pgBackRest's own lock refuses a backup the timer or a command runs
meanwhile (the job then fails saying so).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from guest_backup.archive.manifest import now_text
from guest_backup.files import write_private
from guest_backup.ops.context import BackupContext, shared
from guest_backup.errors import BackupBusy, BackupError
from guest_backup.ops.locks import BackupLock, RedisBackupLock
from guest_backup.ops.page_texts import (FOLDER_NOT_WRITABLE, JOB_FAILED, JOB_INTERRUPTED,
                                         JOB_NO_WORKER, JOB_OTHER_RUNNING, Text)
from guest_backup.ops.pipeline import UploadFailed, run_backup

_log = logging.getLogger(__name__)
STATE_FILE = ".backup-job.json"
WRITE_EVERY = 0.3  # seconds between progress updates
#: how long a queued backup keeps the lock while it waits for a worker (seconds)
QUEUED_LOCK_TTL = 15 * 60
STATE_TTL = 30 * 24 * 3600  # a finished job's state in Redis is forgotten after this


class FileState:
    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def write(self, state: dict) -> None:
        """Written whole (a reader never sees half of it), readable by this user
        only: the state names the admin who started the job."""
        write_private(self.folder / STATE_FILE, json.dumps(state).encode())

    def read(self) -> dict | None:
        try:
            return json.loads((self.folder / STATE_FILE).read_text())
        except (FileNotFoundError, ValueError):
            return None


class RedisState:
    def __init__(self, client, key: str) -> None:
        self.client, self.key = client, key

    def write(self, state: dict) -> None:
        self.client.set(self.key, json.dumps(state), ex=STATE_TTL)

    def read(self) -> dict | None:
        raw = self.client.get(self.key)
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None


@dataclass(frozen=True)
class JobKind:
    """One kind of page-started job: its state's Redis key, its folder without Redis
    (the state file, and the lock file of a BackupLock), its lock (not taken yet),
    and what a second click is told."""

    state_key: str
    folder: Callable[[BackupContext], Path]
    lock: Callable[[BackupContext], "BackupLock | RedisBackupLock"]
    busy: str


def _pitr_lock(ctx: BackupContext) -> BackupLock | RedisBackupLock:
    return shared(ctx, lambda c: RedisBackupLock(c, ctx.redis_key("pitr-lock")),
                  lambda: BackupLock(PITR.folder(ctx)))


LOGICAL = JobKind("backup-job", lambda ctx: Path(ctx.settings.backup_folder),
                  lambda ctx: ctx.lock(), "a backup is already running; wait for it to finish")
#: the PITR page's backups: their state and lock in <instance>/pitr-job (0700) or Redis
PITR = JobKind("pitr-job", lambda ctx: Path(ctx.instance_path) / "pitr-job", _pitr_lock,
               "a PITR backup is already running; wait for it to finish")


def job_state(ctx: BackupContext, kind: JobKind = LOGICAL) -> FileState | RedisState:
    return shared(ctx, lambda c: RedisState(c, ctx.redis_key(kind.state_key)),
                  lambda: FileState(kind.folder(ctx)))


def read_job(ctx: BackupContext, kind: JobKind = LOGICAL) -> dict | None:
    """The latest web backup job, or None. A job marked running (or queued) whose
    lock is free died with its process: it is reported as interrupted, and its
    audit entry finished (:func:`_finish_dead`)."""
    store = job_state(ctx, kind)
    state = store.read()
    if state and state.get("state") in ("running", "queued") \
            and not kind.lock(ctx).taken_elsewhere():
        again = store.read()  # a job that ended meanwhile wrote its end before its release
        if again and (again.get("id"), again.get("state")) != (state.get("id"), state.get("state")):
            return again
        state.update(state="failed", error=Text(JOB_INTERRUPTED if state["state"] == "running"
                                                else JOB_NO_WORKER))
        if state.get("audit_id"):
            _finish_dead(ctx, store, state)
    return state


def _finish_dead(ctx: BackupContext, store, state: dict) -> None:
    """The audit entry of a job that died with its process (SIGKILL, the OOM killer)
    finished as ``failed`` while it is still ``running`` (one conditional UPDATE:
    an entry the job finished itself, a backup audited ``ok`` then killed while
    pruning, stays ``ok``; of several polls at once one finishes it). No lock: a
    click meanwhile starts its backup. The state loses the entry's id only while it
    is still this job's. Never raises (tried again at the next read)."""
    from sqlalchemy import create_engine, pool

    try:
        engine = create_engine(ctx.settings.database_url, poolclass=pool.NullPool)
        try:
            ctx.audit.finish(engine, state["audit_id"], "failed", only_running=True, message=(
                "interrupted: the process running it ended (killed, or its server stopped)"))
        finally:
            engine.dispose()
        held = store.read() or {}
        if (held.get("id"), held.get("audit_id")) == (state.get("id"), state["audit_id"]):
            store.write({**state, "audit_id": None, "finished_at": now_text()})
    except Exception as exc:
        _log.warning("the audit entry of an interrupted job could not be finished (%s)",
                     type(exc).__name__)


class _NotingAudit:
    """``ctx.audit``, telling ``noted`` the id of the ``action`` entry it starts (the
    logical backup's: the pipeline starts it once its snapshot exists)."""

    def __init__(self, audit, action: str, noted: Callable[[int], None]) -> None:
        self._audit, self._action, self._noted = audit, action, noted

    def start(self, bind, action: str, **fields) -> int:
        entry = self._audit.start(bind, action, **fields)
        if action == self._action:
            self._noted(entry)
        return entry

    def __getattr__(self, name: str):
        return getattr(self._audit, name)


def _noting(state, job: dict) -> Callable[[int], None]:
    """Keep a job's audit entry id in its state (see :func:`_finish_dead`)."""
    def noted(entry: int) -> None:
        job["audit_id"] = entry
        state.write(job)

    return noted


def claim(ctx: BackupContext, actor: str | None, queued: bool, kind: JobKind = LOGICAL,
          **fields):
    """Take the job kind's lock now (so a second click is refused at once) and
    record a new job (with ``fields``): ``queued`` for a worker (the lock is held,
    unrenewed, until the worker adopts it) or ``running`` here. Returns the job and
    the held lock."""
    lock = kind.lock(ctx)
    folder = kind.folder(ctx)
    try:
        if queued:
            lock.acquire(ttl=QUEUED_LOCK_TTL, renew=False)
        else:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            lock.acquire()
    except BackupBusy:
        raise BackupBusy(kind.busy) from None
    except OSError:
        raise BackupError(Text(FOLDER_NOT_WRITABLE, folder=str(folder))) from None
    job = {"id": uuid.uuid4().hex, "state": "queued" if queued else "running",
           "stage": "waiting for a worker" if queued else "starting", "bytes": 0,
           "started_at": now_text(), "finished_at": None, "archive": None, "error": None,
           "actor": actor, **fields}
    try:
        job_state(ctx, kind).write(job)
    except OSError:
        lock.release()
        raise BackupError(Text(FOLDER_NOT_WRITABLE, folder=str(folder))) from None
    return job, lock


def adopt(ctx: BackupContext, job: dict, token: str, kind: JobKind = LOGICAL):
    """The worker's side of a queued job: hold the lock the click took; None (and
    the job marked failed) when another backup holds it now."""
    try:
        lock = kind.lock(ctx).adopt(token)
    except BackupBusy:
        job.update(state="failed", error=Text(JOB_OTHER_RUNNING),
                   finished_at=now_text())
        job_state(ctx, kind).write(job)
        return None
    except BackupError as exc:  # e.g. a worker run as root in the service's folder
        job.update(state="failed", error=str(exc), finished_at=now_text())
        job_state(ctx, kind).write(job)
        return None
    job.update(state="running", stage="starting")
    job_state(ctx, kind).write(job)
    return lock


def run_job(ctx: BackupContext, engine, job: dict, lock, log) -> None:
    """Run the backup, writing its progress, and release the lock when done."""
    state = job_state(ctx)
    last = [0.0]

    def progress(stage: str, written: int) -> None:
        now = time.monotonic()
        if stage != job["stage"] or now - last[0] >= WRITE_EVERY:
            last[0] = now
            job.update(stage=stage, bytes=written)
            state.write(job)

    noting = dataclasses.replace(ctx, audit=_NotingAudit(ctx.audit, "backup",
                                                          _noting(state, job)))
    with _ending(state, job, lock, log, "web backup"):
        try:
            run = run_backup(noting, engine, actor=job["actor"], via=job.get("via", "admin"),
                             progress=progress, lock=lock)
            job.update(state="done", stage="done", archive=run.result.path.name,
                       bytes=run.result.size)
        except UploadFailed as exc:  # the archive exists locally: downloadable, with a warning
            job.update(state="done", stage="done", archive=exc.path.name, warning=str(exc))


@contextlib.contextmanager
def _ending(state, job: dict, lock, log, what: str) -> Iterator[None]:
    """The one end of a page job: a BackupError's one line (or, for anything else, a
    pointer to the server log) as its error, never "running" left behind; the
    finish time written, the lock released."""
    try:
        yield
    except BackupError as exc:
        job.update(state="failed", error=str(exc))
    except Exception:  # already logged by the service
        log.exception(f"{what} failed")
        job.update(state="failed", error=Text(JOB_FAILED))
    finally:
        job["finished_at"] = now_text()
        try:
            state.write(job)
        finally:
            lock.release()


def run_pitr_job(ctx: BackupContext, engine, job: dict, lock, log) -> None:
    """Run the pgBackRest backup of a PITR job (audited by :func:`pitr.backup`),
    and release the PITR lock when done. pgBackRest reports no progress while it
    copies: the state says which stage it is in, the page counts the time."""
    from guest_backup.ops import pitr

    state = job_state(ctx, PITR)
    job.update(stage="copying")
    # a failure is one line: pgBackRest's code and message, secrets masked (PitrBusy:
    # "another pgBackRest backup of stanza … is running", the timer's or a command's)
    with _ending(state, job, lock, log, "PITR backup"):
        state.write(job)
        made = pitr.backup(ctx, engine, job["type"], actor=job["actor"],
                           via=job.get("via", "admin"), started=_noting(state, job))
        job.update(state="done", stage="done", label=made.label, type=made.type,
                   bytes=made.repo_delta, size=made.size,
                   seconds=int(made.duration.total_seconds()))
