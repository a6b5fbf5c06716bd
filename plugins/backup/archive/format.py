"""Archives in the backup folder: names, listing and the archive format's constants.

An archive ``system_backup_YYYYMMDD_HHMMSS.zip`` holds ``database.sql`` (a plain
SQL dump), ``uploads/...`` (every upload except guest document photos),
``manifest.json`` (sizes and SHA-256 of every other member) and
``manifest.sig`` (the instance's Ed25519 signature of the manifest). With age
recipients configured it is ``….zip.age`` (the same ZIP, age-encrypted) with a
sidecar ``….zip.age.sig`` signing the ciphertext. It is written under a hidden
``.partial`` name and renamed only when complete.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

FORMAT_VERSION = 1
#: an archive's name, matched whole (``fullmatch``) and ASCII only: no trailing newline,
#: no fullwidth or Arabic-Indic digits
ARCHIVE_RE = re.compile(r"system_backup_([0-9]{8}_[0-9]{6})(?:_[0-9]{1,6})?\.zip(?:\.age)?",
                        re.ASCII)
#: more members than this (uploads, dump, manifest, signature) are refused, by the
#: writer and by verification alike. 10,000 stopped every backup of a site with that
#: many ordinary uploads (thumbnails); 100,000 small ones took 280 MB to back up or
#: verify and 430 MB to restore (docs/runbook.md), 200,000 twice that
MAX_MEMBERS = 100_000
#: ``status`` warns when the uploads reach this share of :data:`MAX_MEMBERS`
MEMBERS_WARN_SHARE = 0.8
#: a database engine's name as an archive may give it (a SQLAlchemy dialect name):
#: signed text that ends up in messages, so one short word
ENGINE_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
SIDECAR_SUFFIX = ".sig"
PARTIAL_SUFFIX = ".partial"
DATABASE_MEMBER = "database.sql"
MANIFEST_MEMBER = "manifest.json"
SIGNATURE_MEMBER = "manifest.sig"
UPLOADS_PREFIX = "uploads/"
UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
#: guest photos and their copies (use ``.match``): a UUID anywhere in the file's name.
#: ``<uuid>.<ext>``, the older ``<uuid>_<anything>``, half-written ``.tmp-<uuid>.<ext>``,
#: and what copying one leaves (``<uuid>.jpg~``, ``<uuid>.jpg.bak``, ``<uuid> (1).jpg``,
#: ``copy of <uuid>.jpg``): never written into an archive; a restore leaves them out
PHOTO_NAME_RE = re.compile(rf"(?s).*?{UUID}")
#: a guest photo's own name, which no version of the writer ever wrote: an archive
#: holding one is refused. (A copy's name, which archives made before 2026-12-07 may
#: hold, is not: refusing it would refuse those archives, database and all.)
PHOTO_MEMBER_RE = re.compile(rf"^(?:\.tmp-)?{UUID}(?:\.[A-Za-z0-9]+|_.*)?$")
#: errors an operator can fix (no traceback in the log for these)
EXPECTED_ERRNOS = (errno.EACCES, errno.EFBIG, errno.ENOSPC)


#: the end of a listed archive's fingerprint when the listing saw no seal beside it
NO_SEAL = "no seal"


@dataclass
class ArchiveInfo:
    """One archive as a listing shows it (the one archive-row type): its name, size,
    creation time (UTC), the storages that hold it (``local``, ``remote``) and the
    signed SHA-256 of the file."""

    name: str
    size: int
    created: datetime
    locations: list[str] = field(default_factory=list)
    #: the file's SHA-256 its trusted seal claims (None: no seal, e.g. an old plain archive)
    sha256: str | None = None
    #: which version of the file and of its seal a listing saw (a remote's ETags, times
    #: and sizes; None: not known), so that a verdict on them can be kept
    #: (:mod:`guest_backup.ops.seal_verdicts`)
    fingerprint: str | None = field(default=None, compare=False, repr=False)

    @property
    def encrypted(self) -> bool:
        return self.name.endswith(".age")


def remove_partials(folder: Path) -> int:
    """Remove half-written archives; the caller holds the backup lock."""
    removed = 0
    for p in folder.glob(f".system_backup_*{PARTIAL_SUFFIX}*"):
        p.unlink(missing_ok=True)
        removed += 1
    return removed


def is_archive_name(name: str | None) -> bool:
    """Whether ``name`` is an archive's name (the one check of it)."""
    return bool(name) and ARCHIVE_RE.fullmatch(name) is not None


def name_time(name: str) -> datetime | None:
    """The UTC time an archive's name claims (``None`` if it is no archive name)."""
    m = ARCHIVE_RE.fullmatch(name or "")
    if not m:
        return None
    try:
        return datetime.strptime(m.group(1), "%Y%m%d_%H%M%S").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def new_archive_name(folder: Path, when: datetime, encrypted: bool = False) -> str:
    base = f"system_backup_{when:%Y%m%d_%H%M%S}"
    suffix = ".zip.age" if encrypted else ".zip"
    taken = lambda name: any((folder / (name + end)).exists() for end in (".zip", ".zip.age"))  # noqa: E731
    name, n = base, 1
    while taken(name):
        n += 1
        name = f"{base}_{n}"
    return name + suffix


def sidecar_path(path: Path) -> Path:
    """Where an encrypted archive's ciphertext signature lives."""
    return path.with_name(path.name + SIDECAR_SUFFIX)


#: the most of a seal (``.sig``) anything reads: a real one is a few hundred bytes
MAX_SEAL_BYTES = 64 * 1024


def read_seal(path: Path) -> bytes:
    """The first :data:`MAX_SEAL_BYTES` of a seal file, which must be a regular
    file: never followed through a link, never waited on (a FIFO or a link to
    ``/dev/zero`` planted in a shared backup folder would hang or fill the
    reader: every listing reads every seal). OSError when it is not there or not
    a regular file: treated as no seal."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as src:
        if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        return src.read(MAX_SEAL_BYTES)


def delete_archive(path: Path) -> None:
    """Remove an archive and its signature sidecar, if any."""
    path.unlink(missing_ok=True)
    sidecar_path(path).unlink(missing_ok=True)


def list_archives(folder: str | os.PathLike, location: str = "local") -> list[ArchiveInfo]:
    """Complete archives in the folder, newest first (partial files are never listed)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        if is_archive_name(p.name) and p.is_file() and not p.is_symlink():
            st = p.stat()
            found.append(ArchiveInfo(p.name, st.st_size,
                                     datetime.fromtimestamp(st.st_mtime, timezone.utc), [location]))
    return sorted(found, key=lambda a: a.name, reverse=True)
