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
process and is reported as interrupted.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from flask import Flask, current_app

from guest_registration.extensions import db
from guest_registration.redis_link import redis_client, redis_key
from guest_registration.tasks import task_queue

from .context import BackupContext, backup_context
from .errors import BackupBusy, BackupError
from .pipeline import UploadFailed, run_backup

STATE_FILE = ".backup-job.json"
WRITE_EVERY = 0.3  # seconds between progress updates
#: how long a queued backup keeps the lock while it waits for a worker (seconds)
QUEUED_LOCK_TTL = 15 * 60
STATE_TTL = 30 * 24 * 3600  # a finished job's state in Redis is forgotten after this


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class FileState:
    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def write(self, state: dict) -> None:
        tmp = self.folder / f".{STATE_FILE}.{os.getpid()}.{threading.get_ident()}"
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.folder / STATE_FILE)

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


def job_state(ctx: BackupContext) -> FileState | RedisState:
    client = redis_client(ctx.app)
    if client is not None:
        return RedisState(client, redis_key(ctx.app, "backup-job"))
    return FileState(ctx.settings.backup_folder)


def read_job(ctx: BackupContext) -> dict | None:
    """The latest web backup job, or None. A job marked running (or queued) whose
    lock is free died with its process: it is reported as interrupted."""
    state = job_state(ctx).read()
    if state and state.get("state") in ("running", "queued") \
            and not ctx.lock().taken_elsewhere():
        state.update(state="failed", error="the backup was interrupted (the server stopped)"
                     if state["state"] == "running" else
                     "no worker took the queued backup in time (is `manage.py worker` running?)")
    return state


def start_job(app: Flask, actor: str | None) -> dict:
    """Take the backup lock now (so a second click is refused at once), then queue
    the backup for a worker (Redis) or run it in a thread of this process."""
    ctx = backup_context(app)
    queue = task_queue(app)
    lock = ctx.lock()
    try:
        if queue is not None:
            lock.acquire(ttl=QUEUED_LOCK_TTL, renew=False)  # the worker adopts it
        else:
            Path(ctx.settings.backup_folder).mkdir(parents=True, exist_ok=True)
            lock.acquire()
    except BackupBusy:
        raise BackupBusy("a backup is already running; wait for it to finish") from None
    except OSError:
        raise BackupError(f"the backup folder {ctx.settings.backup_folder} is not writable") \
            from None
    job = {"id": uuid.uuid4().hex, "state": "queued" if queue is not None else "running",
           "stage": "waiting for a worker" if queue is not None else "starting", "bytes": 0,
           "started_at": _now(), "finished_at": None, "archive": None, "error": None,
           "actor": actor}
    try:
        job_state(ctx).write(job)
    except OSError:
        lock.release()
        raise BackupError(f"the backup folder {ctx.settings.backup_folder} is not writable") \
            from None
    if queue is not None:
        queue.enqueue(run_queued_backup, job, lock.token, job_id=f"backup-{job['id']}",
                      result_ttl=3600, failure_ttl=7 * 24 * 3600)
    else:
        threading.Thread(target=_run, args=(app, ctx, job, lock), name="web-backup",
                         daemon=True).start()
    return job


def run_queued_backup(job: dict, token: str) -> str:
    """The RQ job (``manage.py worker``): adopt the lock the click took, then run."""
    app = current_app._get_current_object()
    ctx = backup_context(app)
    try:
        lock = ctx.lock().adopt(token)
    except BackupBusy:
        job.update(state="failed", error="another backup is running; wait for it to finish",
                   finished_at=_now())
        job_state(ctx).write(job)
        return "busy"
    job.update(state="running", stage="starting")
    job_state(ctx).write(job)
    _run(app, ctx, job, lock)
    return job["state"]


def enqueue_drill(app: Flask, actor: str | None, identity: str | None = None,
                  trusted_keys=()) -> str:
    """Queue a restore drill for ``manage.py worker``; the RQ job's id. ``identity``
    is a path on the worker's machine: no key material goes through Redis."""
    queue = task_queue(app)
    if queue is None:
        raise BackupError("REDIS_URL is not set: run the drill here, without --queue")
    job = queue.enqueue(run_queued_drill, actor, identity, list(trusted_keys),
                        job_id=f"restore-test-{uuid.uuid4().hex}", result_ttl=7 * 24 * 3600,
                        failure_ttl=7 * 24 * 3600)
    return job.id


def run_queued_drill(actor: str | None, identity: str | None, trusted_keys: list) -> dict:
    """The RQ job of a queued drill; audited as ``restore-test`` by the drill itself."""
    from .drill import restore_drill

    result = restore_drill(backup_context(current_app), db.engine, identity=identity,
                           trusted_keys=trusted_keys, actor=actor, via="worker")
    return {"ok": result.ok, "archive": result.archive, "rows": result.rows,
            "mismatches": list(result.mismatches)}


def _run(app: Flask, ctx: BackupContext, job: dict, lock) -> None:
    """Run the backup, writing its progress, and release the lock when done."""
    state = job_state(ctx)

    def progress(stage: str, written: int, _last=[0.0]) -> None:
        now = time.monotonic()
        if stage != job["stage"] or now - _last[0] >= WRITE_EVERY:
            _last[0] = now
            job.update(stage=stage, bytes=written)
            state.write(job)

    try:
        with app.app_context():
            run = run_backup(ctx, db.engine, actor=job["actor"], via="admin",
                             progress=progress, lock=lock)
        job.update(state="done", stage="done", archive=run.result.path.name,
                   bytes=run.result.size)
    except UploadFailed as exc:  # the archive exists locally: downloadable, with a warning
        job.update(state="done", stage="done", archive=exc.path.name, warning=str(exc))
    except BackupError as exc:
        job.update(state="failed", error=str(exc))
    except Exception:  # already logged by the service; never leave "running" behind
        app.logger.exception("web backup failed")
        job.update(state="failed", error="the backup failed; details are in the server log")
    finally:
        job["finished_at"] = _now()
        try:
            state.write(job)
        finally:
            lock.release()
