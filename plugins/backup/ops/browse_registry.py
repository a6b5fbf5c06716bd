"""The registry of open browse sessions: one small JSON file in the instance
folder (``browse/sessions.json``, 0600), read and rewritten under an
``fcntl.flock`` so that every process of the installation (gunicorn workers,
commands, the job worker) sees the same sessions. It holds no secret: a
session's scratch database is named, never its URL (the password stays in the
app's DATABASE_URL)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from guest_backup.archive.format import is_archive_name
from guest_backup.archive.manifest import TIME_FORMAT
from guest_backup.engines import held_flock
from guest_backup.files import write_private

FOLDER = "browse"
FILE = "sessions.json"


def _stored(archive: str, local: str | None) -> str:
    """``archive``, or the name of the local backup folder's file it is."""
    if "://" not in archive and "/" in archive and local:
        path = Path(os.path.realpath(archive))
        if is_archive_name(path.name) and path.parent == Path(os.path.realpath(local)):
            return path.name
    return archive


def source_of(archive: str, identity=None, trusted_keys=(), local: str | None = None) -> str:
    """What a session holds, so that it is reused only for the same request: where
    the archive is (a stored archive's name, a file's real path, a URL) and the
    trust it was opened with (``--trusted-key``, ``--identity``). By name alone,
    another installation's archive made the same second (opened from a download
    with its key) was taken for this installation's own by the page and by
    ``restore-select NAME``. A file of the local backup folder ``local`` is that
    stored archive."""
    archive = _stored(archive, local)
    if "/" not in archive and is_archive_name(archive):
        place = f"stored:{archive}"
    elif "://" in archive:
        place = archive
    else:
        place = f"path:{os.path.realpath(archive)}"
    trust = sorted(str(key) for key in trusted_keys or ())
    held = os.path.realpath(os.fspath(identity)) if identity else None
    return hashlib.sha256(json.dumps([place, trust, held]).encode()).hexdigest()


def shown_as(archive: str, local: str | None = None) -> str:
    """How the session names its archive (pages, audit entries): a stored archive
    (the local folder's file too) by its name, another file by its real path, a URL
    as given."""
    archive = _stored(archive, local)
    if ("/" not in archive and is_archive_name(archive)) or "://" in archive:
        return archive
    return os.path.realpath(archive)


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
