"""What listings found out about a remote's archives, kept between listings.

A listing reads each archive's seal and checks it (:func:`~guest_backup.archive.
seal.recognise`): on S3 one GetObject per archive, for the Backup page,
``backup-list``, health, metrics and every backup's retention; after six years of
daily backups, 2,190 of them each time. The verdict (the signed creation time and
SHA-256, or "not recognised") depends only on the two objects' bytes, the trusted
keys and this installation, so it is kept in ``<instance>/seal-verdicts.json``
(0600, replaced atomically under an flock) under a key made of:

- the archive's name and the :attr:`~guest_backup.archive.format.ArchiveInfo.
  fingerprint` the listing gave: the ETag, modification time and size of the
  archive and of its seal (any new upload of either changes the time and the
  ETag, so the seal is read and checked again);
- the trusted public keys and the installation id (a key added or removed, and
  every verdict is made again).

Only what the objects say is kept: an archive whose seal could not be read
(a network error) is judged again next time. The file is trusted as the
instance folder is (it also holds the signing key). A restore, a download's
verify and a drill never use it: they check the archive itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from datetime import datetime
from pathlib import Path
from typing import Iterable

from guest_backup.archive.format import NO_SEAL, ArchiveInfo
from guest_backup.archive.manifest import format_time, parse_time
from guest_backup.archive.seal import SHA256_RE
from guest_backup.engines import held_flock
from guest_backup.files import write_private

log = logging.getLogger(__name__)
FILE = "seal-verdicts.json"
VERSION = 1
#: returned by :meth:`SealVerdicts.get` when nothing is kept for an archive
MISS = object()


class SealVerdicts:
    """The kept verdicts of one storage (by its URL), for one set of trusted keys
    and one installation."""

    def __init__(self, folder: str | os.PathLike, url: str, trusted: Iterable[str],
                 installation: str | None) -> None:
        self.path = Path(folder) / FILE
        self.url = url
        self._scope = json.dumps([sorted(trusted), installation])
        self._kept: dict | None = None  # read when first asked (a local folder never is)
        self._seen: dict[str, list] = {}
        self._lock = threading.Lock()  # a listing judges archives from several threads

    def _key(self, archive: ArchiveInfo) -> str:
        text = json.dumps([self._scope, archive.name, archive.size, archive.fingerprint])
        return hashlib.sha256(text.encode()).hexdigest()

    def get(self, archive: ArchiveInfo):
        """``(created, sha256)`` kept for this version of the archive and its seal
        (``created`` None: not recognised), or :data:`MISS`."""
        if archive.fingerprint is None:
            return MISS
        key = self._key(archive)
        with self._lock:
            if self._kept is None:
                self._kept = self._read().get(self.url, {})
            entry = self._kept.get(key)
            if not _valid(entry):
                return MISS
            self._seen[key] = entry
        created, sha = entry
        return (parse_time(created) if created else None), sha

    def put(self, archive: ArchiveInfo, created: datetime | None, sha: str | None, *,
            seal_read: bool) -> None:
        """Keep the verdict on this version of the archive, unless its seal was listed
        but could not be read (``seal_read`` False: a network error, say)."""
        if archive.fingerprint is None or not (seal_read or archive.fingerprint.endswith(
                " " + NO_SEAL)):
            return
        with self._lock:
            self._seen[self._key(archive)] = [format_time(created), sha]

    def save(self) -> None:
        """Keep what this listing saw (and nothing else of this storage: archives
        gone from it are forgotten); never raises."""
        if self._kept is None or self._seen == self._kept:
            return  # nothing asked (no fingerprints), or nothing new and nothing gone
        try:
            with held_flock(self.path.with_name(f".{FILE}.lock")):
                data = self._read()
                data[self.url] = self._seen
                write_private(self.path, json.dumps({"version": VERSION, "storages": data},
                                                    separators=(",", ":")).encode())
        except OSError as exc:
            log.warning("the listing's verdicts could not be kept in %s (%s)", self.path,
                        exc.strerror)

    def _read(self) -> dict:
        """Every storage's verdicts; an unreadable or foreign file counts as empty."""
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            log.warning("%s is unreadable: the seals are checked again", self.path)
            return {}
        if not isinstance(data, dict) or data.get("version") != VERSION:
            return {}
        storages = data.get("storages")
        if not isinstance(storages, dict):
            return {}
        return {url: entries for url, entries in storages.items()
                if isinstance(url, str) and isinstance(entries, dict)}


def _valid(entry) -> bool:
    """A kept entry as written: ``[signed time or None, sha256 or None]``."""
    if not (isinstance(entry, list) and len(entry) == 2):
        return False
    created, sha = entry
    if created is not None and (not isinstance(created, str) or parse_time(created) is None):
        return False
    return sha is None or (isinstance(sha, str) and SHA256_RE.fullmatch(sha) is not None)
