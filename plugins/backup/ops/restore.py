"""Restoring an archive in one read of it: the ciphertext hashed and decrypted,
every member hashed, the dump screened and loaded (in the engine's one
transaction), the uploads staged, all as the archive streams past
(:mod:`guest_backup.archive.onepass`); the verdict on the whole archive (seal,
signed manifest, every hash) comes at the end of the dump, before the engine
commits, and decides whether anything is kept. Nothing is written before the
checks possible up front passed (the seal or the signed manifest, the target).
No decrypted copy of the archive touches the disk. Every outcome (refused,
failed, ok) is audited with the caller's ``via``; the audit entry never breaks a
restore. No Flask request in here."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from sqlalchemy.engine import Engine, make_url

from guest_backup.archive.encryption import is_encrypted, load_identities
from guest_backup.archive.format import DATABASE_MEMBER, UPLOADS_PREFIX
from guest_backup.archive.manifest import Binding
from guest_backup.archive.onepass import ArchivePass
from guest_backup.archive.signing import TrustedKeys
from guest_backup.archive.verify import ArchiveRefused
from guest_backup.archive.writer import CHUNK
from guest_backup.archive.zipstream import StreamError
from guest_backup.engines import DatabaseEngine, DumpRefused, exclusive
from guest_backup.errors import BackupError
from guest_backup.ops.audit import AuditLog, quietly
from guest_backup.ops.create import safe_message
from guest_backup.ops.erasure_mark import refuse_lost_lines
from guest_backup.ops.finishing import (AuditCarry, CheckedUpgrade, ErasureReapply, Finishers,
                                        PlannedUpgrade)
from guest_backup.ops.schema import MigrationPaths
from guest_backup.ops.settings import BackupSettings
from guest_backup.ops.staging import StagedUploads

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
                    erasures: Callable[[], ErasureReapply] | None = None) -> RestoreResult:
    """Nothing is kept unless the whole archive verified (seal, signature, name, date
    and installation, checksums, dump screen) and the target database was found
    empty (or ``replace`` was given). ``engine`` is the app's own database, where
    the outcome is recorded (after the fact: it may be the one just replaced);
    ``explicit_keys`` are the keys given for this restore (--trusted-key), whose
    archives may come from another installation. ``erasures`` reads the erasure
    ledger (:func:`~guest_backup.ops.finishing.erasures_for`): it is called once the
    target's lock is held, so an erasure committed while this restore started is
    in it (read before the lock, one was overwritten by the archive's copy)."""
    with contextlib.ExitStack() as held:  # the target's lock, until the outcome is recorded
        name = Path(path).name
        stage, finish, staged = "refused", Finishers(), StagedUploads(uploads_dir)
        binding = Binding(name, settings.installation(), frozenset(explicit_keys))
        upgrade = CheckedUpgrade(migrations) if migrations is not None else None
        try:
            identities = _identities(path, identity)
            with ArchivePass(path, trusted, binding, identities=identities,
                             allow_unsigned=allow_unsigned, engines=engines) as archive:
                if upgrade is not None and archive.report.manifest is not None:
                    upgrade.settle(archive.report.manifest)  # a plain archive's: before the target
                db_engine, empty, made = _check(archive, engines, target_url, uploads_dir, replace)
                if made:  # dropped again (once the lock is let go) unless the restore happens
                    held.push(lambda kind, exc, tb: kind is not None and made(target_url))
                staged.expect(archive.report.manifest)  # a plain archive's, up front
                # one restore or erasure at a time in the target, from before its audit
                # trail is set aside until this restore's entry is written
                held.enter_context(exclusive(db_engine, target_url))
                empty = _still_empty(db_engine, target_url, empty, replace)
                reapply = erasures() if erasures is not None else None
                refuse_lost_lines(reapply, engine, None if empty else target_url)  # a mark past it
                finish = _finishers(upgrade, None if empty else target_url, reapply)
                stage = "failed"
                manifest = _load(archive, engines, db_engine, settings, target_url, empty, finish,
                                 staged, upgrade)
                report = archive.report
            written, present, kept = staged.commit()
        except BaseException as exc:
            staged.discard()
            raise _failed(exc, stage, lambda outcome, message: _log(
                audit, engine, name, actor, via, outcome, message=message))
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
                         reapply.applied if reapply is not None else 0)


def _failed(exc: BaseException, stage: str, record) -> BaseException:
    """Audit a failed restore; the exception to raise (a message safe for users).
    Whatever fails in the pass is refused before anything committed."""
    if isinstance(exc, (StreamError, DumpRefused)):  # found by the pass: nothing committed
        exc = ArchiveRefused([f"{DATABASE_MEMBER}: {exc}" if isinstance(exc, DumpRefused)
                              else str(exc)])
    refused = stage == "refused" or isinstance(exc, ArchiveRefused)
    message = safe_message(exc, "restore")
    if isinstance(exc, ArchiveRefused) and "nothing was restored" not in message:
        message += "; nothing was restored"
    record("failed" if isinstance(exc, Exception) else "aborted",
           f"refused: {message}" if refused else message)
    if not isinstance(exc, Exception) or (isinstance(exc, BackupError) and message == str(exc)):
        return exc
    if not isinstance(exc, BackupError):
        log.warning("restore failed (%s)", type(exc).__name__)
        log.debug("restore failed", exc_info=exc)
    safe = BackupError(message)
    safe.__suppress_context__ = True
    return safe


def _identities(path, identity) -> list | None:
    """The age identities, read only for an encrypted archive."""
    if identity is None or not Path(path).is_file() or not is_encrypted(path):
        return None
    return load_identities(identity)


class _EndGate:
    """The dump as the engine reads it. At its end, before the engine may commit,
    ``at_end`` reads the rest of the archive and gives the verdict: raising there
    kills the load, so nothing commits."""

    def __init__(self, member, at_end) -> None:
        self.member, self.at_end, self.ended = member, at_end, False

    def read(self, n: int = -1) -> bytes:
        data = self.member.read(n if n and n > 0 else CHUNK)
        if not data and not self.ended:
            self.ended = True
            self.at_end()
        return data


def _load(archive: ArchivePass, engines, db_engine, settings, target_url: str, empty: bool,
          finish: Finishers, staged: StagedUploads, upgrade: PlannedUpgrade | None) -> dict:
    """The one pass: uploads staged, the dump loaded; the verdict at the dump's end."""
    members, verdict = archive.members(), {}

    def rest() -> None:
        for member in members:
            staged.add(member)
        verdict["manifest"] = manifest = archive.verdict(engines, db_engine.dialect)
        if upgrade is not None:
            upgrade.settle(manifest)

    for member in members:
        if member.name == DATABASE_MEMBER:
            db_engine.restore(settings.engine_settings, target_url, _EndGate(member, rest),
                              replace=not empty, **({"finish": finish} if finish else {}))
            break
        staged.add(member)
    else:
        archive.verdict(engines, db_engine.dialect)
        raise ArchiveRefused(["database.sql is missing"])
    if "manifest" not in verdict:  # an engine that returned without reading to the end
        raise BackupError(f"the {db_engine.dialect} engine loaded the dump without reading it "
                          f"to its end, so the archive was not verified: check the target "
                          f"database before using it")
    return verdict["manifest"]


def _notes(report, finish: Finishers) -> str:
    """What the audit entry says besides the counts."""
    note = "UNSIGNED archive restored (--allow-unsigned); " if report.unsigned else ""
    for part in finish.parts:
        if isinstance(part, PlannedUpgrade) and part.needed:
            note += part.describe() + "; "
        elif isinstance(part, AuditCarry):
            note += f"{part.count} audit entries of the replaced database kept; "
        elif isinstance(part, ErasureReapply) and part.entries:
            note += f"{part.applied} erasure{'s' if part.applied != 1 else ''} re-applied; "
    return note


def _finishers(upgrade: PlannedUpgrade | None, replaced_url: str | None,
               erasures: ErasureReapply | None) -> Finishers:
    """What the load does before it commits: the schema upgrade, the replaced
    database's audit trail carried over, the erasure ledger re-applied."""
    finish = Finishers()
    if upgrade is not None:  # planned once the manifest is known: maybe nothing to do
        finish.parts.append(upgrade)
    if replaced_url is not None:
        carry = AuditCarry.set_aside(replaced_url)
        if carry is not None:
            finish.parts.append(carry)
    if erasures is not None:  # with no line, it still drops the archive's mark
        finish.parts.append(erasures)
    return finish


def _check(archive: ArchivePass, engines, target_url: str, uploads_dir,
           replace: bool) -> tuple[DatabaseEngine, bool, Callable | None]:
    """What must hold before anything is written; raises BackupError. The engine
    is the one the seal or manifest signs, else the target's (checked against the
    manifest in the verdict). Last, how to drop the database created here (a
    PostgreSQL target that did not exist): refused or failed, the restore leaves
    none behind (before, a refused archive's still did)."""
    target_dialect = make_url(target_url).get_backend_name()
    engine_name = archive.engine or target_dialect
    if target_dialect != engine_name:
        raise BackupError(f"the archive holds a {engine_name} dump; the target is {target_dialect}")
    db_engine = engines.get(engine_name)
    if db_engine is None:
        raise BackupError(f"no database engine for the archive's {engine_name!r}")
    manifest = archive.report.manifest
    if manifest is not None:  # known up front for a plain archive
        needed = sum(m.get("size", 0) for n, m in manifest["members"].items()
                     if n.startswith(UPLOADS_PREFIX) and isinstance(m, dict))
        target = Path(uploads_dir)
        existing = next((p for p in [target, *target.parents] if p.exists()), Path("/"))
        if needed > shutil.disk_usage(existing).free:
            raise BackupError(f"the uploads need {needed} bytes; the target disk has less free "
                              f"space")
    made = None
    if engine_name == "postgresql":
        from guest_backup.engines import pgload
        made = pgload.drop_unused if pgload.database_missing(target_url) else None
    empty = db_engine.prepare_target(target_url)
    if not empty and not replace:
        raise BackupError("the target database is not empty; use --replace to overwrite it")
    return db_engine, empty, made


def _still_empty(db_engine: DatabaseEngine, target_url: str, empty: bool, replace: bool) -> bool:
    """The target looked again once the lock is held: another restore into the
    same new database may have loaded it while this one was checking."""
    if not empty or db_engine.prepare_target(target_url):
        return empty
    if not replace:
        raise BackupError("the target database is not empty (another restore loaded it "
                          "meanwhile); use --replace to overwrite it")
    return False


def _log(audit: AuditLog | None, engine: Engine | None, name: str, actor, via: str,
         outcome: str, **fields) -> None:
    """The app's own database may be unreachable or empty (a new server restoring
    its first archive): the entry never breaks the restore."""
    if engine is None or audit is None:
        return
    quietly("the restore", audit.record, engine, "restore", outcome, actor=actor, via=via,
            target=name, **fields)


__all__ = ["RestoreResult", "restore_archive"]
