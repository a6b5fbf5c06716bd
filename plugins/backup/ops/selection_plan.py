"""The preview: how :func:`plan_selection` decides, row by row:
trips first (a registration needs its trip's id in the live database), then the
registrations in batches (a whole trip is streamed by id, never loaded at once),
each batch with its guests. See :mod:`guest_backup.ops.selection` for the rules."""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from guest_backup.archive.format import PHOTO_NAME_RE
from guest_backup.ops.erasure_sql import BATCH, erased_email, guest_is_erased, stream
from guest_backup.ops.reapply import erased_present
from guest_backup.ops.selection_steps import (Plan, Selection, SelectionError, Step, runs,
                                              shortened)
from guest_backup.ops.selection_rows import (PARENT, UP, Tables, changed_fields, check_fit,
                                             copies, fingerprint, issued_up_to, new_ids,
                                             record_key, same_record)

PENDING = -1  # the target id of a row whose new id is drawn at the end
NEW_ID = ("id-taken", "id-ahead")  # the reasons a row comes back with a new id

#: the unknown ids a refusal lists (the rest are counted)
ID_CHARS = 200


def plan_selection(source_engine: Engine, live_engine: Engine, selection: Selection,
                   erased=None, *, photo_present: Callable[[str], bool] | None = None) -> Plan:
    """The preview of restoring ``selection`` from ``source_engine`` (the archive's
    scratch database) into ``live_engine``. ``erased`` is the erasure ledger to
    apply (:func:`~guest_backup.ops.finishing.erasures_for`); ``photo_present``
    says whether a photo file is still in the upload folder. On PostgreSQL the
    new ids of the mapping are drawn from the sequences (gaps, never clashes)."""
    if source_engine.dialect.name != live_engine.dialect.name:
        raise SelectionError(f"the archive is {source_engine.dialect.name}, the live "
                             f"database {live_engine.dialect.name}")
    plan = Plan(selection, source=source_engine)
    _build(plan, source_engine, live_engine, erased, photo_present)
    return plan


def _build(plan: Plan, source: Engine, live: Engine, erasures,
           photo_present: Callable[[str], bool] | None) -> None:
    with source.connect() as src, live.connect() as dst:
        planner = _Planner(plan, src, dst, Tables.reflect(src, dst), photo_present)
        planner.erased_guests, planner.erased_registrations = _ledger(src, erasures)
        planner.run()
        dst.commit()  # PostgreSQL: the ids drawn from sequences (nothing else was written)


def _ledger(src: Connection, erasures) -> tuple[set[int], set[int]]:
    """The archive's rows the ledger says were erased and that still hold data
    there (a scratch copy loaded with the ledger re-applied holds none: those rows
    are recognised as erased by their values)."""
    if erasures is None or not getattr(erasures, "entries", None):
        return set(), set()
    left = erased_present(src, erasures.entries, erasures.ledger)
    return ({x.id for x in left if x.kind == "guest"},
            {x.id for x in left if x.kind == "registration"})


class _Planner:
    def __init__(self, plan: Plan, src: Connection, dst: Connection, tables: Tables,
                 photo_present) -> None:
        self.plan, self.src, self.dst, self.tables = plan, src, dst, tables
        self.photo_present = photo_present
        self.erased_guests: set[int] = set()
        self.erased_registrations: set[int] = set()
        self.target: dict[str, dict[int, int | None]] = {"trip": {}, "registration": {}}
        self.seen_guests: set[int] = set()
        self.names: dict[int, str] = {}  # photo names of the batch's inserted guests
        self.linked: set[str] = set()  # photo names a restored guest links (the whole plan)
        self.issued: dict[str, int | None] = {}  # issued_up_to, per table
        #: today's ids of the rows found (never found twice); the archive ids found
        self.claimed: dict[str, set[int]] = {"trip": set(), "registration": set(), "guest": set()}
        self.found: dict[str, set[int]] = {"trip": set(), "registration": set(), "guest": set()}

    def run(self) -> None:
        sel = self.plan.selection
        explicit = self.tables.rows_by_id(self.src, "registration", sel.registration_ids)
        _require(sel.registration_ids, explicit, "registration")
        trips = self.tables.rows_by_id(
            self.src, "trip", set(sel.trip_ids) | {r.trip_id for r in explicit.values()})
        _require(sel.trip_ids, trips, "trip")
        for trip_id in sorted(trips):
            self._trip(trips[trip_id])
        for batch in self._registrations(explicit):
            self._batch(batch)
        self._check_overwrites()
        self._draw_new_ids()

    def _registrations(self, explicit: dict) -> Iterator[list]:
        table = self.tables.tables["registration"]
        for trip_id in self.plan.selection.trip_ids:
            yield from stream(self.src, self.tables.select("registration").where(
                table.c.trip_id == trip_id), table.c.id, BATCH)
        chosen = set(self.plan.selection.trip_ids)
        rest = [explicit[i] for i in sorted(explicit) if explicit[i].trip_id not in chosen]
        for start in range(0, len(rest), BATCH):
            yield rest[start:start + BATCH]

    def _add(self, step: Step, label: str, live_row, row=None) -> Step:
        if step.action != "erased":
            step.label, step.live = label, fingerprint(live_row)
        if step.action in ("insert", "overwrite"):  # a value today's column cannot hold
            columns = (self.tables.compared(step.table) if step.action == "overwrite" else
                       [c for c in self.tables.columns[step.table] if c != "document_photo"])
            check_fit(self.tables, step.table, step.id, row._mapping, columns)
        self.plan.steps.append(step)
        return step

    def _lookup(self, name: str, rows: list) -> dict:
        """Today's row each archive row is compared with: the one with its id; when
        that one does not hold the record, the row holding it under another id (a
        restore of it before, its id taken), so it is not brought back twice."""
        live = self.tables.rows_by_id(self.dst, name, [r.id for r in rows])
        column, wanted = PARENT[name], {}
        for r in rows:
            parent = self.target[UP[name]][getattr(r, column)] if column else None
            if parent != PENDING and same_record(name, r, live.get(r.id), parent):
                self.claimed[name].add(r.id)
            elif not column or getattr(r, column) in self.found[UP[name]]:
                wanted[r.id] = record_key(name, r, parent)  # (its parent is there today)
        live.update(copies(self.dst, self.tables, name, wanted, self.claimed[name]))
        return live

    def _found(self, step: Step, live_row) -> int:
        """Today's id of an existing row; one found under another id is mapped there."""
        self.found[step.table].add(step.id)
        if live_row.id != step.id:
            step.new_id = live_row.id
        return live_row.id

    def _place(self, name: str, row, live_row, parent_target: int | None) -> tuple[str, str]:
        """(action, reason) for a row that is not erased. A missing row keeps its id
        only if this database's sequence has handed it out: an id beyond (an archive
        of a later timeline, or a forged 2147483647) would move the sequence there
        and sign-ups would draw the ids being restored, or none at all."""
        if parent_target != PENDING and same_record(name, row, live_row, parent_target):
            return "leave", "exists"
        if live_row is not None:
            return "insert", "id-taken"
        if name not in self.issued:
            self.issued[name] = issued_up_to(self.dst, name)
        ahead = self.issued[name] is not None and row.id > self.issued[name]
        return "insert", "id-ahead" if ahead else "missing"

    def _trip(self, row) -> None:
        live_row = self._lookup("trip", [row]).get(row.id)
        action, reason = self._place("trip", row, live_row, None)
        step = Step("trip", row.id, action, "trip-exists" if action == "leave" else reason)
        self.target["trip"][row.id] = (self._found(step, live_row) if action == "leave" else
                                       PENDING if reason in NEW_ID else row.id)
        self._add(step, str(getattr(row, "title", "")), live_row, row)

    def _batch(self, rows: list) -> None:
        live_rows = self._lookup("registration", rows)
        steps = {r.id: self._registration(r, live_rows.get(r.id)) for r in rows}
        guests = list(self.tables.children(self.src, "guest", steps))
        live_guests = self._lookup("guest", guests)
        counts: dict[int, list[int]] = {}
        kept_photos = []
        for g in guests:
            step = self._guest(g, live_guests.get(g.id))
            tally = counts.setdefault(g.registration_id, [0, 0])
            tally[0] += 1
            tally[1] += step.action == "erased" and step.reason == "erased"
            if step.photo == "kept":
                kept_photos.append(step)
        self._photos_in_use(kept_photos)
        for reg_id, (total, erased) in counts.items():
            step = steps[reg_id]
            if total == erased and step.action in ("insert", "overwrite"):
                step.action, step.reason, step.label, step.fields = (
                    "erased", "all-guests-erased", "", [])
                self.target["registration"][reg_id] = None

    def _registration(self, row, live_row) -> Step:
        trip = self.target["trip"][row.trip_id]
        step = Step("registration", row.id, "erased", "erased", parent=row.trip_id,
                    target_parent=trip)
        erased = (row.id in self.erased_registrations or row.email == erased_email(row.id))
        action, reason = self._place("registration", row, live_row, trip)
        if action == "leave" and live_row.email == erased_email(live_row.id):
            erased = True
        if erased:
            self.target["registration"][row.id] = None
            return self._add(step, "", live_row)
        step.action, step.reason = action, reason
        target = PENDING if reason in NEW_ID else row.id
        if action == "leave":
            target = self._found(step, live_row)
            self._changed(step, row, live_row, self.plan.selection.overwrite_registration_ids)
        self.target["registration"][row.id] = target
        return self._add(step, row.email, live_row, row)

    def _guest(self, row, live_row) -> Step:
        self.seen_guests.add(row.id)
        parent = self.target["registration"][row.registration_id]
        step = Step("guest", row.id, "erased", "registration-erased",
                    parent=row.registration_id, target_parent=parent)
        if parent is None:
            return self._add(step, "", live_row)
        action, reason = self._place("guest", row, live_row, parent)
        if (row.id in self.erased_guests or guest_is_erased(row)
                or (action == "leave" and guest_is_erased(live_row))):
            step.reason = "erased"
            return self._add(step, "", live_row)
        step.action, step.reason = action, reason
        if action == "leave":
            self._found(step, live_row)
            self._changed(step, row, live_row, self.plan.selection.overwrite_guest_ids)
        elif getattr(row, "document_photo", None):
            step.photo = "kept" if self._photo_there(row.document_photo) else "missing"
            self.names[row.id] = row.document_photo
        return self._add(step, f"{row.first_name} {row.last_name}", live_row, row)

    def _changed(self, step: Step, row, live_row, overwrite: Iterable[int]) -> None:
        step.fields = changed_fields(self.tables.compared(step.table), row, live_row)
        if not step.fields:
            step.reason = "unchanged"
        elif step.id in overwrite:
            step.action, step.reason = "overwrite", "overwrite"
        else:
            step.reason = "changed"

    def _photos_in_use(self, steps: list[Step]) -> None:
        """A photo file another guest of today links, or another restored guest of
        this plan (an archive naming one file twice), is never linked to a restored
        one: one person's document photo on another's record, and erasing either
        deleting the file the other links."""
        if not steps:
            self.names.clear()
            return
        table = self.tables.tables["guest"]
        names = {self.names[s.id] for s in steps}
        used = set(self.dst.execute(sa.select(table.c.document_photo).where(
            table.c.document_photo.in_(names))).scalars())
        for step in steps:
            name = self.names[step.id]
            if name in used or name in self.linked:
                step.photo = "missing"
            else:
                self.linked.add(name)
        self.names.clear()

    def _photo_there(self, name: str) -> bool:
        return bool(self.photo_present and PHOTO_NAME_RE.match(name) and "/" not in name
                    and self.photo_present(name))

    def _check_overwrites(self) -> None:
        sel = self.plan.selection
        for ids, seen, what in ((sel.overwrite_guest_ids, self.seen_guests, "guest"),
                                (sel.overwrite_registration_ids,
                                 set(self.target["registration"]), "registration")):
            stray = [i for i in ids if i not in seen]
            if stray:
                raise SelectionError(f"overwrite {_ids(what, stray)}: not among the "
                                     f"selected rows of the archive")

    def _draw_new_ids(self) -> None:
        """New ids for the rows whose id is taken, then every child's parent."""
        for name in ("trip", "registration", "guest"):
            wanted = [s for s in self.plan.steps if s.table == name and s.reason in NEW_ID]
            avoid = {s.id for s in self.plan.steps if s.table == name and s.action == "insert"}
            for step, new in zip(wanted, new_ids(self.dst, self.tables, name, len(wanted), avoid)):
                step.new_id, step.live = new, None  # the new id must still be free
                if name in self.target:
                    self.target[name][step.id] = new
        for step in self.plan.steps:
            if step.table != "trip" and step.action != "erased":
                parent = "trip" if step.table == "registration" else "registration"
                step.target_parent = self.target[parent][step.parent]


def _require(wanted: Iterable[int], found: dict, what: str) -> None:
    missing = [i for i in wanted if i not in found]
    if missing:
        raise SelectionError(f"{_ids(what, missing)} is not in the archive")


def _ids(what: str, ids: list[int]) -> str:
    """``registration 3-7, 9``, shortened past ``ID_CHARS``: the message is one line
    (on the page, the CLI, the audit entry) however many ids were given."""
    return shortened(runs(what, [(i, i) for i in ids]), len(ids), ID_CHARS)


__all__ = ["plan_selection"]
