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
keyed hashes of the e-mail, document numbers and names only): a ledger that
cannot be written leaves the database as it was. After the commit the ledger is
published to every storage (a failure is reported; the erasure stands), then
the photo files are deleted, then the audit entry is written (no personal data:
``guest 7``, ``registration 3``, ``3 registrations``).

What an erasure will change is found first, changing nothing
(:mod:`guest_backup.ops.erasure_plan`). :func:`reapply_checked` and
:func:`erased_present` (in
:mod:`guest_backup.ops.reapply`) run the same statements on a restored database.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection, Engine

from guest_backup.errors import BackupError
from guest_backup.ops.audit import quietly
from guest_backup.ops.context import BackupContext
from guest_backup.ops.erasure_mark import ERASE_WAIT, advance_mark, database_lock
from guest_backup.ops.erasure_plan import (ErasureError, ErasurePlan, NotFound,  # noqa: F401
                                           NothingToErase, PlanChanged, Target,
                                           plan_erasure)
from guest_backup.ops.erasure_sql import (ERASED, anonymise_guests, anonymise_registrations,
                                          close_emptied)
from guest_backup.ops.ledger import ErasureLedger, LedgerBroken
from guest_backup.ops.ledger_copies import collect, publish
from guest_backup.ops.reapply import Leftover, erased_present, reapply_checked  # noqa: F401
from guest_backup.storages import StorageError

log = logging.getLogger(__name__)

__all__ = ["ERASE_WAIT", "ERASED", "ErasureError", "ErasurePlan", "ErasureResult", "Leftover",
           "NotFound", "NothingToErase", "PlanChanged", "Target", "erase", "erased_present",
           "plan_erasure", "reapply_checked"]


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
        collect(ledger, storages, warn=warnings.append)
    except BackupError as exc:
        _failed(ctx, engine, target, actor, via, f"the erasure ledger: {exc}")
        kind = LedgerBroken if isinstance(exc, LedgerBroken) else BackupError
        raise kind(f"nothing was erased: {exc}") from None
    with contextlib.ExitStack() as held:
        try:  # one at a time, and never while a restore loads this database (exclusive)
            held.enter_context(database_lock(ctx, engine, ERASE_WAIT))
            with engine.begin() as conn:
                plan = plan_erasure(conn, target)
                if plan.empty:
                    raise NothingToErase(f"{target} holds no personal data any more")
                if expected is not None and plan.fingerprint != expected:
                    raise PlanChanged(f"what {target} holds changed since it was shown: "
                                      f"nothing was erased; look at it again")
                rows = apply_plan(conn, plan)
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
        return _committed(ctx, engine, ledger, storages, ErasureResult(
            plan, rows, record["seq"], warnings=warnings), target, actor, via)


def _committed(ctx: BackupContext, engine: Engine, ledger: ErasureLedger, storages: list[Any],
               result: ErasureResult, target: Target, actor: str | None,
               via: str) -> ErasureResult:
    """After the commit: the ledger published, the photos deleted, the audit entry."""
    plan = result.plan
    _publish(ledger, storages, result)
    notes, photo_problems = list(result.warnings), []
    result.photos_deleted = delete_photos(ctx.settings.upload_folder, plan.photos,
                                          photo_problems)
    result.warnings += photo_problems
    message = [f"ledger line {result.seq}", f"{result.photos_deleted} photo(s) deleted"]
    if target.kind == "retention":
        message.insert(0, f"legal retention (stays ended before {target.before})")
    if photo_problems:  # photo names stay out of the audit log
        message.append(f"{len(photo_problems)} photo(s) to delete by hand")
    quietly("an erasure", ctx.audit.record, engine, "erase", "ok", actor=actor, via=via,
            target=plan.label, rows=result.rows, message="; ".join(message + notes))
    return result


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


def delete_photos(folder: str, names: list[str], warnings: list[str]) -> int:
    """Delete these document photos (names relative to the upload folder, never a
    file outside it); the number deleted. What cannot be deleted is a warning."""
    deleted, root = 0, Path(folder).resolve()
    for name in names:
        path = (root / name).resolve()
        if root not in path.parents:
            warnings.append(f"the document photo {name!r} is not inside the upload folder: "
                            f"delete it by hand")
            continue
        try:
            path.unlink()
            deleted += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            warnings.append(f"the document photo {name!r} could not be deleted "
                            f"({exc.strerror}): delete it by hand")
    return deleted
