"""Loading an archive into a browse session's scratch database: the restore path
itself (seal, signature, decryption, dump screen, schema upgrade, erasure ledger
re-applied; nothing of the uploads is kept), then the search indexes; and dropping
it."""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import NullPool

from guest_backup.archive.format import is_archive_name
from guest_backup.archive.signing import TrustedKeys
from guest_backup.errors import BackupError
from guest_backup.ops.browse_search import add_search_indexes
from guest_backup.ops.context import BackupContext
from guest_backup.ops.fetch import archive_file, local_copy
from guest_backup.ops.finishing import erasures_for
from guest_backup.ops.listing import storages_holding
from guest_backup.ops.browse_registry import Registry
from guest_backup.ops.restore import restore_archive

log = logging.getLogger(__name__)
#: every scratch database's name begins so (nothing else is ever dropped)
PREFIX = "guest_browse_"


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


def drop_scratch(session: Any, engine: Engine | None) -> None:
    """The scratch database of ``session`` gone (whatever state it was left in), after
    ``engine`` (a process's engine on it) is disposed of; never raises."""
    if engine is not None:
        engine.dispose()
    try:
        for plan in Registry(session.ctx.instance_path).folder.glob(f"{session.id}.*.plan.json"):
            plan.unlink(missing_ok=True)  # previews kept for the page (browse_plans)
        if session.dialect == "sqlite":
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(session.database + suffix).unlink(missing_ok=True)
            return
        if not session.database.startswith(PREFIX):
            return  # never drop anything but our own scratch databases
        server = make_url(session.url).set(database="postgres")
        admin = create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        try:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{session.database}" WITH (FORCE)')
        finally:
            admin.dispose()
    except Exception as exc:
        log.warning("could not drop the browse database %s (%s)", session.database,
                    type(exc).__name__)


__all__ = ["PREFIX", "drop_scratch", "load_into"]
