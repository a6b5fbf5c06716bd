"""Creating a system backup: the dump and the row counts from one snapshot, the
uploads without guest photos, the manifest, retention, and the audit entry.
No Flask request in here.

With a remote storage the archive is streamed to it while it is written (S3:
multipart parts on their way as the dump runs): into the backup folder and the
remote at once, or (BACKUP_KEEP_LOCAL=0) to the remote only, never touching the
disk here."""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import inspect
from sqlalchemy.engine import Engine

from guest_backup.archive.format import (DATABASE_MEMBER, EXPECTED_ERRNOS, FORMAT_VERSION,
                                        new_archive_name, remove_partials)
from guest_backup.archive.encryption import parse_recipients
from guest_backup.archive.manifest import format_time
from guest_backup.engines import DatabaseEngine
from guest_backup.errors import BackupError
from guest_backup.ops.audit import AuditLog, quietly
from guest_backup.storages import Storage, Tee
from guest_backup.ops.locks import BackupLock, RedisBackupLock, private_backup_folder
from guest_backup.ops.metrics import OUTPUT_COPY
from guest_backup.ops.schema import current_revisions
from guest_backup.ops.row_counts import row_counts
from guest_backup.ops.settings import BackupSettings
from guest_backup.ops.uploads import add_uploads
from guest_backup.archive.writer import ArchiveWriter, FileSink, Progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RemoteArchive:
    """Where an archive kept only remotely (BACKUP_KEEP_LOCAL=0) is: what
    :attr:`BackupResult.path` is then, with a path's ``name``; ``str()`` is its URL."""

    url: str
    name: str

    def __str__(self) -> str:
        return f"{self.url}/{self.name}"


@dataclass
class BackupResult:
    #: the archive in the backup folder (or --output), or where it is remotely
    path: Path | RemoteArchive
    size: int
    manifest: dict
    #: the remote the archive was streamed to, if any, and why that copy failed
    remote_url: str | None = None
    copy_failure: str | None = None

    @property
    def copied(self) -> bool:
        return self.remote_url is not None and self.copy_failure is None


def _writable_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        raise BackupError(f"the backup folder {folder} cannot be created") from None
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise BackupError(f"the backup folder {folder} is not writable")


def create_backup(engine: Engine, db_engine: DatabaseEngine, settings: BackupSettings, *,
                  lock: BackupLock | RedisBackupLock, audit: AuditLog,
                  output: str | os.PathLike | None = None, actor: str | None = None,
                  via: str = "cli", progress: Progress | None = None,
                  remote: Storage | None = None, keep_local: bool = True,
                  skip=()) -> BackupResult:
    """Make a system backup archive; raise :class:`BackupError` with a safe message.

    ``lock`` is the backup lock, already held by the caller (the pipeline, or a
    web job that took it in the request so that a second click is refused).
    ``remote``: stream the archive there too (best effort: its failure is the
    result's ``copy_failure``), or only there when not ``keep_local`` (its
    failure fails the backup). ``skip``: what the uploads' walk never enters (the
    backup and instance folders, the secrets: ``uploads.protected_paths``).
    """
    if not lock.held:
        raise ValueError("create_backup was given a lock it does not hold")
    folder = Path(settings.backup_folder)
    target_dir, target_name = folder, None
    if output is not None:
        out = Path(output)
        target_dir, target_name = (out, None) if out.is_dir() else (out.parent, out.name)
    entry: list[int] = []  # logged once the snapshot exists, so it is not in the dump
    try:
        private_backup_folder(folder)  # also with the lock in Redis (nothing made it so)
        for d in {folder, target_dir}:
            _writable_folder(d)
        remove_partials(folder)  # left by a killed process; we hold the lock
        sinks: list = []
        final, manifest, size = _write(
            engine, db_engine, settings, target_dir, target_name, progress,
            lambda name: entry.append(audit.start(engine, "backup", actor=actor, via=via,
                                                  target=name)),
            _sink_for(remote, keep_local, sinks),
            _taken_names(engine, audit, remote, keep_local), skip)
        audit.finish(engine, entry[0], "ok", target=manifest["name"], bytes=size,
                     rows=sum(manifest["row_counts"].values()),
                     message=OUTPUT_COPY if output is not None else None)
        failure = getattr(sinks[0], "copy_failure", None) if sinks else None
        return BackupResult(final or RemoteArchive(remote.url, manifest["name"]), size, manifest,
                            remote.url if remote is not None else None,
                            str(failure) if failure is not None else None)
    except BaseException as exc:
        _audit_failure(engine, audit, entry, exc, actor, via)
        raise _as_backup_error(exc) from None


def _sink_for(remote: Storage | None, keep_local: bool, made: list):
    """The archive writer's sink: the folder, the remote only, or both at once."""
    if remote is None:
        return FileSink

    def make(folder: Path, name: str):
        upload = remote.begin_upload(name)
        made.append(Tee(FileSink(folder, name), upload) if keep_local else upload)
        return made[-1]
    return make


def _taken_names(engine, audit: AuditLog, remote: Storage | None, keep_local: bool) -> set[str]:
    """The names a remote-only archive must not take: the last backups' (from the
    audit log, no network on the way to the dump; under the backup lock nothing
    else names an archive). With a local copy, the local folder already tells."""
    if remote is None or keep_local:
        return set()
    try:
        return {row["target"] for row in audit.recent(engine, 5, action="backup")
                if row.get("target")}
    except Exception:  # a name taken twice fails at worst; the audit log is not the backup
        log.warning("the last backups' names could not be read from the audit log")
        return set()


def _free_name(folder: Path, when: datetime, encrypted: bool, taken: set[str]) -> str:
    """A new archive name, neither in ``folder`` nor in ``taken``."""
    name, n = new_archive_name(folder, when, encrypted), 1
    while name in taken:
        n += 1
        name = f"system_backup_{when:%Y%m%d_%H%M%S}_{n}.zip" + (".age" if encrypted else "")
    return name


def _write(engine, db_engine, settings, target_dir: Path, target_name: str | None, progress,
           started, sink, taken: set[str], skip=()) -> tuple[Path | None, dict, int]:
    """Write the archive from one snapshot; ``started(name)`` once the snapshot exists."""
    if not 1 <= settings.compresslevel <= 9:  # zlib took 10 with a traceback, 0 unpacked
        raise BackupError(f"BACKUP_COMPRESSLEVEL must be 1 to 9, not {settings.compresslevel}")
    signer = settings.signer()
    recipients = parse_recipients(settings.age_recipients)
    when = datetime.now(timezone.utc)
    name = target_name or _free_name(target_dir, when, bool(recipients), taken)
    if recipients and not name.endswith(".zip.age"):
        raise BackupError(f"{name}: an encrypted archive's name must end in .zip.age")
    if progress:
        progress("database", 0)
    with ArchiveWriter(target_dir, name, when, signer=signer, recipients=recipients,
                       level=settings.compresslevel, progress=progress, sink=sink) as writer:
        with engine.connect() as conn:
            tables = sorted(inspect(conn).get_table_names())
            conn.rollback()  # PostgreSQL takes the snapshot at the first query after the locks
            db_engine.begin_snapshot(conn)
            if (hold := getattr(db_engine, "hold_tables", None)) is not None:
                hold(conn, tables, settings.lock_wait)  # to the end: uploads read guest too
            tool = db_engine.tool(settings.engine_settings, conn)
            server_version = db_engine.server_version(conn)
            revisions = current_revisions(conn)
            with row_counts(engine, db_engine, conn, tables) as counted:
                started(name)
                dump = writer.add_stream(
                    DATABASE_MEMBER, stage="database",
                    produce=lambda write: db_engine.dump(settings.engine_settings, conn, write))
                if not db_engine.is_complete(dump.tail):
                    raise BackupError("the database dump is incomplete")
                counts = counted()
            excluded = add_uploads(writer, conn, Path(settings.upload_folder), skip)
        manifest = {
            "format_version": FORMAT_VERSION,
            "app": "guest-registration",
            "app_version": settings.app_version,
            "name": name,
            "installation": settings.installation(),
            "created_at": format_time(when),
            "database": {"engine": db_engine.dialect, "server_version": server_version,
                         "dump_tool": tool.name, "dump_tool_version": tool.version},
            "row_counts": counts,
            "schema": {"revisions": revisions},
            "excluded_guest_photos": excluded,
            "signing_key": signer.public_key,
            "members": dict(writer.members),
        }
        if progress:
            progress("finishing", writer.written)
        return writer.commit(manifest), manifest, writer.size


def _audit_failure(engine, audit: AuditLog, entry: list[int], exc: BaseException, actor,
                   via) -> None:
    outcome = "failed" if isinstance(exc, Exception) else "aborted"
    if not entry:
        started = quietly("the failed backup", audit.start, engine, "backup", actor=actor,
                          via=via)
        if started is None:
            return
        entry.append(started)
    quietly("the failed backup", audit.finish, engine, entry[0], outcome,
            message=safe_message(exc))


def _as_backup_error(exc: BaseException) -> BaseException:
    """The exception to raise: a BackupError with a safe message for any error
    (an unexpected one logged with its traceback), the interrupt itself otherwise."""
    if isinstance(exc, BackupError) or not isinstance(exc, Exception):
        return exc
    message = safe_message(exc)
    expected = isinstance(exc, OSError) and exc.errno in EXPECTED_ERRNOS
    log.warning("backup failed: %s (%s)", message, type(exc).__name__, exc_info=not expected)
    return BackupError(message)


def safe_message(exc: BaseException, action: str = "backup") -> str:
    """What a user may read about a failure of ``action`` (``backup``, ``restore``,
    …): never a tool's stderr or a password."""
    if isinstance(exc, BackupError):
        return str(exc)
    backup = action == "backup"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "the disk is full; no archive was written" if backup else "the disk is full"
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        return ("the archive grew beyond the allowed file size; no archive was written"
                if backup else "a file grew beyond the allowed file size")
    if isinstance(exc, PermissionError):
        return "permission denied while writing the archive" if backup else "permission denied"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if type(exc).__module__.startswith(("sqlalchemy", "psycopg2")):
        return "the database could not be read (details are in the server log)"
    return f"the {action} failed ({type(exc).__name__}); details are in the server log"
