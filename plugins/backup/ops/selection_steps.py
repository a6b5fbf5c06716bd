"""The selective restore's values: what was chosen (:class:`Selection`), what is
done with each row of the archive (:class:`Step`) and the whole preview
(:class:`Plan`), JSON-able for the page and ``--dry-run``. The rules are in
:mod:`guest_backup.ops.selection`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from guest_backup.errors import BackupError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

ACTIONS = ("insert", "overwrite", "leave", "erased")
#: reason code → what it means (the page translates the codes; the CLI prints this)
REASONS = {
    "missing": "not in today's database: comes back with its id",
    "id-taken": "its id holds another record today: comes back with a new id",
    "id-ahead": "its id is beyond those this database has handed out: comes back with a new id",
    "unchanged": "exists today as in the archive",
    "changed": "exists today, changed since the archive (overwrite not chosen)",
    "overwrite": "exists today, changed since the archive: overwrite chosen",
    "trip-exists": "the trip exists today (trips are never overwritten)",
    "erased": "erased (the erasure ledger): never restored",
    "registration-erased": "its registration was erased: never restored",
    "all-guests-erased": "every guest of it was erased: never restored",
}
PHOTO_NOTES = {
    "kept": "had a document photo; the file is still in the upload folder and is linked again",
    "missing": "had a document photo; photos are not in system archives: restored without it",
}


class SelectionError(BackupError):
    """The selection cannot be planned (unknown ids, nothing chosen)."""


class SelectionChanged(BackupError):
    """Today's rows changed between the preview and the restore: nothing restored."""


@dataclass(frozen=True)
class Selection:
    """What to bring back: whole trips and/or registrations (archive ids), and the
    existing rows (archive ids) to overwrite with the archive's values."""

    trip_ids: tuple[int, ...] = ()
    registration_ids: tuple[int, ...] = ()
    overwrite_guest_ids: tuple[int, ...] = ()
    overwrite_registration_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("trip_ids", "registration_ids", "overwrite_guest_ids",
                     "overwrite_registration_ids"):
            object.__setattr__(self, name, tuple(sorted({int(i) for i in getattr(self, name)})))
        if not self.trip_ids and not self.registration_ids:
            raise SelectionError("choose a trip or at least one registration")

    def describe(self) -> str:
        parts = [f"trip {i}" for i in self.trip_ids]
        parts += [f"registration {i}" for i in self.registration_ids]
        return ", ".join(parts)


@dataclass(slots=True)  # a whole trip's plan holds one per row
class Step:
    """One row of the archive and what the restore does with it."""

    table: str          # trip | registration | guest
    id: int             # its id in the archive
    action: str         # insert | overwrite | leave | erased
    reason: str         # a key of REASONS
    new_id: int | None = None   # the id it gets when its own is taken
    parent: int | None = None   # the archive's parent id (trip, registration)
    target_parent: int | None = None  # the parent's id in the live database
    label: str = ""     # title, e-mail, name (empty for erased rows)
    fields: list[str] = field(default_factory=list)  # columns that differ from today
    photo: str | None = None    # a key of PHOTO_NOTES
    live: str | None = None     # fingerprint of today's row at that id (None: no row)

    @property
    def target(self) -> int:
        return self.new_id if self.new_id is not None else self.id

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("live")  # (the apply's check, not for people)
        data["why"] = REASONS[self.reason]
        if self.photo:
            data["photo_note"] = PHOTO_NOTES[self.photo]
        return data


@dataclass
class Plan:
    """The preview, and what :func:`apply_plan` does: nothing else."""

    selection: Selection
    steps: list[Step] = field(default_factory=list)
    #: the scratch database of the archive (rows are read from it again at apply)
    source: Engine | None = field(default=None, repr=False)
    #: the erasure ledger's last line when the plan was made (None: not known); the
    #: restore refuses the plan once the ledger has gone past it
    ledger_seq: int | None = None

    def of(self, action: str, table: str | None = None) -> list[Step]:
        return [s for s in self.steps if s.action == action and table in (None, s.table)]

    def counts(self) -> dict[str, dict[str, int]]:
        out = {a: {t: 0 for t in ("trip", "registration", "guest")} for a in ACTIONS}
        for step in self.steps:
            out[step.action][step.table] += 1
        return out

    def mapping(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {"trip": {}, "registration": {}, "guest": {}}
        for step in self.steps:
            if step.new_id is not None:
                out[step.table][str(step.id)] = step.new_id
        return out

    def to_dict(self) -> dict:
        """JSON-able: what the page and ``--dry-run`` show."""
        data = {action: [s.to_dict() for s in self.of(action)] for action in ACTIONS}
        data.update(selection=asdict(self.selection), mapping=self.mapping(),
                    counts=self.counts(),
                    photos=[{"guest": s.id, "new_id": s.new_id, "note": s.photo,
                             "text": PHOTO_NOTES[s.photo]} for s in self.steps if s.photo])
        return data

    def summary(self) -> str:
        """One line without personal data (ids and counts only): the audit message."""
        counts = self.counts()

        def line(action: str) -> str:
            c = counts[action]
            return (f"{c['trip']} trips, {c['registration']} registrations, "
                    f"{c['guest']} guests")
        mapped = [f"{t} {old}→{new}" for t, ids in self.mapping().items()
                  for old, new in ids.items()]
        if len(mapped) > 12:
            mapped = mapped[:12] + [f"… {len(mapped) - 12} more"]
        return (f"{self.selection.describe()}: inserted {line('insert')}; overwrote "
                f"{line('overwrite')}; left {line('leave')}; erased left out "
                f"{counts['erased']['registration']} registrations, "
                f"{counts['erased']['guest']} guests"
                + (f"; new ids: {', '.join(mapped)}" if mapped else ""))
