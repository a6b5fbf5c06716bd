"""Which uploads go into a system backup: every file under the upload folder but
guest photos (named like one, or named by a guest row in the dump's snapshot)
and links."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from sqlalchemy import column, select, table

from guest_backup.archive.format import PHOTO_NAME_RE, UPLOADS_PREFIX
from guest_backup.archive.writer import ArchiveWriter

PHOTO_QUERY_BATCH = 500
#: where the host keeps a guest's document photo file name (the model Guest.document_photo)
PHOTO_TABLE, PHOTO_COLUMN = "guest", "document_photo"


def _photo_names_in_db(conn, names: list[str]) -> set[str]:
    """Which of ``names`` are some guest's ``document_photo``."""
    photo = column(PHOTO_COLUMN)
    return set(conn.execute(select(photo).select_from(table(PHOTO_TABLE, photo))
                            .where(photo.in_(names))).scalars())


def _upload_files(folder: Path) -> Iterator[tuple[Path, str]]:
    """Regular files under the upload folder as (path, posix relative name); links skipped."""
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not os.path.islink(os.path.join(root, d)))
        for name in sorted(files):
            path = Path(root) / name
            if path.is_symlink() or not path.is_file():
                continue
            yield path, path.relative_to(folder).as_posix()


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
