"""Loading an archive into a browse session's scratch database: the restore path
itself (seal, signature, decryption, dump screen, schema upgrade, erasure ledger
re-applied; nothing of the uploads is kept), then the search indexes."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from guest_backup.archive.format import is_archive_name
from guest_backup.archive.signing import TrustedKeys
from guest_backup.errors import BackupError
from guest_backup.ops.browse_search import add_search_indexes
from guest_backup.ops.context import BackupContext
from guest_backup.ops.fetch import archive_file, local_copy
from guest_backup.ops.finishing import erasures_for
from guest_backup.ops.listing import storages_holding
from guest_backup.ops.restore import restore_archive


def load_into(ctx: BackupContext, session: Any, archive: str, identity,
              trusted_keys) -> None:
    """The restore path into the scratch database of ``session`` (a
    :class:`~guest_backup.ops.browse.BrowseSession`), then the search indexes; the
    times and what the restore reported are set on the session."""
    settings = ctx.settings
    uploads = Path(tempfile.mkdtemp(prefix="gr-browse-uploads-"))  # not kept: not browsed
    start = time.perf_counter()
    try:
        with _archive_path(ctx, archive) as path:
            restored = restore_archive(
                path, engines=ctx.engines, settings=settings, target_url=session.url,
                uploads_dir=uploads, trusted=settings.trusted(trusted_keys), engine=None,
                identity=identity, explicit_keys=list(TrustedKeys(trusted_keys)),
                migrations=ctx.migrations() if ctx.migrations else None,
                erasures=lambda: erasures_for(ctx))
    finally:
        shutil.rmtree(uploads, ignore_errors=True)
    session.open_seconds = round(time.perf_counter() - start, 2)
    session.erasures, session.schema = restored.erasures, restored.schema
    start = time.perf_counter()
    add_search_indexes(session.engine)
    session.index_seconds = round(time.perf_counter() - start, 2)


@contextlib.contextmanager
def _archive_path(ctx: BackupContext, archive: str) -> Iterator[Path]:
    """A stored archive's name (the local folder first), or a path or URL."""
    if "/" not in archive and is_archive_name(archive):
        holding = storages_holding(ctx, archive)
        if not holding:
            raise BackupError(f"{archive} is in no backup storage")
        with archive_file(holding[0], archive) as path:
            yield path
        return
    with local_copy(ctx, archive) as path:
        yield path


__all__ = ["load_into"]
