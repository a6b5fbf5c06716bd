"""The registry of open browse sessions: one small JSON file in the instance
folder (``browse/sessions.json``, 0600), read and rewritten under an
``fcntl.flock`` so that every process of the installation (gunicorn workers,
commands, the job worker) sees the same sessions. It holds no secret: a
session's scratch database is named, never its URL (the password stays in the
app's DATABASE_URL)."""

from __future__ import annotations

import contextlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from guest_backup.archive.manifest import TIME_FORMAT
from guest_backup.engines import held_flock
from guest_backup.files import write_private

FOLDER = "browse"
FILE = "sessions.json"


def parse_time(text: str | None) -> datetime:
    if not text:
        return datetime.min.replace(tzinfo=timezone.utc)
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=timezone.utc)


def browse_folder(instance_path: str) -> Path:
    """``<instance>/browse`` (0700): the registry and SQLite scratch files."""
    folder = Path(instance_path) / FOLDER
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


class Registry:
    """``{session id: entry}``; change it only inside :meth:`edit`."""

    def __init__(self, instance_path: str) -> None:
        self.folder = browse_folder(instance_path)
        self.path = self.folder / FILE

    def read(self) -> dict[str, dict]:
        with self._locked(shared=True):
            return self._load()

    @contextlib.contextmanager
    def edit(self) -> Iterator[dict[str, dict]]:
        """The entries, written back (atomically) when the block ends without error."""
        with self._locked(shared=False):
            entries = self._load()
            yield entries
            write_private(self.path, json.dumps(entries, indent=1, sort_keys=True).encode())

    def _load(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):  # a torn or foreign file: start again
            return {}
        return data if isinstance(data, dict) else {}

    def _locked(self, shared: bool):
        return held_flock(self.folder / f"{FILE}.lock", shared)


def pid_alive(pid: int | None) -> bool:
    """Whether a process of this machine is still running (an opener that died
    leaves an ``opening`` entry behind)."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return True
