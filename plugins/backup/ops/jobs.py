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

from guest_backup.ops.context import BackupContext, shared
from guest_backup.errors import BackupBusy, BackupError
from guest_backup.ops.pipeline import UploadFailed, run_backup

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
        """Written whole (a reader never sees half of it), readable by this user
        only: the state names the admin who started the job."""
        tmp = self.folder / f".{STATE_FILE}.{os.getpid()}.{threading.get_ident()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(state))
        os.chmod(tmp, 0o600)  # an older file of the same name may have had other bits
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
    return shared(ctx, lambda c: RedisState(c, ctx.redis_key("backup-job")),
                  lambda: FileState(ctx.settings.backup_folder))


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


def claim(ctx: BackupContext, actor: str | None, queued: bool):
    """Take the backup lock now (so a second click is refused at once) and record
    a new job: ``queued`` for a worker (the lock is held, unrenewed, until the
    worker adopts it) or ``running`` here. Returns the job and the held lock."""
    lock = ctx.lock()
    folder = ctx.settings.backup_folder
    try:
        if queued:
            lock.acquire(ttl=QUEUED_LOCK_TTL, renew=False)
        else:
            Path(folder).mkdir(parents=True, exist_ok=True)
            lock.acquire()
    except BackupBusy:
        raise BackupBusy("a backup is already running; wait for it to finish") from None
    except OSError:
        raise BackupError(f"the backup folder {folder} is not writable") from None
    job = {"id": uuid.uuid4().hex, "state": "queued" if queued else "running",
           "stage": "waiting for a worker" if queued else "starting", "bytes": 0,
           "started_at": _now(), "finished_at": None, "archive": None, "error": None,
           "actor": actor}
    try:
        job_state(ctx).write(job)
    except OSError:
        lock.release()
        raise BackupError(f"the backup folder {folder} is not writable") from None
    return job, lock


def adopt(ctx: BackupContext, job: dict, token: str):
    """The worker's side of a queued job: hold the lock the click took; None (and
    the job marked failed) when another backup holds it now."""
    try:
        lock = ctx.lock().adopt(token)
    except BackupBusy:
        job.update(state="failed", error="another backup is running; wait for it to finish",
                   finished_at=_now())
        job_state(ctx).write(job)
        return None
    job.update(state="running", stage="starting")
    job_state(ctx).write(job)
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

    try:
        run = run_backup(ctx, engine, actor=job["actor"], via=job.get("via", "admin"),
                         progress=progress, lock=lock)
        job.update(state="done", stage="done", archive=run.result.path.name,
                   bytes=run.result.size)
    except UploadFailed as exc:  # the archive exists locally: downloadable, with a warning
        job.update(state="done", stage="done", archive=exc.path.name, warning=str(exc))
    except BackupError as exc:
        job.update(state="failed", error=str(exc))
    except Exception:  # already logged by the service; never leave "running" behind
        log.exception("web backup failed")
        job.update(state="failed", error="the backup failed; details are in the server log")
    finally:
        job["finished_at"] = _now()
        try:
            state.write(job)
        finally:
            lock.release()
