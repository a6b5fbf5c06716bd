"""Restore drills: ``restore-test`` restores the newest archive (the remote copy
when one is configured) into a scratch database and compares every table's row
count with the manifest. A backup nobody has restored is a hope, not a backup."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from guest_backup.ops.context import BackupContext
from guest_backup.archive.signing import TrustedKeys
from guest_backup.errors import BackupBusy, BackupError
from guest_backup.ops.audit import quietly
from guest_backup.ops.create import safe_message
from guest_backup.ops.erasure_mark import TABLE as MARK_TABLE
from guest_backup.ops.fetch import archive_file
from guest_backup.ops.finishing import erasures_for
from guest_backup.ops.listing import recognised
from guest_backup.ops.notify import observed
from guest_backup.ops.restore import restore_archive
from guest_backup.ops.staging import _running

log = logging.getLogger(__name__)

#: a drill's temporary folder (the SQLite scratch database's, the uploads'):
#: ``gr-drill-[uploads-]<drilling process>-<random>``
SCRATCH_RE = re.compile(r"^gr-drill-(?:uploads-)?([1-9][0-9]{0,9})-[A-Za-z0-9_]+$")


@dataclass
class DrillResult:
    archive: str
    storage: str
    tables: int = 0
    rows: int = 0
    mismatches: list[str] = field(default_factory=list)
    erasures: int = 0  # erasures of the ledger re-applied in the scratch copy

    @property
    def ok(self) -> bool:
        return not self.mismatches


@observed("drill")  # metrics and notifications when it ends; never raises
def restore_drill(ctx: BackupContext, engine: Engine, *, identity=None, trusted_keys=(),
                  actor: str | None, via: str) -> DrillResult:
    """Run one drill under the backup lock; audited as ``restore-test``. A drill
    the lock refused (BackupBusy: a backup runs) is skipped, not failed: no
    entry, as for a backup or a pruning. Anything else that breaks it is audited
    as failed and raised as a BackupError (the traceback goes to the log); one
    stopped (SIGTERM, Ctrl-C) is audited ``aborted`` (it was not audited at all)."""
    picked: list[str] = []  # the archive under test, named by a failure's entry too
    try:
        with ctx.lock():
            result = _drill(ctx, engine, identity, trusted_keys, picked)
    except BackupBusy:
        raise
    except Exception as exc:
        raise _failed(ctx, engine, actor, via, exc, picked[0] if picked else None) from None
    except BaseException as exc:  # SIGTERM or Ctrl-C: audited as a backup's is, then on
        quietly("the interrupted restore drill", ctx.audit.record, engine, "restore-test",
                "aborted", actor=actor, via=via, target=picked[0] if picked else None,
                message=safe_message(exc, "restore"))
        raise
    ctx.audit.record(engine, "restore-test", "ok" if result.ok else "failed", actor=actor, via=via,
                 target=result.archive, rows=result.rows,
                 message=(f"{result.tables} tables, {result.rows} rows match the manifest, "
                          f"{result.erasures} erasures re-applied ({result.storage})" if result.ok else "; ".join(result.mismatches)))
    return result


def _failed(ctx: BackupContext, engine: Engine, actor: str | None, via: str,
            exc: Exception, archive: str | None = None) -> BackupError:
    """A drill that broke, audited (before, only a BackupError was: an S3 read
    timing out left the last passed drill standing) with the archive it tested
    (retention keeps an archive whose last check failed, and counts it under no
    rule); the error to raise, with a message safe for users (only the type name
    of anything but a BackupError)."""
    message = safe_message(exc, "restore")
    if not isinstance(exc, BackupError):
        log.warning("the restore drill failed (%s)", type(exc).__name__, exc_info=exc)
    quietly("the failed restore drill", ctx.audit.record, engine, "restore-test", "failed",
            actor=actor, via=via, target=archive, message=message)
    return exc if isinstance(exc, BackupError) else BackupError(message)


def _drill(ctx: BackupContext, engine: Engine, identity, trusted_keys,
           picked: list[str]) -> DrillResult:
    remove_orphans()  # this drill's folders are named with its process, as these were
    storage = ctx.remote() or ctx.local()
    # the newest archive the listing recognises (signed, bound to this installation,
    # or signed by a --trusted-key): a planted file with a newer name would otherwise
    # be fetched and fail every drill
    archives, others = recognised(ctx, storage, trusted_keys=trusted_keys)
    if not archives:
        raise BackupError(f"there is no archive in {storage.url} to test" + (
            f" ({len(others)} file(s) there are not recognised archives)" if others else ""))
    newest = archives[0].name
    picked.append(newest)
    result = DrillResult(newest, storage.url)
    settings = ctx.settings
    db_engine = ctx.engine_for(engine.dialect.name)
    uploads = Path(tempfile.mkdtemp(prefix=f"gr-drill-uploads-{os.getpid()}-"))
    try:
        with archive_file(storage, newest) as path, db_engine.scratch(str(engine.url.render_as_string(
                hide_password=False))) as target:
            restored = restore_archive(path, engines=ctx.engines, settings=settings,
                                       target_url=target, uploads_dir=uploads,
                                       trusted=settings.trusted(trusted_keys), engine=None,
                                       identity=identity,
                                       explicit_keys=list(TrustedKeys(trusted_keys)),
                                       migrations=ctx.migrations() if ctx.migrations else None,
                                       erasures=lambda: erasures_for(ctx))
            result.erasures = restored.erasures
            _compare(target, restored.row_counts, result)
    finally:
        shutil.rmtree(uploads, ignore_errors=True)
    return result


def remove_orphans() -> None:
    """Remove this user's drill folders in the temporary folder whose process is
    gone (not a running drill's, nor another user's): a drill killed with SIGKILL
    (RQ ends a work-horse past its job timeout) left there the archive's guests,
    erased ones too (the loaded copy), for good."""
    with contextlib.suppress(OSError), os.scandir(tempfile.gettempdir()) as entries:
        for entry in entries:
            match = SCRATCH_RE.match(entry.name)
            if not match or int(match.group(1)) == os.getpid() or _running(
                    int(match.group(1))):
                continue
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False) and entry.stat(
                        follow_symlinks=False).st_uid == os.geteuid():
                    shutil.rmtree(entry.path, ignore_errors=True)


def _compare(url: str, expected: dict[str, int], result: DrillResult) -> None:
    scratch = create_engine(url)
    try:
        with scratch.connect() as conn:
            for table, count in sorted(expected.items()):
                if table == MARK_TABLE:  # the restore itself marks it (its erasures)
                    continue
                try:
                    found = conn.execute(text(f'SELECT count(*) FROM "{table}"')).scalar_one()
                except Exception:
                    conn.rollback()
                    result.mismatches.append(f"table {table} is missing")
                    continue
                result.tables += 1
                result.rows += found
                if found != count:
                    result.mismatches.append(f"{table}: {found} rows, the manifest says {count}")
    finally:
        scratch.dispose()
