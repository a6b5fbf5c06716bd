"""An archive as a local file for verify, restore and drills: read in place
from a folder on this machine, or streamed from a remote storage into a private
temporary folder (0700) with its signature sidecar, removed however the block
ends. An archive may be named by a path or by a storage URL
(``s3://bucket/prefix/NAME``, ``file:///mnt/nas/NAME``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

from guest_backup.archive.format import is_archive_name, sidecar_path
from guest_backup.errors import BackupError
from guest_backup.ops.context import BackupContext
from guest_backup.storages import Storage, StorageError, fetch


def is_url(archive: str) -> bool:
    return "://" in archive and bool(urlparse(archive).scheme)


@contextlib.contextmanager
def local_copy(ctx: BackupContext, archive: str) -> Iterator[Path]:
    """``archive`` (a path or a storage URL) as a local file."""
    if not is_url(archive):
        yield Path(archive)  # the services say (and audit) when it does not exist
        return
    base, _, name = archive.rpartition("/")
    if not is_archive_name(name):
        raise BackupError(f"{archive}: the last part must be an archive's name "
                          f"(system_backup_YYYYMMDD_HHMMSS.zip[.age])")
    try:
        storage = ctx.open_storage(base)
    except StorageError as exc:
        raise BackupError(str(exc)) from None
    with archive_file(storage, name) as path:
        yield path


@contextlib.contextmanager
def archive_file(storage: Storage, name: str) -> Iterator[Path]:
    """One archive of ``storage`` as a local file (in place, or a private copy)."""
    in_place = storage.local_path(name)
    if in_place is not None:
        yield in_place
        return
    folder = Path(tempfile.mkdtemp(prefix="gr-fetch-"))
    try:
        path = folder / name
        sidecar = storage.read_sidecar(name)  # first: the size it states bounds the copy
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            fetch(storage, name, out, limit=copy_limit(sidecar, folder))
        if sidecar is not None:
            sidecar_path(path).write_bytes(sidecar)
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


#: room left free in the temporary folder when an archive is copied there
FREE_RESERVE = 256 * 1024 * 1024


def copy_limit(sidecar: bytes | None, folder: Path) -> tuple[int, str]:
    """How much of a remote archive is copied before it is refused: the size its
    seal states (:func:`~guest_backup.archive.seal.sealed_size`), and never more
    than the temporary folder holds with FREE_RESERVE to spare. A planted object
    of any size was copied whole before anything looked at it (1 GiB written for
    a verify)."""
    from guest_backup.archive.seal import sealed_size  # cryptography: not for --help

    room = max(shutil.disk_usage(folder).free - FREE_RESERVE, 0)
    size = sealed_size(sidecar) if sidecar is not None else None
    if size is not None and size <= room:
        return size, "its seal says"
    return room, "the temporary folder has room for"
