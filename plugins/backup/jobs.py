"""Backups started from the web page: one background job at a time, its state in
a small JSON file in BACKUP_FOLDER so every server worker process can report it
(and a reload of the page finds it again)."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from flask import Flask

from guest_registration.extensions import db

from .archive import BackupLock
from .context import backup_context
from .pipeline import UploadFailed, run_backup
from .errors import BackupBusy, BackupError

STATE_FILE = ".backup-job.json"
WRITE_EVERY = 0.3  # seconds between progress updates on disk


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_state(folder: Path, state: dict) -> None:
    tmp = folder / f".{STATE_FILE}.{os.getpid()}.{threading.get_ident()}"
    tmp.write_text(json.dumps(state))
    os.replace(tmp, folder / STATE_FILE)


def read_job(folder: str | os.PathLike) -> dict | None:
    """The latest web backup job, or None. A job marked running whose lock is free
    died with its process: it is reported as interrupted."""
    try:
        state = json.loads((Path(folder) / STATE_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    if state.get("state") == "running" and not BackupLock(folder).taken_elsewhere():
        state.update(state="failed", error="the backup was interrupted (the server stopped)")
    return state


def start_job(app: Flask, actor: str | None) -> dict:
    """Take the backup lock now (so a second click is refused at once) and run the
    backup in a background thread that releases it when done."""
    ctx = backup_context(app)
    settings = ctx.settings
    folder = Path(settings.backup_folder)
    try:
        lock = BackupLock(folder).acquire()
    except BackupBusy:
        raise BackupBusy("a backup is already running; wait for it to finish") from None
    job = {"id": uuid.uuid4().hex, "state": "running", "stage": "starting", "bytes": 0,
           "started_at": _now(), "finished_at": None, "archive": None, "error": None,
           "actor": actor}
    try:
        _write_state(folder, job)
    except OSError:
        lock.release()
        raise BackupError(f"the backup folder {folder} is not writable") from None

    def progress(stage: str, written: int, _last=[0.0]) -> None:
        now = time.monotonic()
        if stage != job["stage"] or now - _last[0] >= WRITE_EVERY:
            _last[0] = now
            job.update(stage=stage, bytes=written)
            _write_state(folder, job)

    def run() -> None:
        try:
            with app.app_context():
                run = run_backup(ctx, db.engine, actor=actor, via="admin", progress=progress,
                                 lock=lock)
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
                _write_state(folder, job)
            finally:
                lock.release()

    threading.Thread(target=run, name="web-backup", daemon=True).start()
    return job
