"""Backups started from the web page: one background job at a time, its state in
a small JSON file in BACKUP_FOLDER so every server worker process can report it
(and a reload of the page finds it again)."""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from flask import Flask

from guest_registration.extensions import db

from .context import backup_settings, dumper_for
from .service import LOCK_NAME, BackupBusy, BackupError, create_backup

STATE_FILE = ".backup-job.json"
WRITE_EVERY = 0.3  # seconds between progress updates on disk


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_state(folder: Path, state: dict) -> None:
    tmp = folder / f".{STATE_FILE}.{os.getpid()}.{threading.get_ident()}"
    tmp.write_text(json.dumps(state))
    os.replace(tmp, folder / STATE_FILE)


def lock_is_held(folder: str | os.PathLike) -> bool:
    """Whether some process (or thread) is running a backup right now."""
    path = Path(folder) / LOCK_NAME
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def read_job(folder: str | os.PathLike) -> dict | None:
    """The latest web backup job, or None. A job marked running whose lock is free
    died with its process: it is reported as interrupted."""
    try:
        state = json.loads((Path(folder) / STATE_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    if state.get("state") == "running" and not lock_is_held(folder):
        state.update(state="failed", error="the backup was interrupted (the server stopped)")
    return state


def start_job(app: Flask, actor: str | None) -> dict:
    """Take the backup lock now (so a second click is refused at once) and run the
    backup in a background thread that releases it when done."""
    settings = backup_settings(app)
    folder = Path(settings.backup_folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        raise BackupError(f"the backup folder {folder} is not writable") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BackupBusy("a backup is already running; wait for it to finish") from None
    job = {"id": uuid.uuid4().hex, "state": "running", "stage": "starting", "bytes": 0,
           "started_at": _now(), "finished_at": None, "archive": None, "error": None,
           "actor": actor}
    try:
        _write_state(folder, job)
    except OSError:
        os.close(fd)
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
                result = create_backup(db.engine, dumper_for(app, db.engine.dialect.name), settings,
                                       actor=actor, via="admin", progress=progress, lock=False)
            job.update(state="done", stage="done", archive=result.path.name, bytes=result.size)
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
                os.close(fd)  # releases the lock

    threading.Thread(target=run, name="web-backup", daemon=True).start()
    return job
