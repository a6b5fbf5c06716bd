"""Subject access (GDPR Art. 15): every registration and guest of one person, as
one JSON and one CSV file (mode 0600), and the archives that may still hold them.

A person is found by the e-mail of their registrations (trimmed, any case: then
every guest of those registrations comes too, the person registered them), or by
a guest's document number (without whitespace, any case: then those guests with
their registrations, not the other guests of those registrations). An archive
may hold them when its signed creation time is not before the first of their
records, or before an erasure of theirs: the erasure ledger's lines whose keyed
hash of the e-mail or document number is the request's (and not before the
erased records' creation, when known); archives are never edited. The audit
entry counts records; it names no one. The folder is 0700 (an existing one too).
"""

from __future__ import annotations

import csv
import io
import json
import os
import stat
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from guest_backup.archive.manifest import format_time, now_text, parse_time
from guest_backup.errors import BackupError
from guest_backup.ops.audit import quietly
from guest_backup.ops.context import BackupContext
from guest_backup.ops.erasure_sql import (REGISTRATION, TRIP, G, R, T, chunks, guest_rows,
                                          guests_with_document, registration_rows,
                                          registrations_with_email)
from guest_backup.ops.ledger import ErasureLedger
from guest_backup.ops.ledger_copies import collect
from guest_backup.ops.ledger_format import RECORD_FIELDS, created_text, keyed_hash
from guest_backup.ops.listing import recognised
from guest_backup.storages import StorageError

GUEST_FIELDS = ("id", "first_name", "last_name", "age_category", "document_type",
                "document_number", "document_photo", "gdpr_consent", "created_at")
CSV_FIELDS = ("registration_id", "trip_id", "trip_title", "trip_start_date", "trip_end_date",
              "email", "language", "status", "registration_created_at",
              *(f"guest_{name}" for name in GUEST_FIELDS))
#: an archive begun this soon after an erasure's ledger line (whole seconds, written
#: just before the erasure commits) may still have read the erased rows
SETTLE = timedelta(minutes=1)
ARCHIVES_NOTE = ("archives made after the person's first record may hold it, and so do those "
                 "made before an erasure of the person (erasures: when) until retention "
                 "removes them; archives are deleted by retention, never edited")


@dataclass(frozen=True)
class Erasure:
    """A ledger line naming the person: its number, its time and the first creation
    time of its records still known (None: not known, every older archive counts)."""

    seq: int
    time: datetime
    since: datetime | None

    def holds(self, created: datetime) -> bool:
        """Whether an archive created at ``created`` may hold the erased records."""
        return created <= self.time + SETTLE and (self.since is None or created >= self.since)

    def public(self) -> dict:
        return {"ledger_line": self.seq, "erased_at": format_time(self.time),
                "records_since": format_time(self.since)}


@dataclass
class AccessReport:
    json_path: Path
    csv_path: Path
    registrations: int
    guests: int
    archives: list[dict] = field(default_factory=list)
    erasures: list[Erasure] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # storages that could not be listed


def _text(value):
    return value.strftime("%Y-%m-%dT%H:%M:%S") if isinstance(value, datetime) else (
        value.isoformat() if hasattr(value, "isoformat") else value)


def _registrations(conn: Connection, ids: list[int]) -> list[dict]:
    query = (sa.select(R.id, R.email, R.language, R.status, R.created_at, T.id.label("trip_id"),
                       T.title, T.start_date, T.end_date)
             .select_from(REGISTRATION.outerjoin(TRIP, T.id == R.trip_id)))
    found = []
    for part in chunks(ids):
        for r in conn.execute(query.where(R.id.in_(part)).order_by(R.id)):
            found.append({"id": r.id, "trip": {"id": r.trip_id, "title": r.title,
                                               "start_date": _text(r.start_date),
                                               "end_date": _text(r.end_date)},
                          "email": r.email, "language": r.language, "status": r.status,
                          "created_at": _text(r.created_at), "guests": [],
                          "_created": r.created_at})
    return found


def _guests(conn: Connection, where) -> list[tuple[int, dict]]:
    columns = [G.registration_id] + [getattr(G, name) for name in GUEST_FIELDS]
    rows = conn.execute(sa.select(*columns).where(where).order_by(G.id))
    return [(g.registration_id, {name: _text(getattr(g, name)) for name in GUEST_FIELDS}
             | {"_created": g.created_at}) for g in rows]


def gather(conn: Connection, *, email: str | None = None,
           document: str | None = None) -> list[dict]:
    """The person's registrations, each with its guests (see the module)."""
    if (email is None) == (document is None):
        raise ValueError("a subject access names an e-mail address or a document number")
    if email is not None:
        ids = registrations_with_email(conn, email)
        guests = [g for part in chunks(ids) for g in _guests(conn, G.registration_id.in_(part))]
    else:
        guests = [g for part in chunks(guests_with_document(conn, document))
                  for g in _guests(conn, G.id.in_(part))]
        ids = sorted({rid for rid, _ in guests})
    registrations = _registrations(conn, ids)
    by_id = {r["id"]: r for r in registrations}
    for rid, guest in guests:
        by_id[rid]["guests"].append(guest)
    return registrations


def _utc(when: datetime) -> datetime:
    """In UTC, to the whole second (an archive's time): one made in that second may hold it."""
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).replace(microsecond=0)


def _first(registrations: list[dict]) -> datetime | None:
    rows = registrations + [g for r in registrations for g in r["guests"]]
    return min((_utc(x["_created"]) for x in rows if x["_created"]), default=None)


def _since(conn: Connection, key: bytes, entry: dict) -> datetime | None:
    """The first creation time of the line's records still at its ids (a row whose
    creation time's keyed hash the line keeps)."""
    times = []
    for record, rows in (("guest", guest_rows(conn, entry["guest_ids"])),
                         ("registration", registration_rows(conn, entry["registration_ids"]))):
        name = RECORD_FIELDS[record]
        kept = set(entry["hashes"].get(name, ()))
        times += [_utc(r.created_at) for r in rows if r.created_at is not None
                  and keyed_hash(key, name, created_text(r.created_at)) in kept]
    return min(times) if times else None


def erasures_of(ctx: BackupContext, conn: Connection, *, email: str | None = None,
                document: str | None = None, warn=lambda message: None) -> list[Erasure]:
    """The erasure ledger's lines (every copy merged, as a restore reads them) whose
    keyed hashes hold the e-mail or the document number (as :func:`gather` takes
    them). BackupError: no copy can be read or checked; ``warn``: one cannot."""
    field_name, value = ("email", email) if email is not None else ("document_number", document)
    ledger = ErasureLedger.in_folder(ctx.instance_path)
    try:
        storages = ctx.storages()
    except StorageError:  # (archives_holding says why)
        storages = [ctx.local()]
    found, key, wanted = [], None, None
    for entry in collect(ledger, storages, warn=warn):
        if key is None:  # a ledger with lines has its key (never made here)
            key = ledger.key(create=False)
            wanted = keyed_hash(key, field_name, value)
        if wanted in entry["hashes"].get(field_name, ()) and (when := parse_time(entry["time"])):
            found.append(Erasure(entry["seq"], when, _since(conn, key, entry)))
    return found


def archives_holding(ctx: BackupContext, since: datetime | None, erasures: list[Erasure] = ()
                     ) -> tuple[list[dict], list[str]]:
    """The recognised archives of every storage created at or after ``since`` (the
    first record still in the database), or before one of ``erasures`` (see
    :meth:`Erasure.holds`)."""
    if since is None and not erasures:
        return [], []

    def holds(created: datetime) -> bool:
        return (since is not None and created >= since) or any(e.holds(created) for e in erasures)

    found, problems = [], []
    try:
        storages = ctx.storages()
    except StorageError as exc:
        storages, problems = [ctx.local()], [str(exc)]
    for storage in storages:
        ahead: list = []  # dated in the future: they may hold the person all the same
        try:
            archives = recognised(ctx, storage, ahead)[0] + ahead
        except StorageError as exc:
            problems.append(str(exc))
            continue
        found += [{"name": a.name, "storage": storage.name, "url": storage.url,
                   "created_at": format_time(a.created)}
                  for a in archives if holds(a.created)]
    return found, problems


def _write(path: Path, data: bytes) -> None:
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def _csv(registrations: list[dict]) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(CSV_FIELDS)
    for r in registrations:
        trip = r["trip"]
        head = [r["id"], trip["id"], trip["title"], trip["start_date"], trip["end_date"],
                r["email"], r["language"], r["status"], r["created_at"]]
        for guest in r["guests"] or [{}]:
            writer.writerow(head + [guest.get(name) for name in GUEST_FIELDS])
    return text.getvalue().encode("utf-8")


def _paths(folder: Path) -> tuple[Path, Path]:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        base = f"subject-access-{stamp}" + (f"-{n}" if n > 1 else "")
        paths = folder / f"{base}.json", folder / f"{base}.csv"
        if not any(p.exists() for p in paths):
            return paths
    raise BackupError(f"{folder} holds too many subject access files of this second")


def private_folder(folder: Path) -> None:
    """Create ``folder`` 0700, or take an existing one only when it is a folder of
    ours that is exactly 0700 (BackupError otherwise: nothing is written there)."""
    try:
        try:
            folder.mkdir(parents=True, mode=0o700)
        except FileExistsError:
            st = folder.stat()
        else:
            os.chmod(folder, 0o700)  # whatever the umask
            return
    except OSError as exc:
        raise BackupError(f"the folder {folder} cannot be created ({exc.strerror})") from None
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISDIR(st.st_mode):
        raise BackupError(f"{folder} is not a folder")
    if mode != 0o700 or st.st_uid != os.geteuid():
        why = f"mode {mode:04o}, not 0700" if mode != 0o700 else "another user's"
        raise BackupError(f"the folder {folder} already exists and is not private ({why}): "
                          f"give a new folder (it is created 0700) or make this one 0700")


def subject_access(ctx: BackupContext, engine: Engine, *, output_dir: str | os.PathLike,
                   actor: str | None, via: str, email: str | None = None,
                   document: str | None = None) -> AccessReport:
    """Write the person's records to ``output_dir`` (JSON and CSV, 0600, in a 0700
    folder), with the archives that may hold them; audited."""
    folder = Path(output_dir)
    private_folder(folder)
    with engine.connect() as conn:
        registrations = gather(conn, email=email, document=document)
        try:
            erasures = erasures_of(ctx, conn, email=email, document=document,
                                   warn=(problems := []).append)
        except BackupError as exc:
            erasures, problems = [], [f"{exc}: the archives made before an erasure of this "
                                      f"person are not listed"]
    archives, unlisted = archives_holding(ctx, _first(registrations), erasures)
    try:
        json_path, csv_path = _paths(folder)
        document_json = {
            "generated_at": now_text(),
            "request": {"email": email} if email is not None else {"document_number": document},
            "registrations": [_public(r) for r in registrations],
            "erasures": [e.public() for e in erasures],
            "archives": archives,
            "archives_note": ARCHIVES_NOTE}
        _write(json_path, json.dumps(document_json, indent=2, ensure_ascii=False).encode())
        _write(csv_path, _csv(registrations))
    except OSError as exc:
        raise BackupError(f"the subject access files cannot be written to {folder} "
                          f"({exc.strerror})") from None
    guests = sum(len(r["guests"]) for r in registrations)
    quietly("a subject access", ctx.audit.record, engine, "subject-access", "ok", actor=actor,
            via=via, target=f"{len(registrations)} registrations, {guests} guests",
            rows=len(registrations) + guests,
            message=f"{len(archives)} archive(s) may hold them, {len(erasures)} erasure(s)")
    return AccessReport(json_path, csv_path, len(registrations), guests, archives, erasures,
                        problems + unlisted)


def _public(registration: dict) -> dict:
    """A registration without the internal keys (``_created``)."""
    out = {k: v for k, v in registration.items() if not k.startswith("_")}
    out["guests"] = [{k: v for k, v in g.items() if not k.startswith("_")}
                     for g in registration["guests"]]
    return out
