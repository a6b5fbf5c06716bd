"""Loading an archive into a browse session's scratch database: the restore path
itself (seal, signature, decryption, dump screen, schema upgrade, erasure ledger
re-applied; nothing of the uploads is kept), then the search indexes; and dropping
it."""

from __future__ import annotations

import contextlib
import logging
import re
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
from guest_backup.ops.erasure_mark import refuse_lost_lines
from guest_backup.ops.fetch import archive_file, local_copy
from guest_backup.ops.finishing import erasures_for
from guest_backup.ops.listing import storages_holding
from guest_backup.ops.browse_registry import Registry
from guest_backup.ops.restore import restore_archive

log = logging.getLogger(__name__)
#: every scratch database's name begins so (nothing else is ever dropped)
PREFIX = "guest_browse_"


def load_into(ctx: BackupContext, session: Any, archive: str, identity,
              trusted_keys, live_engine: Engine | None = None) -> None:
    """The restore path into the scratch database of ``session`` (a
    :class:`~guest_backup.ops.browse.BrowseSession`), then the search indexes; the
    times and what the restore reported are set on the session. Refused, as a
    restore is, when the live database's erasure mark is past every copy of the
    ledger (``live_engine``): the erasures of the lost lines would not be
    re-applied in the copy, and its rows could be restored from it."""
    settings = ctx.settings

    def erasures():
        found = erasures_for(ctx)
        refuse_lost_lines(found, live_engine, outcome="the archive was not opened")
        return found

    uploads = Path(tempfile.mkdtemp(prefix="gr-browse-uploads-"))  # not kept: not browsed
    start = time.perf_counter()
    try:
        with _archive_path(ctx, archive) as path:
            restored = restore_archive(
                path, engines=ctx.engines, settings=settings, target_url=session.url,
                uploads_dir=uploads, trusted=settings.trusted(trusted_keys), engine=None,
                identity=identity, explicit_keys=list(TrustedKeys(trusted_keys)),
                migrations=ctx.migrations() if ctx.migrations else None,
                erasures=erasures)
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
            _remove_files(Path(session.database))
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


#: what the SQLite restore leaves beside a scratch file while (or if killed while)
#: loading it: the loaded copy, the contents set aside, the engine's lock file
_BESIDE = (".{}.restoring", ".{}.before-restore", "{}.lock")
#: a file of a session's: ``<id>.db...``, ``.<id>.db.restoring...``, ``<id>.<n>.plan.json``
_SESSION_FILE = re.compile(r"^\.?([0-9a-f]{16})\.")


def _remove_files(database: Path) -> None:
    """A scratch file, its journals, and what a load killed midway left beside it:
    the loaded copy (``.<id>.db.restoring``) holds the archive's guests, erased ones
    too. Before, a SIGTERM or a kill during the load left it for good, the session
    dropped (SQLite removes it only when the load ends, well or not)."""
    for name in (database.name, *(f.format(database.name) for f in _BESIDE)):
        for suffix in ("", "-wal", "-shm", "-journal"):
            (database.parent / (name + suffix)).unlink(missing_ok=True)


def sweep_strays(folder: Path, known: set[str]) -> None:
    """Scratch files in ``folder`` of no registered session (ids ``known``): a
    process killed while loading one before its copy was removed with its session.
    Called under the registry's lock, which a new session is registered under
    before its first file is made; never raises."""
    try:
        for path in folder.iterdir():
            found = _SESSION_FILE.match(path.name)
            if found and found.group(1) not in known and path.is_file():
                log.warning("browse: a scratch file of no session was removed (%s)", path.name)
                path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("browse: the scratch folder could not be swept (%s)", type(exc).__name__)


__all__ = ["PREFIX", "drop_scratch", "load_into", "sweep_strays"]
