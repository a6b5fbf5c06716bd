"""Restoring an archive: decrypt (with an identity) into a private temporary
file, verify it against trusted keys, check the target, load the database in one
screened transaction, then add the uploads without overwriting anything.
Every outcome (refused, failed, ok) is audited with the caller's ``via``; the
audit entry never breaks a restore. No Flask request in here."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator, Mapping

from sqlalchemy.engine import Engine, make_url

from guest_backup.archive.format import DATABASE_MEMBER, PHOTO_NAME_RE, UPLOADS_PREFIX
from guest_backup.ops.create import safe_message
from guest_backup.archive.encryption import decrypted, is_age_file, load_identities
from guest_backup.engines import DatabaseEngine
from guest_backup.errors import BackupError
from guest_backup.ops.audit import AuditLog, quietly
from guest_backup.ops.finishing import AuditCarry, ErasureReapply, Finishers
from guest_backup.ops.schema import MigrationPaths, SchemaUpgrade, plan
from guest_backup.ops.settings import BackupSettings
from guest_backup.archive.signing import TrustedKeys
from guest_backup.archive.verify import VerifiedReader, VerifyReport, verify_archive
from guest_backup.archive.writer import CHUNK, Digest

log = logging.getLogger(__name__)


@dataclass
class RestoreResult:
    row_counts: dict
    uploads: int            # files written
    uploads_present: int    # already there with the same content
    uploads_kept: int       # already there with other content: left alone
    unsigned: bool
    schema: str | None = None  # "schema upgraded from … to …", when it was
    erasures: int = 0           # erasures of the ledger re-applied


def restore_archive(path: str | os.PathLike, *, engines: Mapping[str, DatabaseEngine],
                    settings: BackupSettings, target_url: str, uploads_dir: str | os.PathLike,
                    trusted: TrustedKeys, replace: bool = False, engine: Engine | None = None,
                    audit: AuditLog | None = None, actor: str | None = None, via: str = "cli",
                    allow_unsigned: bool = False, explicit_keys=(),
                    identity: str | os.PathLike | None = None,
                    migrations: MigrationPaths | None = None,
                    erasures: ErasureReapply | None = None) -> RestoreResult:
    """Nothing is written before the archive verified (seal, signature, name, date
    and installation, checksums, dump screen) and the target database was found
    empty (or ``replace`` was given). ``engine`` is the app's own database, where
    the outcome is recorded (after the fact: it may be the one just replaced);
    ``explicit_keys`` are the keys given for this restore (--trusted-key), whose
    archives may come from another installation."""
    name = Path(path).name
    stage, finish = "refused", Finishers()
    binding = {"installation": settings.installation(), "explicit_keys": explicit_keys,
               "name": name, "allow_unsigned": allow_unsigned}
    try:
        with _plain_archive(path, identity, trusted, binding) as plain:
            report, db_engine, manifest, empty = _check(plain, engines, trusted, binding,
                                                        target_url, uploads_dir, replace)
            upgrade = plan(migrations, manifest) if migrations is not None else None
            finish = _finishers(upgrade, None if empty else target_url, erasures)
            stage = "failed"
            written, present, kept = _load(plain, manifest, db_engine, settings, target_url,
                                           uploads_dir, empty, finish)
    except BaseException as exc:
        message = safe_message(exc)
        _log(audit, engine, name, actor, via, "failed" if isinstance(exc, Exception) else "aborted",
             message=f"refused: {message}" if stage == "refused" else message)
        if isinstance(exc, BackupError) or not isinstance(exc, Exception):
            raise
        log.warning("restore failed (%s)", type(exc).__name__)
        log.debug("restore failed", exc_info=True)
        raise BackupError(message) from None
    finally:
        for part in finish.parts:
            if isinstance(part, AuditCarry):
                part.discard()
    counts = manifest.get("row_counts", {})
    notes = _notes(report, finish)
    _log(audit, engine, name, actor, via, "ok", rows=sum(counts.values()),
         message=f"{notes}into {uploads_dir}: {written} uploads written, {present} already "
                 f"there, {kept} kept as they were")
    return RestoreResult(counts, written, present, kept, report.unsigned,
                         upgrade.describe() if upgrade is not None and upgrade.needed else None,
                         erasures.applied if erasures is not None else 0)


def _load(plain: Path, manifest: dict, db_engine, settings, target_url: str, uploads_dir,
          empty: bool, finish: Finishers) -> tuple[int, int, int]:
    """The database (finished before it commits), then the uploads."""
    with zipfile.ZipFile(plain) as zf:
        with zf.open(DATABASE_MEMBER) as member:
            db_engine.restore(settings.engine_settings, target_url,
                              VerifiedReader(member, manifest["members"][DATABASE_MEMBER],
                                             DATABASE_MEMBER),
                              replace=not empty, **({"finish": finish} if finish else {}))
        _after_load(db_engine, target_url, finish)
        return _restore_uploads(zf, manifest, Path(uploads_dir))


def _after_load(db_engine, target_url: str, finish: Finishers) -> None:
    """PostgreSQL: the erasures re-applied on the loaded database at once (matching
    by keyed hash needs Python, not SQL inside psql's transaction)."""
    if db_engine.dialect != "postgresql":
        return
    for part in finish.parts:
        if isinstance(part, ErasureReapply):
            from sqlalchemy import create_engine

            engine = create_engine(target_url)
            try:
                with engine.begin() as conn:
                    part.apply(conn)
            except BackupError as exc:
                raise BackupError(f"the database was restored, but {exc}: erase them again "
                                  f"(manage.py erase) before serving it") from None
            finally:
                engine.dispose()


def _notes(report, finish: Finishers) -> str:
    """What the audit entry says besides the counts."""
    note = "UNSIGNED archive restored (--allow-unsigned); " if report.unsigned else ""
    for part in finish.parts:
        if isinstance(part, SchemaUpgrade):
            note += part.describe() + "; "
        elif isinstance(part, AuditCarry):
            note += f"{part.count} audit entries of the replaced database kept; "
        elif isinstance(part, ErasureReapply):
            note += f"{part.applied} erasure{'s' if part.applied != 1 else ''} re-applied; "
    return note


def _finishers(upgrade: SchemaUpgrade | None, replaced_url: str | None,
               erasures: ErasureReapply | None) -> Finishers:
    """What the load does before it commits: the schema upgrade, the replaced
    database's audit trail carried over, the erasure ledger re-applied."""
    finish = Finishers()
    if upgrade is not None and upgrade.needed:
        finish.parts.append(upgrade)
    if replaced_url is not None:
        carry = AuditCarry.set_aside(replaced_url)
        if carry is not None:
            finish.parts.append(carry)
    if erasures is not None and erasures.entries:
        finish.parts.append(erasures)
    return finish


@contextlib.contextmanager
def _plain_archive(path, identity, trusted: TrustedKeys, binding: dict) -> Iterator[Path]:
    """The archive as a plain ZIP; an encrypted one only after its seal checked."""
    if not Path(path).is_file():
        raise BackupError(f"{path} does not exist")
    if not (str(path).endswith(".age") or is_age_file(path)):
        yield Path(path)
        return
    if identity is None:
        raise BackupError("the archive is encrypted: give --identity FILE (the age identity of "
                          "one of its recipients)")
    sealed = verify_archive(path, None, trusted, **binding)  # the ciphertext and its seal
    if not sealed.ok:
        raise BackupError("the archive did not verify: " + "; ".join(sealed.problems[:5]))
    with decrypted(path, load_identities(identity)) as plain:
        yield plain


def _check(path: Path, engines, trusted: TrustedKeys, binding: dict, target_url: str,
           uploads_dir, replace: bool) -> tuple[VerifyReport, DatabaseEngine, dict, bool]:
    """Everything that must hold before anything is written; raises BackupError."""
    report = verify_archive(path, engines, trusted, **binding)
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
    empty = db_engine.prepare_target(target_url)
    if not empty and not replace:
        raise BackupError("the target database is not empty; use --replace to overwrite it")
    return report, db_engine, manifest, empty


def _log(audit: AuditLog | None, engine: Engine | None, name: str, actor, via: str,
         outcome: str, **fields) -> None:
    """The app's own database may be unreachable or empty (a new server restoring
    its first archive): the entry never breaks the restore."""
    if engine is None or audit is None:
        return
    quietly("the restore", audit.record, engine, "restore", outcome, actor=actor, via=via,
            target=name, **fields)


def _restore_uploads(zf: zipfile.ZipFile, manifest: dict, target: Path) -> tuple[int, int, int]:
    """Add the uploads: never a guest-photo name, never outside ``target``, never
    over an existing file. Returns (written, already there, kept as they were)."""
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    root = target.resolve()
    written = present = kept = 0
    for info in zf.infolist():
        if not info.filename.startswith(UPLOADS_PREFIX) or info.is_dir():
            continue
        rel = info.filename[len(UPLOADS_PREFIX):]
        if PHOTO_NAME_RE.match(PurePosixPath(rel).name):
            raise BackupError(f"{info.filename!r} has a guest-photo name")
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if root != dest.parent.resolve() and root not in dest.parent.resolve().parents:
            raise BackupError(f"{info.filename!r} leaves the upload folder")
        expected = manifest["members"][info.filename]
        if dest.exists() or dest.is_symlink():
            same = (not dest.is_symlink() and dest.is_file()
                    and Digest.of_file(dest).entry["sha256"] == expected["sha256"])
            if same:
                present += 1
            else:
                kept += 1
            continue
        tmp = dest.with_name(f".{dest.name}.restoring")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as out, zf.open(info) as src:
                reader = VerifiedReader(src, expected, info.filename)
                while chunk := reader.read(CHUNK):
                    out.write(chunk)
            try:
                os.link(tmp, dest)  # fails instead of overwriting a file that appeared
                written += 1
            except FileExistsError:
                kept += 1
        finally:
            tmp.unlink(missing_ok=True)
    return written, present, kept


__all__ = ["RestoreResult", "restore_archive"]
