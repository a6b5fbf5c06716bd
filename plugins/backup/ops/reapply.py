"""Erasures again on a restored database: every ledger entry's rows are found and
anonymised with the statements of :mod:`guest_backup.ops.erasure_sql`, inside the
caller's transaction (PostgreSQL or SQLite).

Finding an entry's rows: the ledger line keeps the keyed hash of each erased
record's creation time (``created_at``: restores keep it; a selective restore
takes it as a row's identity), so a record is found at whatever id it has.

1. By the ids it names: a row there created before the erasure (ids are never the
   erased person's when made later: a sequence set back by an older restore)
   whose creation time is one the line keeps. A row that is merely erased proves
   nothing: another erased record may hold the id now (a restore of an older
   archive let ids be reused), with the erased person at another id.
2. When an id is missing or holds another record, streaming the table in
   batches: rows whose creation time's hash the line keeps. An ``email`` entry
   (a person, not records) also takes, at its ids and by hash, every
   registration of that e-mail made before the erasure (10 minutes' leeway for
   clocks), so a person who registered again afterwards keeps the new one.

A line written before creation times were kept, as before: at its ids, a row
created before the erasure that is already erased or has one of the line's
identifiers (e-mail, a guest's document number or name); else by hash, a guest
entry's guests whose document number (and registration e-mail) match, a
``registration`` or ``retention`` entry's registrations of that e-mail with a
guest of a matching document number, made before the erasure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable, Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from guest_backup.archive.manifest import TIME_FORMAT
from guest_backup.ops.erasure_sql import (G, GUEST, R, REGISTRATION, anonymise_guests,
                                          anonymise_registrations, close_emptied, erased_email,
                                          guest_is_erased, guest_not_erased, guest_rows,
                                          guests_of, registration_not_erased, registration_rows,
                                          stream)
from guest_backup.ops.ledger_format import RECORD_FIELDS, created_text, keyed_hash

#: clocks of the app and the database server may differ a little
LEEWAY = timedelta(minutes=10)


@dataclass(frozen=True)
class Leftover:
    """A record still holding personal data the ledger says was erased."""

    kind: str  # guest | registration
    id: int

    def __str__(self) -> str:
        return f"{self.kind} {self.id}"


@dataclass
class _Found:
    guests: set[int] = field(default_factory=set)
    registrations: set[int] = field(default_factory=set)  # erased whole
    touched: set[int] = field(default_factory=set)  # of guests erased one by one


def _key_of(ledger) -> bytes:
    return ledger if isinstance(ledger, bytes) else ledger.key(create=False)


def erased_present(conn: Connection, entries: Sequence[dict], ledger) -> list[Leftover]:
    """The guests and registrations on ``conn`` still holding personal data that
    the ledger says were erased (empty: nothing to re-apply)."""
    if not entries:
        return []
    return _left(conn, _resolve(conn, entries, _key_of(ledger)))


def reapply_checked(conn: Connection, entries: Sequence[dict], ledger, *,
                    erase: Callable[[dict], bool] | None = None
                    ) -> tuple[int, list[Leftover]]:
    """Erase again, on ``conn`` (inside the caller's transaction), the rows of every
    ledger entry (``collect()``'s list; ``ledger`` is the ErasureLedger or its key),
    and return how many erasures changed rows with what :func:`erased_present`
    would then find, on the rows found once: a restore whose ids differ matches by keyed hash, streaming the
    tables, and the rows it found are the ones to check (erasing only erases, so
    no other row can match afterwards; a second scan would miss a row whose erased
    values no longer lead to it but which still holds personal data). ``erase``:
    which entries to erase again (default: all); every entry's rows are checked."""
    if not entries:
        return 0, []
    founds = _resolve(conn, entries, _key_of(ledger))
    changed = sum(_erase(conn, found) for entry, found in zip(entries, founds)
                  if erase is None or erase(entry))
    return changed, _left(conn, founds)


def _erase(conn: Connection, found: "_Found") -> bool:
    """Anonymise one entry's rows; whether any changed."""
    changed = anonymise_registrations(conn, found.registrations)
    changed += anonymise_guests(conn, found.guests)
    changed += close_emptied(conn, found.touched)
    return changed > 0


def _left(conn: Connection, founds: Sequence["_Found"]) -> list[Leftover]:
    left: set[Leftover] = set()
    for found in founds:
        for g in guests_of(conn, found.registrations) + guest_rows(conn, found.guests):
            if not guest_is_erased(g):
                left.add(Leftover("guest", g.id))
        for r in registration_rows(conn, found.registrations):
            if r.email != erased_email(r.id):
                left.add(Leftover("registration", r.id))
        left.update(Leftover("registration", rid) for rid in _emptied(conn, found.touched))
    return sorted(left, key=lambda item: (item.kind, item.id))


def _emptied(conn: Connection, registration_ids: Iterable[int]) -> list[int]:
    """Those of these registrations with no guest holding personal data, whose
    e-mail is still there."""
    ids = sorted(set(registration_ids))
    if not ids:
        return []
    holds = sa.exists().where(G.registration_id == R.id, guest_not_erased())
    return list(conn.execute(sa.select(R.id).where(
        R.id.in_(ids), registration_not_erased(), ~holds)).scalars())


def _until(entry: dict) -> datetime:
    return datetime.strptime(entry["time"], TIME_FORMAT) + LEEWAY


def _before(when: datetime | None, until: datetime) -> bool:
    return when is None or when.replace(tzinfo=None) <= until


def _wanted(entry: dict, field_name: str) -> set[str]:
    return set(entry["hashes"].get(field_name, ()))


def _guest_hashes(key: bytes, g) -> set[str]:
    return {keyed_hash(key, "document_number", g.document_number),
            keyed_hash(key, "name", f"{g.first_name} {g.last_name}"),
            keyed_hash(key, "email", g.email)}


def _resolve(conn: Connection, entries: Sequence[dict], key: bytes) -> list[_Found]:
    """Each entry's rows: by id, then by keyed hash for entries whose ids did not
    all lead to their rows."""
    found = [_Found() for _ in entries]
    unresolved = [i for i, entry in enumerate(entries) if not _by_ids(conn, entry, key, found[i])]
    if unresolved:
        _by_hashes(conn, [entries[i] for i in unresolved], key, [found[i] for i in unresolved])
    return found


def _prints(entry: dict) -> tuple[str, set[str]]:
    """The field and keyed hashes of the creation times of the records the entry
    names (none in a line written before they were kept)."""
    field = RECORD_FIELDS["guest" if entry["kind"] == "guest" else "registration"]
    return field, _wanted(entry, field)


def _by_print(entry: dict) -> bool:
    """Whether the entry's records are found by their creation times alone: every
    kind but ``email`` (every registration of an address), in newer lines."""
    return entry["kind"] != "email" and bool(_prints(entry)[1])


def _is_record(key: bytes, entry: dict, row, erased: bool,
               mine: Callable[[], set[str]]) -> bool:
    """Whether ``row``, at one of the ids the entry names, is a record it erased:
    created before the erasure, with the creation time the line keeps (an e-mail
    entry: or that e-mail; a row already erased proves nothing, another erased
    record may hold the id now). In an older line, as before: already erased, or
    with one of its identifiers (else the scan by identifiers would take the same
    person's other records on every restore)."""
    if not _before(row.created_at, _until(entry)):
        return False
    field, prints = _prints(entry)
    if prints and keyed_hash(key, field, created_text(row.created_at)) in prints:
        return True
    if _by_print(entry):
        return False
    wanted = set().union(*(values for name, values in entry["hashes"].items()
                           if name not in RECORD_FIELDS.values()))
    return not wanted or (erased and not prints) or bool(mine() & wanted)


def _by_ids(conn: Connection, entry: dict, key: bytes, found: _Found) -> bool:
    """Fill ``found`` from the ids the entry names; whether all were its rows."""
    if entry["kind"] == "guest":
        for g in guest_rows(conn, entry["guest_ids"]):
            if _is_record(key, entry, g, guest_is_erased(g), lambda g=g: _guest_hashes(key, g)):
                found.guests.add(g.id)
                found.touched.add(g.registration_id)
        return len(found.guests) == len(set(entry["guest_ids"]))
    guests: dict[int, list] = {}
    for g in guests_of(conn, entry["registration_ids"]):
        guests.setdefault(g.registration_id, []).append(g)
    for r in registration_rows(conn, entry["registration_ids"]):
        if _is_record(key, entry, r, r.email == erased_email(r.id),
                      lambda r=r: {keyed_hash(key, "email", r.email)}.union(
                          *(_guest_hashes(key, g) for g in guests.get(r.id, ())))):
            found.registrations.add(r.id)
    return len(found.registrations) == len(set(entry["registration_ids"]))


def _by_hashes(conn: Connection, entries: Sequence[dict], key: bytes,
               found: Sequence[_Found]) -> None:
    """The rows of these entries found by keyed hash, streaming the tables: by
    creation time (:func:`_by_print`), else by document number or e-mail."""
    by_document: dict[str, list[int]] = {}
    by_email: dict[str, list[int]] = {}
    by_print: dict[str, list[int]] = {}
    for i, entry in enumerate(entries):
        for value in _prints(entry)[1]:
            by_print.setdefault(value, []).append(i)
        if _by_print(entry):
            continue
        index, field_name = ((by_document, "document_number") if entry["kind"] == "guest"
                             else (by_email, "email"))
        for value in _wanted(entry, field_name):
            index.setdefault(value, []).append(i)
    if by_document or any(entries[i]["kind"] == "guest" for ids in by_print.values()
                          for i in ids):
        _guests_by_hash(conn, entries, key, found, by_document, by_print)
    if by_email or any(entries[i]["kind"] != "guest" for ids in by_print.values()
                       for i in ids):
        _registrations_by_hash(conn, entries, key, found, by_email, by_print)


def _guests_by_hash(conn, entries, key, found, by_document, by_print) -> None:
    query = (sa.select(G.id, G.registration_id, G.document_number, G.created_at, R.email)
             .select_from(GUEST.join(REGISTRATION, R.id == G.registration_id))
             .where(guest_not_erased()))
    field = RECORD_FIELDS["guest"]
    for rows in stream(conn, query, G.id):
        for g in rows:
            printed = keyed_hash(key, field, created_text(g.created_at)) if by_print else ""
            for i in by_print.get(printed, ()):
                if entries[i]["kind"] == "guest":
                    found[i].guests.add(g.id)
                    found[i].touched.add(g.registration_id)
            if not by_document:
                continue
            for i in by_document.get(keyed_hash(key, "document_number", g.document_number), ()):
                emails = _wanted(entries[i], "email")
                if _before(g.created_at, _until(entries[i])) and (
                        not emails or keyed_hash(key, "email", g.email) in emails):
                    found[i].guests.add(g.id)
                    found[i].touched.add(g.registration_id)


def _registrations_by_hash(conn, entries, key, found, by_email, by_print) -> None:
    candidates: dict[int, set[int]] = {}
    query = sa.select(R.id, R.email, R.created_at).where(registration_not_erased())
    field = RECORD_FIELDS["registration"]
    for rows in stream(conn, query, R.id):
        for r in rows:
            printed = keyed_hash(key, field, created_text(r.created_at)) if by_print else ""
            for i in by_print.get(printed, ()):
                if entries[i]["kind"] != "guest":
                    found[i].registrations.add(r.id)
            if not by_email:
                continue
            for i in by_email.get(keyed_hash(key, "email", r.email), ()):
                if _before(r.created_at, _until(entries[i])):
                    candidates.setdefault(i, set()).add(r.id)
    for i, ids in candidates.items():
        documents = _wanted(entries[i], "document_number")
        if entries[i]["kind"] == "email" or not documents:
            found[i].registrations |= ids
            continue
        for g in guests_of(conn, ids):
            if keyed_hash(key, "document_number", g.document_number) in documents:
                found[i].registrations.add(g.registration_id)
