"""Restoring an archive: verify, check the target, load the database, then write
the uploads. Every outcome (refused, failed, ok) is audited with the caller's
``via``. No Flask request in here."""

from __future__ import annotations

import logging
import os
import shutil
import zipfile
from pathlib import Path
from typing import Mapping

from sqlalchemy.engine import Engine, make_url

from guest_registration import audit

from .archive import DATABASE_MEMBER, UPLOADS_PREFIX
from .create import safe_message
from .engines import DatabaseEngine
from .errors import BackupError
from .settings import BackupSettings
from .verify import verify_archive
from .writer import CHUNK

log = logging.getLogger(__name__)


def restore_archive(path: str | os.PathLike, *, engines: Mapping[str, DatabaseEngine],
                    settings: BackupSettings, target_url: str, uploads_dir: str | os.PathLike,
                    replace: bool = False, engine: Engine | None = None,
                    actor: str | None = None, via: str = "cli") -> dict:
    """Verify, check the target, load the database, then write the uploads.

    Nothing is written before the archive verified and the target database was
    found empty (or ``replace`` was given). The database loads in one transaction
    and stops at the first SQL error. ``engine`` is the app's own database, where
    the outcome is recorded (after the fact: it may be the one just replaced).
    """
    name = Path(path).name
    try:
        db_engine, manifest, empty = _check(path, engines, target_url, uploads_dir, replace)
    except BackupError as exc:
        _log(engine, name, actor, via, "failed", message=f"refused: {exc}")
        raise
    try:
        if not empty:  # _check refused this unless replace was given
            db_engine.clear(target_url)
        with zipfile.ZipFile(path) as zf:
            with zf.open(DATABASE_MEMBER) as dump:
                db_engine.restore(settings.engine_settings, target_url, dump)
            written = _restore_uploads(zf, Path(uploads_dir))
    except BaseException as exc:
        _log(engine, name, actor, via, "failed" if isinstance(exc, Exception) else "aborted",
             message=safe_message(exc))
        if isinstance(exc, BackupError) or not isinstance(exc, Exception):
            raise
        log.warning("restore failed", exc_info=True)
        raise BackupError(safe_message(exc)) from None
    counts = manifest.get("row_counts", {})
    _log(engine, name, actor, via, "ok", rows=sum(counts.values()), message=f"into {uploads_dir}")
    return {"row_counts": counts, "uploads": written}


def _check(path, engines, target_url: str, uploads_dir,
           replace: bool) -> tuple[DatabaseEngine, dict, bool]:
    """Everything that must hold before anything is written; raises BackupError."""
    if not Path(path).is_file():
        raise BackupError(f"{path} does not exist")
    report = verify_archive(path, engines)
    if not report.ok:
        raise BackupError("the archive did not verify: " + "; ".join(report.problems[:5]))
    manifest = report.manifest or {}
    engine_name = manifest["database"]["engine"]
    target_dialect = make_url(target_url).get_backend_name()
    if target_dialect != engine_name:
        raise BackupError(f"the archive holds a {engine_name} dump; the target is {target_dialect}")
    db_engine = engines[engine_name]
    needed = sum(m.get("size", 0) for n, m in manifest["members"].items()
                 if n.startswith(UPLOADS_PREFIX))
    target = Path(uploads_dir)
    existing = next((p for p in [target, *target.parents] if p.exists()), Path("/"))
    if needed > shutil.disk_usage(existing).free:
        raise BackupError(f"the uploads need {needed} bytes; the target disk has less free space")
    empty = db_engine.is_empty(target_url)
    if not empty and not replace:
        raise BackupError("the target database is not empty; use --replace to overwrite it")
    return db_engine, manifest, empty


def _log(engine: Engine | None, name: str, actor, via: str, outcome: str, **fields) -> None:
    if engine is None:
        return
    try:
        audit.record(engine, "restore", outcome, actor=actor, via=via, target=name, **fields)
    except Exception:
        log.warning("could not record the restore in the audit log", exc_info=True)


def _restore_uploads(zf: zipfile.ZipFile, target: Path) -> int:
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
