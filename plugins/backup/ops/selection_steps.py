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
#: the audit log keeps this much of a message (``guest_registration.audit.MESSAGE_CHARS``;
#: the host is not imported below ``ops``): the facts go first, the id lists are shortened
AUDIT_CHARS = 500
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
    """Today's rows changed between the preview and the restore: nothing restored.
    ``reason`` says what changed (a page words it again, in its language); the
    message adds what it means, for the CLI and the audit log."""

    def __init__(self, reason: str, then: str = "preview again") -> None:
        super().__init__(f"{reason}: nothing was restored; {then}")
        self.reason = reason


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

    def describe(self, chars: int | None = None) -> str:
        """Every chosen id (the page and the CLI); with ``chars``, as runs of ids cut to
        ``chars`` and saying so: the page lets an admin tick thousands of ids, the
        audit message keeps 500 characters and its counts must not be cut off."""
        if chars is None:
            parts = [f"trip {i}" for i in self.trip_ids]
            parts += [f"registration {i}" for i in self.registration_ids]
            return ", ".join(parts)
        tokens = (runs("trip", [(i, i) for i in self.trip_ids])
                  + runs("registration", [(i, i) for i in self.registration_ids]))
        return shortened(tokens, len(self.trip_ids) + len(self.registration_ids), chars)


def runs(table: str, pairs: list[tuple[int, int]], mapped: bool = False) -> list[str]:
    """``(id, id)`` or ``(old id, new id)`` pairs as runs (``registration 3-7``, ``9``,
    or mapped ``3-7→41-45``), the table named before the first: thousands of ids
    that follow each other take a few characters."""
    spans: list[list[int]] = []
    for old, new in sorted(pairs):
        if spans and old == spans[-1][1] + 1 and new == spans[-1][3] + 1:
            spans[-1][1], spans[-1][3] = old, new
        else:
            spans.append([old, old, new, new])

    def span(a: int, b: int) -> str:
        return str(a) if a == b else f"{a}-{b}"
    tokens = [span(a, b) + (f"→{span(c, d)}" if mapped else "") for a, b, c, d in spans]
    if tokens:
        tokens[0] = f"{table} {tokens[0]}"
    return tokens


def shortened(tokens: list[str], count: int, chars: int, noun: str = "ids") -> str:
    """``tokens`` joined, or as many as fit in ``chars`` followed by how many ids there
    are in all and that the list is shortened (a one-line message stays one line
    of bounded length)."""
    text = ", ".join(tokens)
    if len(text) <= chars:
        return text
    tail = f"… ({count} {noun} in all, list shortened)"
    kept: list[str] = []
    for token in tokens:
        if len(", ".join(kept + [token, tail])) > chars:
            break
        kept.append(token)
    return ", ".join(kept + [tail])[:max(chars, 0)]


def failure_line(selection: Selection, reason: str, chars: int = AUDIT_CHARS) -> str:
    """The audit message of a failed restore: the reason first and whole (only a
    reason longer than most of the message is cut), then the chosen ids shortened
    to what is left."""
    if len(reason) > chars - 80:
        reason = reason[:chars - 81] + "…"
    head = f"{reason}; chosen "
    return head + selection.describe(chars - len(head))


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

    def summary(self, chars: int = AUDIT_CHARS) -> str:
        """One line without personal data (ids and counts only): the audit message,
        within ``chars``. The counts come first and whole; the chosen ids and the new
        ids share what is left, shortened (and saying so) when they do not fit."""
        counts = self.counts()

        def line(action: str) -> str:
            c = counts[action]
            return (f"{c['trip']} trips, {c['registration']} registrations, "
                    f"{c['guest']} guests")
        head = (f"inserted {line('insert')}; overwrote {line('overwrite')}; left "
                f"{line('leave')}; erased left out {counts['erased']['registration']} "
                f"registrations, {counts['erased']['guest']} guests; chosen ")
        mapping = self.mapping()
        mapped = [t for table, ids in mapping.items()
                  for t in runs(table, [(int(o), n) for o, n in ids.items()], mapped=True)]
        sep = "; new ids: "
        room = chars - len(head) - (len(sep) if mapped else 0)
        chosen = self.selection.describe(max(room // 2, room - len(", ".join(mapped))))
        text = head + chosen
        if mapped:
            moved = sum(len(ids) for ids in mapping.values())
            text += sep + shortened(mapped, moved, chars - len(text) - len(sep), "new ids")
        return text[:chars]
