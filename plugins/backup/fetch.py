"""An archive named by a path or by a storage URL (``s3://bucket/prefix/NAME``,
``file:///mnt/nas/NAME``), as a local file for verify and restore: a remote one
is streamed into a private temporary folder (0700) with its signature sidecar,
and removed however the block ends."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

from .archive import ARCHIVE_RE, sidecar_path
from .context import BackupContext
from .errors import BackupError
from .storages import fetch


def is_url(archive: str) -> bool:
    return "://" in archive and bool(urlparse(archive).scheme)


@contextlib.contextmanager
def local_copy(ctx: BackupContext, archive: str) -> Iterator[Path]:
    if not is_url(archive):
        yield Path(archive)  # the services say (and audit) when it does not exist
        return
    parsed = urlparse(archive)
    base, _, name = archive.rpartition("/")
    if not ARCHIVE_RE.match(name):
        raise BackupError(f"{archive}: the last part must be an archive's name "
                          f"(system_backup_YYYYMMDD_HHMMSS.zip[.age])")
    kind = ctx.storage_types.get(parsed.scheme)
    if kind is None:
        raise BackupError(f"no storage type for {parsed.scheme}:// (installed: "
                          f"{', '.join(ctx.storage_types) or 'none'})")
    storage = kind.open(base, ctx.app.config)
    folder = Path(tempfile.mkdtemp(prefix="gr-fetch-"))
    try:
        path = folder / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            fetch(storage, name, out)
        sidecar = storage.read_sidecar(name)
        if sidecar is not None:
            sidecar_path(path).write_bytes(sidecar)
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)
