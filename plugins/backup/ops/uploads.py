"""Which uploads go into a system backup: every file under the upload folder but
guest photos (a UUID in the name, named by a guest row in the dump's snapshot, or
a hard link to either), links, and the backup's own files. What is left out for
another reason is counted (the manifest's ``left_out_uploads``) and logged."""

from __future__ import annotations

import logging
import os
import stat
import zipfile
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

from sqlalchemy import column, select, table

from guest_backup.archive.format import PARTIAL_SUFFIX, PHOTO_NAME_RE, UPLOADS_PREFIX
from guest_backup.archive.manifest import member_problem, shown
from guest_backup.archive.writer import ArchiveWriter, open_regular

log = logging.getLogger(__name__)

PHOTO_QUERY_BATCH = 500
#: where the host keeps a guest's document photo file name (the model Guest.document_photo)
PHOTO_TABLE, PHOTO_COLUMN = "guest", "document_photo"

#: why an upload is left out (the manifest's ``left_out_uploads`` keys): what, and why
LEFT_OUT = {
    "unrestorable_name": ("upload(s)", "a name a restore cannot write back (a backslash, or "
                                       "not UTF-8): rename them"),
    "unlistable_folder": ("folder(s)", "this user cannot list them"),
    "unreadable": ("upload(s)", "this user cannot read them"),
    "vanished": ("upload(s)", "gone while the backup ran"),
    "own_files": ("folder(s) or file(s)", "the backup folder, the instance folder or a "
                                          "half-written archive"),
}


def _said(reason: str, count: int) -> str:
    what, why = LEFT_OUT[reason]
    return f"{count} {what} left out of the archive: {why}"


Id = tuple[int, int]


def _photo_names_in_db(conn, names: list[str]) -> set[str]:
    """Which of ``names`` are some guest's ``document_photo``."""
    photo = column(PHOTO_COLUMN)
    return set(conn.execute(select(photo).select_from(table(PHOTO_TABLE, photo))
                            .where(photo.in_(names))).scalars())


def _id(st: os.stat_result) -> Id:
    return st.st_dev, st.st_ino


def _ids(paths: Iterable) -> set[Id]:
    """The (device, inode) of each of ``paths`` that exists."""
    found = set()
    for path in paths:
        try:
            found.add(_id(os.stat(path)))
        except (OSError, ValueError):
            pass
    return found


class _Walk:
    """Regular files under the upload folder as (path, posix relative name, lstat);
    links not followed, the folders and files of ``skip`` (by inode) not entered,
    and everything else left out counted in ``left_out`` (names kept for the log)."""

    def __init__(self, folder: Path, skip: set[Id], left_out: Counter) -> None:
        self.folder, self.skip, self.left_out = folder, skip, left_out
        self.named: dict[str, list[str]] = {}

    def leave_out(self, reason: str, rel: str) -> None:
        self.left_out[reason] += 1
        self.named.setdefault(reason, []).append(rel)

    def _rel(self, path: str | os.PathLike) -> str:
        return os.path.relpath(path, self.folder).replace(os.sep, "/")

    def files(self) -> Iterator[tuple[Path, str, os.stat_result]]:
        if _ids([self.folder]) & self.skip:  # UPLOAD_FOLDER is the instance folder
            self.leave_out("own_files", ".")
            return
        unlistable = lambda exc: self.leave_out("unlistable_folder",  # noqa: E731
                                                self._rel(exc.filename or self.folder))
        for root, dirs, files in os.walk(self.folder, onerror=unlistable):
            dirs[:] = [d for d in sorted(dirs) if self._enter(Path(root) / d)]
            for name in sorted(files):
                if (found := self._file(Path(root) / name)) is not None:
                    yield found

    def _enter(self, path: Path) -> bool:
        try:
            st = os.lstat(path)
        except OSError:
            return False  # gone: nothing in it to leave out
        if _id(st) in self.skip:
            self.leave_out("own_files", self._rel(path))
            return False
        return stat.S_ISDIR(st.st_mode)  # not a link

    def _file(self, path: Path) -> tuple[Path, str, os.stat_result] | None:
        rel = self._rel(path)
        try:
            st = os.lstat(path)
        except OSError:
            self.leave_out("vanished", rel)
            return None
        if not stat.S_ISREG(st.st_mode):  # links, FIFOs, sockets: never uploads
            return None
        if _id(st) in self.skip or _partial(path.name):
            self.leave_out("own_files", rel)
            return None
        if not PHOTO_NAME_RE.match(path.name) and unarchivable(rel):  # photos: counted
            self.leave_out("unrestorable_name", rel)
            return None
        return path, rel, st

    def log(self) -> None:
        for reason, names in self.named.items():
            log.warning("%s: %s", _said(reason, len(names)),
                        ", ".join(shown(name.encode("utf-8", "backslashreplace").decode(), 80)
                                  for name in names[:5]))


def _partial(name: str) -> bool:
    """A half-written archive (or its sidecar), ours or a killed backup's, or an
    upload a killed restore was staging (``ops.staging``: a partial file)."""
    from guest_backup.ops.staging import STAGED_RE

    return name.endswith(PARTIAL_SUFFIX) or (name.startswith(".system_backup_")
                                             and PARTIAL_SUFFIX + "." in name) \
        or STAGED_RE.match(name) is not None


def unarchivable(rel: str) -> str | None:
    """Why an upload named ``rel`` cannot go into an archive that ``verify`` and a
    restore accept (None: it can). Before, a name with a backslash went in and the
    archive, reported made, was refused by every verify, restore and drill; a name
    that is not UTF-8 failed every backup (UnicodeEncodeError)."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not UTF-8"
    return member_problem(zipfile.ZipInfo(UPLOADS_PREFIX + rel))


class _Uploads:
    """The files a walk found, added unless they are a guest photo. A file with more
    than one link waits for the end of the walk: by then every photo's inode is
    known, and a hard link to one (``passport-novak.jpg``) is a photo too."""

    def __init__(self, writer: ArchiveWriter, conn) -> None:
        self.writer, self.conn = writer, conn
        self.excluded = 0
        self.photos: set[Id] = set()
        self.pending: list[tuple[Path, str, os.stat_result]] = []
        self.linked: list[tuple[Path, str]] = []

    def photo(self, st: os.stat_result) -> None:
        self.excluded += 1
        self.photos.add(_id(st))

    def flush(self) -> None:
        """Leave out the pending files a guest row names; add (or hold) the rest."""
        if not self.pending:
            return
        db_photos = _photo_names_in_db(self.conn, [rel for _, rel, _ in self.pending])
        for path, rel, st in self.pending:
            if rel in db_photos:
                self.photo(st)
            elif st.st_nlink > 1:
                self.linked.append((path, rel))
            else:
                self.add(path, rel)
        self.pending.clear()

    def add(self, path: Path, rel: str) -> None:
        """Add one upload, checked again once open (it may have changed since listed)."""
        try:
            src, st = open_regular(path)
        except (FileNotFoundError, NotADirectoryError):
            self.writer.left_out["vanished"] += 1
            return
        except PermissionError:
            self.writer.left_out["unreadable"] += 1
            log.warning("%s: %s", _said("unreadable", 1),
                        shown(rel.encode("utf-8", "backslashreplace").decode(), 80))
            return
        except OSError:  # replaced by a link or a FIFO since it was listed
            self.writer.left_out["vanished"] += 1
            return
        with src:
            if _id(st) in self.photos:
                self.excluded += 1
                return
            self.writer.add_open(UPLOADS_PREFIX + rel, src, st, stage="uploads")


def add_uploads(writer: ArchiveWriter, conn, folder: Path, skip: Iterable = ()) -> int:
    """Add every upload that is not a guest photo; return how many photos were left out.

    A photo is a file with a UUID in its name, any file a guest row names
    (checked in batches, in the dump's snapshot), or a hard link to one of them.
    Never walked: the folder the archive is written to, ``skip`` (the backup and
    instance folders: :func:`protected_paths`) and half-written archives."""
    if not folder.is_dir():
        return 0
    walk = _Walk(folder, _ids([writer.folder, *skip]), writer.left_out)
    uploads = _Uploads(writer, conn)
    for path, rel, st in walk.files():
        if PHOTO_NAME_RE.match(path.name):
            uploads.photo(st)
            continue
        uploads.pending.append((path, rel, st))
        if len(uploads.pending) >= PHOTO_QUERY_BATCH:
            uploads.flush()
    uploads.flush()
    for path, rel in uploads.linked:
        uploads.add(path, rel)
    walk.log()
    return uploads.excluded


def left_out_text(counts: dict | None) -> str:
    """What a backup's manifest says was left out, in words ('' when nothing was)."""
    return "; ".join(_said(reason, n) for reason, n in sorted((counts or {}).items())
                     if reason in LEFT_OUT and isinstance(n, int) and n > 0)


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(path))


def _inside(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _secret_files(settings) -> list[tuple[str, str]]:
    """(what, path) of the files no archive may carry, wherever they are."""
    found = [("the signing key", settings.signing_key),
             ("the installation id", settings.installation_file)]
    url = settings.database_url or ""
    if url.startswith("sqlite:///") and url[len("sqlite:///"):] not in ("", ":memory:"):
        found.append(("the SQLite database", url[len("sqlite:///"):].split("?")[0]))
    return [(what, path) for what, path in found if path and os.path.isfile(path)]


def protected_paths(settings, instance_path: str) -> list[str]:
    """What a backup never walks into, even inside UPLOAD_FOLDER: the backup and
    instance folders and the files of :func:`_secret_files`."""
    return [settings.backup_folder, instance_path,
            *(path for _, path in _secret_files(settings))]


def overlap_problem(settings, instance_path: str) -> str | None:
    """Why UPLOAD_FOLDER cannot be backed up beside the other folders (None: it
    can). An upload folder holding the backup folder put every earlier archive, and
    the one being written, into each archive (with a large upload, until the disk
    was full); one holding the instance folder put the signing key, the secret key
    and the SQLite database into every archive."""
    up, backups = _real(settings.upload_folder), _real(settings.backup_folder)
    if _inside(backups, up):
        return (f"BACKUP_FOLDER ({backups}) is inside UPLOAD_FOLDER ({up}): every archive "
                f"would hold the earlier ones and itself; give them separate folders")
    if _inside(up, backups):
        return (f"UPLOAD_FOLDER ({up}) is inside BACKUP_FOLDER ({backups}): give them "
                f"separate folders")
    if _inside(_real(instance_path), up):
        return (f"UPLOAD_FOLDER ({up}) holds the instance folder ({_real(instance_path)}), "
                f"with the signing key and the secret key: every archive would carry them; "
                f"give the uploads a folder of their own")
    for what, path in _secret_files(settings):
        if _inside(_real(path), up):
            return (f"UPLOAD_FOLDER ({up}) holds {what} ({path}): every archive would carry "
                    f"it; give the uploads a folder of their own")
    return None


def count_uploads(folder: str | os.PathLike, stop: int) -> int:
    """About how many files a backup archives from ``folder`` (links and names
    with a UUID not counted), counting no further than ``stop``."""
    count = 0
    for _, _, files in os.walk(folder):
        count += sum(1 for name in files if not PHOTO_NAME_RE.match(name))
        if count >= stop:
            break
    return count
