"""System backups: create, list, verify, restore, prune. No Flask request in here.

An archive ``system_backup_YYYYMMDD_HHMMSS.zip`` holds ``database.sql`` (a plain
SQL dump streamed straight from the dumper into the ZIP), ``uploads/...`` (every
upload except guest document photos) and ``manifest.json`` (written last: sizes
and SHA-256 of every other member, row counts taken in the dump's own snapshot).
It is written under a temporary name, mode 0600, and renamed only when complete;
on any failure the partial file is removed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, Mapping

from sqlalchemy import inspect, select, text
from sqlalchemy.engine import Engine

from . import audit
from .dumpers import DatabaseDumper, DumperSettings, DumpError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
ARCHIVE_RE = re.compile(r"^system_backup_\d{8}_\d{6}(?:_\d+)?\.zip$")
PARTIAL_SUFFIX = ".partial"
LOCK_NAME = ".backup.lock"
UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
#: guest photos: ``<uuid>.<ext>``, the older ``<uuid>_<anything>``, and half-written ``.tmp-<uuid>.<ext>``
PHOTO_NAME_RE = re.compile(rf"^(?:\.tmp-)?{UUID}(?:\.[A-Za-z0-9]+|_.*)?$")
CHUNK = 1024 * 1024
#: a member inflating more than this ratio *and* beyond BOMB_MIN_BYTES is refused
BOMB_RATIO = 200
BOMB_MIN_BYTES = 64 * 1024 * 1024
DATABASE_MEMBER = "database.sql"
MANIFEST_MEMBER = "manifest.json"
UPLOADS_PREFIX = "uploads/"


class BackupError(RuntimeError):
    """A backup, verification or restore failed; the message is safe to show."""


class BackupBusy(BackupError):
    """Another backup is running."""


@dataclass
class BackupSettings:
    """Everything a backup needs, as plain values (built from the app config)."""

    database_url: str
    upload_folder: str
    backup_folder: str
    app_version: str
    pg_dump: str = "pg_dump"
    psql: str = "psql"
    keep: int = 0
    compresslevel: int = 3

    @property
    def dumper_settings(self) -> DumperSettings:
        return DumperSettings(self.database_url, self.pg_dump, self.psql)


@dataclass
class ArchiveInfo:
    name: str
    path: Path
    size: int
    created: datetime  # file modification time, UTC


@dataclass
class BackupResult:
    path: Path
    size: int
    manifest: dict


@dataclass
class VerifyReport:
    ok: bool
    problems: list[str] = field(default_factory=list)
    manifest: dict | None = None


Progress = Callable[[str, int], None]


def _now() -> datetime:
    return datetime.now(timezone.utc)


# --- locking and housekeeping -------------------------------------------------------

@contextmanager
def backup_lock(folder: str | os.PathLike, wait: bool = False) -> Iterator[None]:
    """One backup at a time across processes (an ``flock`` on a file in the folder)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise BackupBusy("another backup is running; wait for it to finish") from None
        yield
    finally:
        os.close(fd)  # closing releases the lock


def clean_partials(folder: str | os.PathLike) -> int:
    """Remove half-written archives left by a killed process, unless a backup is running."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    try:
        with backup_lock(folder):
            return _remove_partials(folder)
    except BackupBusy:
        return 0


def _remove_partials(folder: Path) -> int:
    removed = 0
    for p in folder.glob(f".system_backup_*{PARTIAL_SUFFIX}"):
        p.unlink(missing_ok=True)
        removed += 1
    return removed


def list_archives(folder: str | os.PathLike) -> list[ArchiveInfo]:
    """Complete archives in the folder, newest first (partial files are never listed)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        if ARCHIVE_RE.match(p.name) and p.is_file() and not p.is_symlink():
            st = p.stat()
            found.append(ArchiveInfo(p.name, p, st.st_size,
                                     datetime.fromtimestamp(st.st_mtime, timezone.utc)))
    return sorted(found, key=lambda a: a.name, reverse=True)


def archive_path(folder: str | os.PathLike, name: str) -> Path:
    """The path of an existing archive by name; anything else (other files, paths,
    ``..``) is refused. Used by the web download and delete."""
    if not ARCHIVE_RE.match(name or ""):
        raise BackupError("no such archive")
    path = Path(folder) / name
    if not path.is_file() or path.is_symlink():
        raise BackupError("no such archive")
    return path


def prune(folder: str | os.PathLike, keep: int, protect: str | None = None) -> list[str]:
    """Delete the oldest archives beyond ``keep`` (0 = keep all), never ``protect``."""
    if keep <= 0:
        return []
    removed = []
    for info in list_archives(folder)[keep:]:
        if info.name == protect:
            continue
        info.path.unlink(missing_ok=True)
        removed.append(info.name)
    return removed


# --- creating -------------------------------------------------------------------------

def _archive_name(folder: Path, when: datetime) -> str:
    base = f"system_backup_{when:%Y%m%d_%H%M%S}"
    name, n = f"{base}.zip", 1
    while (folder / name).exists():
        n += 1
        name = f"{base}_{n}.zip"
    return name


class _HashingWriter:
    """Feeds a ZIP member and keeps its size and SHA-256; reports progress."""

    def __init__(self, member, progress: Progress | None, stage: str, counter: list[int]):
        self.member, self.sha, self.size = member, hashlib.sha256(), 0
        self.progress, self.stage, self.counter = progress, stage, counter
        self.tail = b""

    def write(self, data: bytes) -> None:
        self.member.write(data)
        self.sha.update(data)
        self.size += len(data)
        self.tail = (self.tail + data[-256:])[-256:]  # no copy of the whole chunk
        self.counter[0] += len(data)
        if self.progress:
            self.progress(self.stage, self.counter[0])


def _photo_names_in_db(conn, names: list[str]) -> set[str]:
    """Which of ``names`` are some guest's ``document_photo`` (queried in batches)."""
    from guest_registration.models import Guest

    found: set[str] = set()
    for i in range(0, len(names), 500):
        batch = names[i:i + 500]
        found.update(conn.execute(select(Guest.document_photo)
                                  .where(Guest.document_photo.in_(batch))).scalars())
    return found


def _upload_files(folder: Path) -> Iterator[tuple[Path, str]]:
    """Regular files under the upload folder as (path, posix relative name); links skipped."""
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not os.path.islink(os.path.join(root, d)))
        for name in sorted(files):
            path = Path(root) / name
            if path.is_symlink() or not path.is_file():
                continue
            yield path, path.relative_to(folder).as_posix()


def create_backup(engine: Engine, dumper: DatabaseDumper, settings: BackupSettings, *,
                  output: str | os.PathLike | None = None, actor: str | None = None,
                  via: str = "cli", progress: Progress | None = None,
                  lock: bool = True) -> BackupResult:
    """Make a system backup archive; raise :class:`BackupError` with a safe message.

    ``lock=False`` means the caller already holds :func:`backup_lock` (a web job
    takes it in the request, so a second click is refused at once)."""
    import zipfile

    folder = Path(settings.backup_folder)
    target_dir, target_name = folder, None
    if output is not None:
        out = Path(output)
        if out.is_dir():
            target_dir = out
        else:
            target_dir, target_name = out.parent, out.name
    entry: int | None = None  # logged once the snapshot exists, so it is not in the dump
    tmp: Path | None = None
    try:
        for d in {folder, target_dir}:
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError:
                raise BackupError(f"the backup folder {d} cannot be created") from None
            if not d.is_dir() or not os.access(d, os.W_OK | os.X_OK):
                raise BackupError(f"the backup folder {d} is not writable")
        with backup_lock(folder) if lock else nullcontext():
            _remove_partials(folder)  # left by a killed process; we hold the lock
            when = _now()
            name = target_name or _archive_name(target_dir, when)
            tmp = target_dir / f".{name}{PARTIAL_SUFFIX}"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            except OSError:
                tmp = None
                raise BackupError(f"the backup folder {target_dir} is not writable") from None
            written = [0]
            members: dict[str, dict] = {}
            with os.fdopen(fd, "wb") as fh, \
                    zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED,
                                    compresslevel=settings.compresslevel, allowZip64=True) as zf:
                if progress:
                    progress("database", 0)
                with engine.connect() as conn:
                    dumper.begin_snapshot(conn)
                    tool = dumper.tool(settings.dumper_settings, conn)
                    server_version = dumper.server_version(conn)
                    tables = sorted(inspect(conn).get_table_names())
                    counts = {t: conn.execute(text(f'SELECT count(*) FROM "{t}"')).scalar_one()
                              for t in tables}
                    entry = audit.start(engine, "backup", actor=actor, via=via, target=name)
                    info = _zipinfo(DATABASE_MEMBER, when, level=settings.compresslevel)
                    with zf.open(info, "w", force_zip64=True) as member:
                        w = _HashingWriter(member, progress, "database", written)
                        dumper.dump(settings.dumper_settings, conn, w.write)
                    if not dumper.is_complete(w.tail):
                        raise BackupError("the database dump is incomplete")
                    members[DATABASE_MEMBER] = {"size": w.size, "sha256": w.sha.hexdigest()}
                    excluded = _add_uploads(zf, conn, Path(settings.upload_folder), members,
                                            progress, written, settings.compresslevel)
                manifest = {
                    "format_version": FORMAT_VERSION,
                    "app": "guest-registration",
                    "app_version": settings.app_version,
                    "created_at": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "database": {"engine": dumper.dialect, "server_version": server_version,
                                 "dump_tool": tool.name, "dump_tool_version": tool.version},
                    "row_counts": counts,
                    "excluded_guest_photos": excluded,
                    "members": members,
                }
                if progress:
                    progress("finishing", written[0])
                zf.writestr(_zipinfo(MANIFEST_MEMBER, when),
                            json.dumps(manifest, indent=2, sort_keys=True) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            final = target_dir / name
            os.replace(tmp, final)
            tmp = None
            size = final.stat().st_size
            pruned = prune(folder, settings.keep, protect=name) if target_dir == folder else []
        audit.finish(engine, entry, "ok", target=name, bytes=size,
                     rows=sum(counts.values()),
                     message=f"pruned {len(pruned)}" if pruned else None)
        if progress:
            progress("done", size)
        return BackupResult(final, size, manifest)
    except BaseException as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        message = _safe_message(exc)
        try:
            if entry is None:
                entry = audit.start(engine, "backup", actor=actor, via=via)
            audit.finish(engine, entry, "failed" if isinstance(exc, Exception) else "aborted",
                         message=message)
        except Exception:
            log.exception("could not record the failed backup in the audit log")
        if isinstance(exc, BackupError):
            raise
        if isinstance(exc, Exception):
            expected = isinstance(exc, OSError) and exc.errno in (13, 27, 28)
            # an expected condition gets one line; anything else its traceback in the log
            log.warning("backup failed: %s (%s)", message, type(exc).__name__,
                        exc_info=not expected)
            raise BackupError(message) from None
        raise


def _safe_message(exc: BaseException) -> str:
    if isinstance(exc, (BackupError, DumpError)):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno == 28:
        return "the disk is full; no archive was written"
    if isinstance(exc, OSError) and exc.errno == 27:
        return "the archive grew beyond the allowed file size; no archive was written"
    if isinstance(exc, PermissionError):
        return "permission denied while writing the archive"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if type(exc).__module__.startswith(("sqlalchemy", "psycopg2")):
        return "the database could not be read (details are in the server log)"
    return f"the backup failed ({type(exc).__name__}); details are in the server log"


def _zipinfo(name: str, when: datetime, mtime: float | None = None, level: int = 3):
    import zipfile

    stamp = time.gmtime(mtime)[:6] if mtime is not None else when.timetuple()[:6]
    info = zipfile.ZipInfo(name, date_time=max(stamp, (1980, 1, 1, 0, 0, 0)))
    info.compress_type = zipfile.ZIP_DEFLATED
    # a ZipInfo passed to ZipFile.open() ignores the ZipFile's compresslevel
    if hasattr(type(info), "compress_level"):  # Python >= 3.13
        info.compress_level = level
    else:
        info._compresslevel = level
    info.external_attr = 0o600 << 16
    return info


def _add_uploads(zf, conn, folder: Path, members: dict, progress: Progress | None,
                 written: list[int], level: int) -> int:
    """Add every non-photo upload; return how many guest photos were left out."""
    if not folder.is_dir():
        return 0
    excluded = 0
    pending: list[tuple[Path, str]] = []

    def flush() -> None:
        db_photos = _photo_names_in_db(conn, [rel for _, rel in pending])
        for path, rel in pending:
            nonlocal excluded
            if rel in db_photos:
                excluded += 1
                continue
            name = UPLOADS_PREFIX + rel
            with open(path, "rb") as src, zf.open(_zipinfo(name, _now(), path.stat().st_mtime, level),
                                                  "w", force_zip64=True) as member:
                w = _HashingWriter(member, progress, "uploads", written)
                while chunk := src.read(CHUNK):
                    w.write(chunk)
            members[name] = {"size": w.size, "sha256": w.sha.hexdigest()}
        pending.clear()

    for path, rel in _upload_files(folder):
        if PHOTO_NAME_RE.match(path.name):
            excluded += 1
            continue
        pending.append((path, rel))
        if len(pending) >= 500:
            flush()
    flush()
    return excluded


# --- verifying ------------------------------------------------------------------------

def _member_problems(info) -> str | None:
    """Why a ZIP member name or type is unsafe to extract (None if it is fine)."""
    import stat

    name = info.filename
    mode = (info.external_attr >> 16) & 0o170000
    if mode and stat.S_ISLNK(mode):
        return f"{name!r} is a symbolic link"
    if name.startswith("/") or "\\" in name or re.match(r"^[A-Za-z]:", name):
        return f"{name!r} is an absolute or non-portable path"
    parts = PurePosixPath(name).parts
    if ".." in parts or "." in parts or "" in name.split("/")[:-1]:
        return f"{name!r} leaves the archive's folder"
    if not (name in (DATABASE_MEMBER, MANIFEST_MEMBER) or name.startswith(UPLOADS_PREFIX)):
        return f"{name!r} is not a member a system backup has"
    return None


def verify_archive(path: str | os.PathLike, dumpers: Mapping[str, DatabaseDumper] | None = None,
                   max_manifest_bytes: int = 16 * 1024 * 1024) -> VerifyReport:
    """Check the ZIP, every member against the manifest (size and SHA-256), that no
    member is unsafe or unexpected, and that the dump is complete."""
    import zipfile

    report = VerifyReport(ok=False)
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        report.problems.append(f"not a readable ZIP archive ({type(exc).__name__})")
        return report
    with zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            report.problems.append(f"duplicate members: {', '.join(sorted(dupes))[:200]}")
        for info in infos:
            problem = _member_problems(info)
            if problem:
                report.problems.append(problem)
            elif (info.file_size > BOMB_MIN_BYTES
                  and info.file_size > BOMB_RATIO * max(info.compress_size, 1)):
                report.problems.append(f"{info.filename!r} inflates {info.file_size // max(info.compress_size, 1)}"
                                       f"-fold: refused as a possible ZIP bomb")
        if report.problems:
            return report
        if MANIFEST_MEMBER not in names:
            report.problems.append("manifest.json is missing")
            return report
        minfo = zf.getinfo(MANIFEST_MEMBER)
        if minfo.file_size > max_manifest_bytes:
            report.problems.append("manifest.json is implausibly large")
            return report
        try:
            manifest = json.loads(zf.read(MANIFEST_MEMBER))
            listed: dict = manifest["members"]
            engine = manifest["database"]["engine"]
        except Exception:
            report.problems.append("manifest.json is not a valid manifest")
            return report
        report.manifest = manifest
        if manifest.get("format_version") != FORMAT_VERSION:
            report.problems.append(f"unsupported archive format {manifest.get('format_version')!r}")
        for name in listed:
            if name not in names:
                report.problems.append(f"{name} is listed in the manifest but missing")
        for info in infos:
            if info.filename == MANIFEST_MEMBER:
                continue
            expected = listed.get(info.filename)
            if expected is None:
                report.problems.append(f"{info.filename} is not in the manifest")
                continue
            if info.file_size != expected.get("size"):
                report.problems.append(f"{info.filename}: size differs from the manifest")
                continue
            sha, size, tail = hashlib.sha256(), 0, b""
            try:
                with zf.open(info) as member:
                    while chunk := member.read(CHUNK):
                        size += len(chunk)
                        if size > expected["size"]:
                            raise ValueError("member inflates beyond its declared size")
                        sha.update(chunk)
                        tail = (tail + chunk[-256:])[-256:]
            except Exception as exc:  # zlib.error, BadZipFile, EOFError, our ValueError ...
                report.problems.append(f"{info.filename}: damaged ({exc.__class__.__name__})")
                continue
            if sha.hexdigest() != expected.get("sha256"):
                report.problems.append(f"{info.filename}: checksum mismatch")
            if info.filename == DATABASE_MEMBER:
                dumper = (dumpers or {}).get(engine)
                if dumper is None:
                    report.problems.append(f"no dumper for the archive's engine {engine!r}")
                elif not dumper.is_complete(tail):
                    report.problems.append("database.sql is incomplete (no completion trailer)")
    report.ok = not report.problems
    return report


# --- restoring ------------------------------------------------------------------------

def restore_archive(path: str | os.PathLike, *, dumpers: Mapping[str, DatabaseDumper],
                    settings: BackupSettings, target_url: str, uploads_dir: str | os.PathLike,
                    replace: bool = False, engine: Engine | None = None,
                    actor: str | None = None) -> dict:
    """Verify, check the target, load the database, then write the uploads.

    Nothing is written before the archive verified and the target database was
    found empty (or ``replace`` was given). The database loads in one transaction
    and stops at the first SQL error.
    """
    import zipfile

    from sqlalchemy.engine import make_url

    report = verify_archive(path, dumpers)
    if not report.ok:
        raise BackupError("the archive did not verify: " + "; ".join(report.problems[:5]))
    manifest = report.manifest or {}
    engine_name = manifest["database"]["engine"]
    target_dialect = make_url(target_url).get_backend_name()
    if target_dialect != engine_name:
        raise BackupError(f"the archive holds a {engine_name} dump; the target is {target_dialect}")
    dumper = dumpers[engine_name]
    needed = sum(m.get("size", 0) for n, m in manifest["members"].items() if n.startswith(UPLOADS_PREFIX))
    target = Path(uploads_dir)
    existing = next((p for p in [target, *target.parents] if p.exists()), Path("/"))
    if needed > shutil.disk_usage(existing).free:
        raise BackupError(f"the uploads need {needed} bytes; the target disk has less free space")
    if not dumper.is_empty(target_url):
        if not replace:
            raise BackupError("the target database is not empty; use --replace to overwrite it")
        dumper.clear(target_url)
    try:
        with zipfile.ZipFile(path) as zf:
            with zf.open(DATABASE_MEMBER) as dump:
                dumper.restore(settings.dumper_settings, target_url, dump)
            written = _restore_uploads(zf, Path(uploads_dir))
    except BaseException as exc:
        _log_restore(engine, path, actor, "failed", message=_safe_message(exc))
        if isinstance(exc, DumpError):
            raise BackupError(str(exc)) from None
        raise
    rows = sum(manifest.get("row_counts", {}).values())
    _log_restore(engine, path, actor, "ok", rows=rows)
    return {"row_counts": manifest.get("row_counts", {}), "uploads": written}


def _log_restore(engine: Engine | None, path, actor, outcome: str, **fields) -> None:
    """Logged after the fact: the app's own database may be the one just replaced."""
    if engine is None:
        return
    try:
        entry = audit.start(engine, "restore", actor=actor, via="cli", target=Path(path).name)
        audit.finish(engine, entry, outcome, **fields)
    except Exception:
        log.warning("could not record the restore in the audit log", exc_info=True)


def _restore_uploads(zf, target: Path) -> int:
    target.mkdir(parents=True, exist_ok=True)
    root = target.resolve()
    count = 0
    for info in zf.infolist():
        if not info.filename.startswith(UPLOADS_PREFIX) or info.is_dir():
            continue
        rel = info.filename[len(UPLOADS_PREFIX):]
        dest = (root / rel).resolve()
        if root not in dest.parents:
            raise BackupError(f"{info.filename!r} leaves the upload folder")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.restoring")
        with zf.open(info) as src, open(tmp, "wb") as out:
            while chunk := src.read(CHUNK):
                out.write(chunk)
        os.replace(tmp, dest)
        count += 1
    return count
