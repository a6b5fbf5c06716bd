"""What an erasure will change, found before anything is changed: the target
(a guest, a registration, an e-mail address's registrations, or registrations
past the legal retention), the rows and photos it touches, and the identifying
values whose keyed hashes go to the ledger (see :mod:`guest_backup.ops.erasure`).
The plan's photos are written to ``erasure-photos.pending`` before the commit and
taken out once deleted (:func:`note_pending`, :func:`delete_photos`)."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from sqlalchemy.engine import Connection, Engine

from guest_backup.errors import BackupError
from guest_backup.files import write_private
from guest_backup.ops.ledger_format import RECORD_FIELDS, created_text
from guest_backup.ops.erasure_sql import (R, erased_email, guest_is_erased, guest_rows, guests_of,
                                          overdue_query, registration_rows,
                                          registrations_with_email)

log = logging.getLogger(__name__)

#: the photos of erasures committed but not finished, in the instance folder
PENDING_NAME = "erasure-photos.pending"


class ErasureError(BackupError):
    """Nothing was changed: no such record, or nothing left to erase."""


class NotFound(ErasureError):
    """No guest, registration or e-mail address like that."""


class NothingToErase(ErasureError):
    """The records hold no personal data any more."""


class PlanChanged(ErasureError):
    """What would be erased is not what was shown and confirmed (a guest registered
    with the address since): nothing was erased."""


@dataclass(frozen=True)
class Target:
    """What to erase. ``str()`` of it never holds personal data."""

    kind: str  # guest | registration | email | retention
    id: int | None = None
    email: str | None = field(default=None, repr=False)
    before: date | None = None  # retention: stays that ended before this day
    limit: int = 200  # retention: registrations per erasure

    @classmethod
    def guest(cls, guest_id: int) -> "Target":
        return cls("guest", id=int(guest_id))

    @classmethod
    def registration(cls, registration_id: int) -> "Target":
        return cls("registration", id=int(registration_id))

    @classmethod
    def of_email(cls, address: str) -> "Target":
        return cls("email", email=address)

    @classmethod
    def retention(cls, before: date, limit: int = 200) -> "Target":
        return cls("retention", before=before, limit=limit)

    def __str__(self) -> str:
        if self.kind in ("guest", "registration"):
            return f"{self.kind} {self.id}"
        if self.kind == "email":
            return "the registrations of an e-mail address"
        return f"registrations whose stay ended before {self.before}"


@dataclass
class PlannedGuest:
    id: int
    registration_id: int
    age_category: str
    document_type: str
    photo: bool
    first_name: str = field(repr=False)
    last_name: str = field(repr=False)


@dataclass
class PlannedRegistration:
    id: int
    trip: str
    created_at: datetime | None
    closes: bool  # its e-mail goes
    email: str = field(repr=False)


@dataclass
class ErasurePlan:
    """What an erasure will change (nothing is changed to make it)."""

    target: Target
    guests: list[PlannedGuest]
    registrations: list[PlannedRegistration]
    photos: list[str] = field(repr=False)
    identifiers: dict[str, list[str]] = field(repr=False)

    @property
    def kind(self) -> str:
        return self.target.kind

    @property
    def label(self) -> str:
        """The audit target: ``guest 7``, ``registration 3``, ``3 registrations``."""
        if self.kind in ("guest", "registration"):
            return str(self.target)
        count = len(self.registrations)
        return f"{count} registration{'s' if count != 1 else ''}"

    @property
    def guest_ids(self) -> list[int]:
        return [g.id for g in self.guests]

    @property
    def registration_ids(self) -> list[int]:
        return [r.id for r in self.registrations]

    @property
    def closed(self) -> list[int]:
        """The registrations whose e-mail goes."""
        return [r.id for r in self.registrations if r.closes]

    @property
    def empty(self) -> bool:
        return not self.guests and not self.closed

    @property
    def fingerprint(self) -> str:
        """Which rows it changes, as a short digest: the page and the command's
        confirmation carry it, and :func:`~guest_backup.ops.erasure.erase` erases
        only when the plan it finds is still this one."""
        rows = [sorted(self.guest_ids), sorted(self.closed), sorted(self.registration_ids)]
        return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:32]


def plan_erasure(bind: Engine | Connection, target: Target) -> ErasurePlan:
    """What erasing ``target`` will change; NotFound when there is no such record."""
    if isinstance(bind, Connection):
        return _plan(bind, target)
    with bind.connect() as conn:
        return _plan(conn, target)


def _plan(conn: Connection, target: Target) -> ErasurePlan:
    record = "guest" if target.kind == "guest" else "registration"  # what the entry names
    if target.kind == "guest":
        rows = guest_rows(conn, [target.id])
        if not rows:
            raise NotFound(f"there is no guest {target.id}")
        registration_ids = [rows[0].registration_id]
        others = [g for g in guests_of(conn, registration_ids)
                  if g.id != target.id and not guest_is_erased(g)]
        guests, closes = [g for g in rows if not guest_is_erased(g)], not others
    else:
        registration_ids = _registration_ids(conn, target)
        guests = [g for g in guests_of(conn, registration_ids) if not guest_is_erased(g)]
        closes = True
    registrations = [PlannedRegistration(r.id, r.title or "", r.created_at,
                                         closes and r.email != erased_email(r.id), r.email)
                     for r in registration_rows(conn, registration_ids)]
    planned = [PlannedGuest(g.id, g.registration_id, g.age_category, g.document_type,
                            bool(g.document_photo), g.first_name, g.last_name) for g in guests]
    identifiers = {
        "email": sorted({r.email for r in registrations if r.email != erased_email(r.id)}),
        "document_number": [g.document_number for g in guests],
        "name": [f"{g.first_name} {g.last_name}" for g in guests],
        # the records themselves, by creation time (see ledger_format.RECORD_FIELDS)
        RECORD_FIELDS[record]: [created_text(r.created_at) for r in
                                (guests if record == "guest" else registrations)]}
    return ErasurePlan(target, planned, registrations,
                       [g.document_photo for g in guests if g.document_photo], identifiers)


def _registration_ids(conn: Connection, target: Target) -> list[int]:
    if target.kind == "registration":
        if not registration_rows(conn, [target.id]):
            raise NotFound(f"there is no registration {target.id}")
        return [target.id]
    if target.kind == "email":
        found = registrations_with_email(conn, target.email or "")
        if not found:
            raise NotFound("there is no registration with that e-mail address")
        return found
    if target.kind == "retention":
        query = overdue_query(target.before).order_by(R.id).limit(target.limit)
        return list(conn.execute(query).scalars())
    raise ValueError(f"an erasure is of a guest, registration, email or retention, "
                     f"not {target.kind!r}")


def pending_photos(instance_path: str, add: dict | None = None, drop: str | None = None) -> list:
    """The photos of erasures not finished (``erasure-photos.pending``, one record
    per erasure), with ``add`` written in or the record ``drop`` taken out; the
    file goes when none is left. OSError is the caller's."""
    path = Path(instance_path) / PENDING_NAME
    try:
        records = json.loads(path.read_bytes())
    except FileNotFoundError:
        records = []
    except ValueError:  # damaged: what it held cannot be known (a warning in the log)
        log.warning("%s is not readable JSON: it is replaced", path)
        records = []
    records = [r for r in records if isinstance(r, dict)] if isinstance(records, list) else []
    if add is None and drop is None:
        return records
    records = [r for r in records if r.get("id") != drop] + ([add] if add else [])
    if records:
        write_private(path, json.dumps(records).encode(), sync=True)
    else:
        path.unlink(missing_ok=True)
    return records


def note_pending(instance_path: str, plan: ErasurePlan) -> str | None:
    """Before the commit: the plan's photos, for a run after a kill to delete."""
    if not plan.photos:
        return None
    token = secrets.token_hex(8)
    record = {"id": token, "target": plan.label, "photos": list(plan.photos)}
    try:
        pending_photos(instance_path, add=record)
    except OSError as exc:
        raise BackupError(f"nothing was erased: the list of photos to delete "
                          f"({PENDING_NAME} in the instance folder) cannot be written "
                          f"({exc.strerror})") from None
    return token


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
