"""Which uploads go into a system backup: every file under the upload folder but
guest photos (named like one, or named by a guest row in the dump's snapshot)
and links."""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path
from typing import Iterator

from sqlalchemy import column, select, table

from guest_backup.archive.format import PHOTO_NAME_RE, UPLOADS_PREFIX
from guest_backup.archive.manifest import member_problem, shown
from guest_backup.archive.writer import ArchiveWriter

log = logging.getLogger(__name__)

PHOTO_QUERY_BATCH = 500
#: where the host keeps a guest's document photo file name (the model Guest.document_photo)
PHOTO_TABLE, PHOTO_COLUMN = "guest", "document_photo"


def _photo_names_in_db(conn, names: list[str]) -> set[str]:
    """Which of ``names`` are some guest's ``document_photo``."""
    photo = column(PHOTO_COLUMN)
    return set(conn.execute(select(photo).select_from(table(PHOTO_TABLE, photo))
                            .where(photo.in_(names))).scalars())


def _upload_files(folder: Path) -> Iterator[tuple[Path, str]]:
    """Regular files under the upload folder as (path, posix relative name); links
    skipped, and names an archive cannot carry (:func:`unarchivable`), logged."""
    left_out: list[str] = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not os.path.islink(os.path.join(root, d)))
        for name in sorted(files):
            path = Path(root) / name
            if path.is_symlink() or not path.is_file():
                continue
            rel = path.relative_to(folder).as_posix()
            if not PHOTO_NAME_RE.match(name) and unarchivable(rel):  # photos: counted
                left_out.append(rel)
                continue
            yield path, rel
    if left_out:
        log.warning("%d upload(s) left out of the archive: a restore could not put their names "
                    "back (a backslash, or not UTF-8); rename them: %s", len(left_out),
                    ", ".join(shown(name.encode("utf-8", "backslashreplace").decode(), 80)
                              for name in left_out[:5]))


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


def add_uploads(writer: ArchiveWriter, conn, folder: Path) -> int:
    """Add every upload that is not a guest photo; return how many photos were left out.

    A photo is a file named like one, or any file a guest row names (checked in
    batches, in the dump's snapshot)."""
    if not folder.is_dir():
        return 0
    excluded = 0
    pending: list[tuple[Path, str]] = []

    def flush() -> None:
        nonlocal excluded
        if not pending:
            return
        db_photos = _photo_names_in_db(conn, [rel for _, rel in pending])
        for path, rel in pending:
            if rel in db_photos:
                excluded += 1
            else:
                writer.add_file(UPLOADS_PREFIX + rel, path, stage="uploads")
        pending.clear()

    for path, rel in _upload_files(folder):
        if PHOTO_NAME_RE.match(path.name):
            excluded += 1
            continue
        pending.append((path, rel))
        if len(pending) >= PHOTO_QUERY_BATCH:
            flush()
    flush()
    return excluded
