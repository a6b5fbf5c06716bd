"""Erasure of a guest's personal data (GDPR Art. 17): one guest, one registration
(all its guests), every registration of an e-mail address, or (legal retention)
every registration whose stay ended too long ago.

What goes and what stays:

============================  =====================================================
``guest.first_name``          ``'[erased]'``
``guest.last_name``           ``'[erased]'``
``guest.document_number``     ``'[erased]'``
``guest.document_photo``      NULL; the photo file is deleted from UPLOAD_FOLDER
``guest.age_category``,       kept (statistics: guests per trip, adults and
``document_type``,            children, document types, consent, dates)
``gdpr_consent``,
``created_at``,
``registration_id``
``registration.email``        ``'erased-<registration id>@invalid'`` (the column is
                              NOT NULL) when the registration is erased, or when
                              its last guest with personal data is
``registration.trip_id``,     kept
``language``, ``status``,
``created_at``
``trip``                      untouched (no personal data)
============================  =====================================================

Order: the ledger is collected first (every copy checked: a broken one stops the
erasure before anything changes); then ONE database transaction anonymises the
rows and, before its COMMIT, the erasure is appended to the ledger (ids and
keyed hashes of the e-mail, document numbers and names only) and its photos to
``erasure-photos.pending`` in the instance folder: a ledger that cannot be
written leaves the database as it was. After the commit the photo files are
deleted, the ledger is re-applied to the archives open in browse sessions (idle
ones dropped), SQLite's write-ahead log is emptied, the ledger is published to
every storage (a failure is reported; the erasure stands), and the audit entry
is written (no personal data: ``guest 7``, ``registration 3``, ``3
registrations``), even when the erasure is cut off (Ctrl-C, a worker's timeout
while a slow storage takes the ledger). What a kill left undone (the photos, the
ledger's copies) the next erasure or ``erasure-ledger apply`` finishes
(:func:`finish_pending`); ``erase`` says "nothing to erase" and finishes it too.

What an erasure will change is found first, changing nothing
(:mod:`guest_backup.ops.erasure_plan`). :func:`reapply_checked` and
:func:`erased_present` (in
:mod:`guest_backup.ops.reapply`) run the same statements on a restored database.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Connection, Engine

from guest_backup.errors import BackupError
from guest_backup.ops.audit import quietly
from guest_backup.ops.context import BackupContext
from guest_backup.ops.erasure_mark import (ERASE_WAIT, advance_mark, database_lock, lost_lines,
                                           lost_lines_error)
from guest_backup.ops.erasure_plan import (PENDING_NAME, ErasureError,  # noqa: F401
                                           ErasurePlan, NotFound, NothingToErase,
                                           PlanChanged, Target, delete_photos, note_pending,
                                           pending_photos, plan_erasure)
from guest_backup.ops.erasure_sql import (ERASED, anonymise_guests, anonymise_registrations,
                                          checkpoint, close_emptied, photos_in_use)
from guest_backup.ops.ledger import ErasureLedger, LedgerBroken
from guest_backup.ops.ledger_copies import collect, publish
from guest_backup.ops.reapply import Leftover, erased_present, reapply_checked  # noqa: F401
from guest_backup.storages import StorageError

log = logging.getLogger(__name__)

__all__ = ["ERASE_WAIT", "ERASED", "ErasureError", "ErasurePlan", "ErasureResult", "Leftover",
           "NotFound", "NothingToErase", "PlanChanged", "Target", "erase", "erased_present",
           "finish_pending", "plan_erasure", "reapply_checked"]


@dataclass
class ErasureResult:
    plan: ErasurePlan
    rows: int  # database rows changed
    seq: int  # the ledger line
    photos_deleted: int = 0
    #: what went wrong after the commit (publishing the ledger, deleting a photo)
    warnings: list[str] = field(default_factory=list)


def apply_plan(conn: Connection, plan: ErasurePlan) -> int:
    """The anonymisation statements of ``plan`` on ``conn``; the rows changed."""
    if plan.kind == "guest":
        return anonymise_guests(conn, plan.guest_ids) + close_emptied(conn, plan.registration_ids)
    return anonymise_registrations(conn, plan.registration_ids)


def erase(ctx: BackupContext, engine: Engine, target: Target, *, actor: str | None,
          via: str, expected: str | None = None) -> ErasureResult:
    """Erase ``target`` (see the module's docstring for the order); NotFound or
    NothingToErase change nothing, and so does a broken ledger. With ``expected``
    (the :attr:`~ErasurePlan.fingerprint` of the plan shown and confirmed), a plan
    that differs now is PlanChanged: a guest who registered with the address after
    the preview was erased unseen."""
    ledger = ErasureLedger.in_folder(ctx.instance_path)
    warnings: list[str] = []
    try:
        storages = ctx.storages()
        entries = collect(ledger, storages, warn=warnings.append)
    except BackupError as exc:
        _failed(ctx, engine, target, actor, via, f"the erasure ledger: {exc}")
        kind = LedgerBroken if isinstance(exc, LedgerBroken) else BackupError
        raise kind(f"nothing was erased: {exc}") from None
    with contextlib.ExitStack() as held:
        try:  # one at a time, and never while a restore loads this database (exclusive)
            held.enter_context(database_lock(ctx, engine, ERASE_WAIT))
            finished = _finish_photos(ctx, engine, actor, via)[1]  # (names: not audited)
            with engine.begin() as conn:
                plan = plan_erasure(conn, target)
                if plan.empty:
                    raise NothingToErase(f"{target} holds no personal data any more")
                if expected is not None and plan.fingerprint != expected:
                    raise PlanChanged(f"what {target} holds changed since it was shown: "
                                      f"nothing was erased; look at it again")
                _refuse_lost_lines(conn, entries, ledger)
                rows = apply_plan(conn, plan)
                pending = note_pending(ctx.instance_path, plan)
                record = ledger.append(plan.kind, plan.guest_ids, plan.registration_ids,
                                       plan.identifiers)
                advance_mark(conn, record["seq"])
        except ErasureError:
            raise
        except Exception as exc:
            _failed(ctx, engine, target, actor, via, str(exc) if isinstance(exc, BackupError)
                    else f"{type(exc).__name__} (nothing was changed)")
            if isinstance(exc, BackupError):
                raise
            # the database refused it (a constraint, a trigger, a lost connection): one
            # line for the command and the page, the details in the log (a traceback
            # before, and an error page)
            log.warning("the erasure of %s failed", target, exc_info=True)
            raise BackupError(f"nothing was erased: the database refused the change "
                              f"({type(exc).__name__})") from None
        # still held until the audit entry is written: a restore replacing this
        # database in between set its audit trail aside without that entry
        result = _committed(ctx, engine, ledger, storages, ErasureResult(
            plan, rows, record["seq"], warnings=warnings), target, actor, via, pending)
        result.warnings += finished
        return result


def _refuse_lost_lines(conn: Connection, entries: list, ledger: ErasureLedger) -> None:
    """A mark past the ledger's last line: this erasure's line would take the number
    of a lost one, and hide that it was lost for good. The ledger is read again
    first: an erasure may have added a line since it was collected."""
    if lost_lines(conn, entries) and (gap := lost_lines(conn, list(ledger.entries()))):
        raise lost_lines_error(gap, "nothing was erased")


def _committed(ctx: BackupContext, engine: Engine, ledger: ErasureLedger, storages: list[Any],
               result: ErasureResult, target: Target, actor: str | None, via: str,
               pending: str | None) -> ErasureResult:
    """After the commit: the photos deleted, the browse copies and SQLite's log
    seen to, the ledger published; the audit entry written whatever happens."""
    plan, photo_problems, done = result.plan, [], False
    try:
        result.photos_deleted = delete_photos(ctx.settings.upload_folder, plan.photos,
                                              photo_problems)
        result.warnings += _after_commit(ctx, engine, via, pending)
        _publish(ledger, storages, result)
        done = True
    finally:
        message = [f"ledger line {result.seq}", f"{result.photos_deleted} photo(s) deleted"]
        if target.kind == "retention":
            message.insert(0, f"legal retention (stays ended before {target.before})")
        if photo_problems:  # photo names stay out of the audit log
            message.append(f"{len(photo_problems)} photo(s) to delete by hand")
        if not done:
            message.append("cut off after its commit (the erasure stands): run manage.py "
                           "erasure-ledger apply to finish it")
        quietly("an erasure", ctx.audit.record, engine, "erase", "ok", actor=actor, via=via,
                target=plan.label, rows=result.rows, message="; ".join(message + result.warnings))
        result.warnings += photo_problems
    return result


def _after_commit(ctx: BackupContext, engine: Engine, via: str,
                  pending: str | None) -> list[str]:
    """The photos' record taken out of the pending ones, the archives open in browse
    sessions erased too (idle ones dropped), and SQLite's write-ahead log emptied;
    what went wrong, as warnings."""
    from guest_backup.ops.browse_erasures import after_erasure

    warnings = []
    try:
        if pending is not None:
            pending_photos(ctx.instance_path, drop=pending)
    except OSError as exc:
        warnings.append(f"{PENDING_NAME} in the instance folder cannot be written "
                        f"({exc.strerror}): the next erasure looks for these photos again")
    warnings += after_erasure(ctx, engine, via)
    try:
        checkpoint(engine)
    except Exception as exc:
        log.warning("the SQLite checkpoint after an erasure failed", exc_info=True)
        warnings.append(f"the database's write-ahead log could not be emptied "
                        f"({type(exc).__name__}): the erased values stay in it until the "
                        f"next checkpoint")
    return warnings


def _failed(ctx: BackupContext, engine: Engine, target: Target, actor: str | None, via: str,
            message: str) -> None:
    quietly("a failed erasure", ctx.audit.record, engine, "erase", "failed", actor=actor,
            via=via, target=str(target)[:255], message=message)


def _publish(ledger: ErasureLedger, storages: list[Any], result: ErasureResult) -> None:
    try:
        publish(ledger, storages)
    except (BackupError, StorageError) as exc:
        result.warnings.append(f"the erasure ledger could not be copied to every storage "
                               f"({exc}); the erasure stands: run erasure-ledger publish")


@dataclass
class Finished:
    """What :func:`finish_pending` did."""

    photos: int = 0  # photos of erased guests deleted
    copies: list[str] = field(default_factory=list)  # storages whose ledger copy was behind
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> list[str]:
        return ([f"finished an erasure cut off after its commit: {self.photos} photo(s) "
                 f"deleted"] if self.photos else []) + (
            [f"the erasure ledger copied to {', '.join(self.copies)}"] if self.copies else [])


def finish_pending(ctx: BackupContext, engine: Engine, *, actor: str | None, via: str,
                   locked: bool = False) -> Finished:
    """What erasures cut off after their commit left undone (also what follows
    ``erasure-ledger apply``): their photos deleted (under the database's lock,
    unless the caller holds it: ``locked``), the browse copies and SQLite's log
    seen to, every storage's copy of the ledger brought up to the local file.
    Never raises for what it cannot do: those are warnings."""
    from guest_backup.errors import BackupBusy

    done = Finished()
    try:
        with contextlib.nullcontext() if locked else database_lock(ctx, engine, ERASE_WAIT):
            done.photos, done.warnings = _finish_photos(ctx, engine, actor, via)
    except BackupBusy:
        done.warnings.append("a restore or an erasure holds the database: photos left by an "
                             "erasure cut off are deleted by the next one")
    done.warnings += _after_commit(ctx, engine, via, None)
    try:
        done.copies = publish(ErasureLedger.in_folder(ctx.instance_path), ctx.storages())
    except (BackupError, StorageError) as exc:
        done.warnings.append(f"the erasure ledger could not be copied to every storage "
                             f"({exc}): run manage.py erasure-ledger publish")
    return done


def _finish_photos(ctx: BackupContext, engine: Engine, actor: str | None,
                   via: str) -> tuple[int, list[str]]:
    """The pending photos that no guest holds any more (the erasure committed)
    deleted, audited; those still held were a rolled-back erasure's. The caller
    holds the database's lock: no erasure is between its commit and its photos."""
    deleted, warnings = 0, []
    try:
        for record in pending_photos(ctx.instance_path):
            names = [n for n in record.get("photos", ()) if isinstance(n, str)]
            with engine.connect() as conn:
                held = photos_in_use(conn, names)
            gone = [n for n in names if n not in held]
            if gone:
                problems: list[str] = []
                count = delete_photos(ctx.settings.upload_folder, gone, problems)
                deleted, warnings = deleted + count, warnings + problems
                quietly("an erasure", ctx.audit.record, engine, "erase", "ok", actor=actor,
                        via=via, target=str(record.get("target"))[:255],
                        message=f"finished after it was cut off: {count} photo(s) deleted"
                        + (f"; {len(problems)} photo(s) to delete by hand" if problems else ""))
            pending_photos(ctx.instance_path, drop=record.get("id"))
    except OSError as exc:
        warnings.append(f"{PENDING_NAME} in the instance folder cannot be read or written "
                        f"({exc.strerror}): photos of an erasure cut off may be left")
    return deleted, warnings
