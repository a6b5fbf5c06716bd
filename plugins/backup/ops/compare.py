"""The difference between an archive (its scratch database) and the live
database for a trip, a registration or a page of search results: rows present
only in the archive (deleted since), only live (added since), and changed (which
fields). Both sides are streamed in id order and merged, so a trip of any size
is compared in bounded memory; only the first ``limit`` differences are kept,
every one is counted.

A row is the same record on both sides when the same id holds the same
identity: a trip its ``created_at``, a registration its ``trip_id`` and
``created_at``, a guest its ``registration_id`` and ``created_at``. Otherwise
the id was taken by another record: the archive's row counts as archive-only
and the live one as live-only (``id_taken``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Iterable, Iterator

from sqlalchemy import bindparam, text
from sqlalchemy.engine import Engine

from guest_backup.ops.browse_search import Search, search_guests

FIELDS = {
    "trip": ("title", "start_date", "end_date", "max_guests", "created_at"),
    "registration": ("trip_id", "email", "language", "status", "created_at"),
    "guest": ("registration_id", "first_name", "last_name", "age_category", "document_type",
              "document_number", "document_photo", "gdpr_consent", "created_at"),
}
IDENTITY = {"trip": ("created_at",), "registration": ("trip_id", "created_at"),
            "guest": ("registration_id", "created_at")}
KINDS = ("archive_only", "live_only", "changed", "same")
LIMIT = 500
FETCH = 2000


@dataclass
class Difference:
    table: str
    id: int
    kind: str                         # archive_only | live_only | changed
    archive: dict | None = None       # the row as the archive holds it
    live: dict | None = None          # the row as it is today
    fields: list[str] = field(default_factory=list)  # changed: which
    id_taken: bool = False            # the id holds another record on the other side

    def to_dict(self) -> dict:
        return {"table": self.table, "id": self.id, "kind": self.kind, "fields": self.fields,
                "id_taken": self.id_taken, "archive": _plain(self.archive),
                "live": _plain(self.live)}


@dataclass
class Comparison:
    scope: str                                       # "trip 3", "registration 7", "search"
    counts: dict = field(default_factory=lambda: {t: dict.fromkeys(KINDS, 0) for t in FIELDS})
    differences: list[Difference] = field(default_factory=list)
    truncated: bool = False                          # more differences than were kept
    limit: int = LIMIT

    def add(self, diff: Difference) -> None:
        self.counts[diff.table][diff.kind] += 1
        if len(self.differences) < self.limit:
            self.differences.append(diff)
        else:
            self.truncated = True

    def of(self, table: str, kind: str | None = None) -> list[Difference]:
        return [d for d in self.differences if d.table == table and kind in (None, d.kind)]

    def to_dict(self) -> dict:
        return {"scope": self.scope, "counts": self.counts, "truncated": self.truncated,
                "differences": [d.to_dict() for d in self.differences]}


def _plain(row: dict | None) -> dict | None:
    if row is None:
        return None
    return {k: v.isoformat() if isinstance(v, date) else v for k, v in row.items()}


def _same(table: str, a: dict, b: dict) -> bool:
    return all(_value(a[k]) == _value(b[k]) for k in IDENTITY[table])


def _value(v):
    return bool(v) if isinstance(v, bool) else v


def _select(table: str, where: str) -> str:
    alias = table[0]
    columns = ", ".join(f"{alias}.{c}" for c in ("id",) + FIELDS[table])
    joins = " JOIN registration r ON r.id = g.registration_id" if table == "guest" else ""
    return f"SELECT {columns} FROM {table} {alias}{joins} WHERE {where} ORDER BY {alias}.id"


def _stream(engine: Engine, sql: str, params: dict, expanding: tuple = ()) -> Iterator[dict]:
    """The rows in id order, fetched ``FETCH`` at a time (a server-side cursor on
    PostgreSQL)."""
    statement = text(sql)
    if expanding:
        statement = statement.bindparams(*(bindparam(n, expanding=True) for n in expanding))
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=FETCH).execute(
            statement, params)
        for row in result:
            yield dict(row._mapping)


def _merge(out: Comparison, table: str, archive: Iterable[dict], live: Iterable[dict]) -> None:
    """Both id-ordered streams walked together."""
    a_it, l_it = iter(archive), iter(live)
    a, b = next(a_it, None), next(l_it, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a["id"] < b["id"]):
            out.add(Difference(table, a["id"], "archive_only", archive=a))
            a = next(a_it, None)
        elif a is None or b["id"] < a["id"]:
            out.add(Difference(table, b["id"], "live_only", live=b))
            b = next(l_it, None)
        else:
            if not _same(table, a, b):
                out.add(Difference(table, a["id"], "archive_only", archive=a, id_taken=True))
                out.add(Difference(table, b["id"], "live_only", live=b, id_taken=True))
            else:
                changed = [k for k in FIELDS[table] if _value(a[k]) != _value(b[k])]
                if changed:
                    out.add(Difference(table, a["id"], "changed", a, b, changed))
                else:
                    out.counts[table]["same"] += 1
            a, b = next(a_it, None), next(l_it, None)


def _both(out: Comparison, table: str, archive: Engine, live: Engine, where: str,
          params: dict, expanding: tuple = ()) -> None:
    sql = _select(table, where)
    _merge(out, table, _stream(archive, sql, params, expanding),
           _stream(live, sql, params, expanding))


def compare_trip(archive: Engine, live: Engine, trip_id: int, limit: int = LIMIT) -> Comparison:
    """The trip itself, its registrations and their guests."""
    out, params = Comparison(f"trip {trip_id}", limit=limit), {"id": int(trip_id)}
    _both(out, "trip", archive, live, "t.id = :id", params)
    _both(out, "registration", archive, live, "r.trip_id = :id", params)
    _both(out, "guest", archive, live, "r.trip_id = :id", params)
    return out


def compare_registration(archive: Engine, live: Engine, registration_id: int,
                         limit: int = LIMIT) -> Comparison:
    """A registration and its guests."""
    out = Comparison(f"registration {registration_id}", limit=limit)
    params = {"id": int(registration_id)}
    _both(out, "registration", archive, live, "r.id = :id", params)
    _both(out, "guest", archive, live, "g.registration_id = :id", params)
    return out


def compare_guests(archive: Engine, live: Engine, guest_ids: Iterable[int],
                   registration_ids: Iterable[int] = (), scope: str = "search",
                   limit: int = LIMIT) -> Comparison:
    """These guests and registrations (by id, on both sides: primary-key look-ups)."""
    out = Comparison(scope, limit=limit)
    ids, regs = sorted({int(i) for i in guest_ids}), sorted({int(i) for i in registration_ids})
    if ids:
        _both(out, "guest", archive, live, "g.id IN :ids", {"ids": ids}, ("ids",))
    if regs:
        _both(out, "registration", archive, live, "r.id IN :ids", {"ids": regs}, ("ids",))
    return out


def compare_search(archive: Engine, live: Engine, search: Search,
                   limit: int = LIMIT) -> Comparison:
    """One page of a search, run on both sides: the guests either side finds up to
    the page's end (the smaller last id of a side that has more), and their
    registrations. The live side has no search indexes: it reads until it has
    found a page, once, when asked."""
    found_a, found_l = search_guests(archive, search), search_guests(live, search)
    ends = [p.rows[-1]["guest_id"] for p in (found_a, found_l) if p.next_after and p.rows]
    end = min(ends) if ends else None
    rows = [r for p in (found_a, found_l) for r in p.rows if end is None or r["guest_id"] <= end]
    return compare_guests(archive, live, [r["guest_id"] for r in rows],
                          [r["registration_id"] for r in rows], limit=limit)


def statuses(comparison: Comparison, table: str = "guest") -> dict[int, Difference]:
    """``{id: difference}`` of one table (an id not in it is the same today)."""
    return {d.id: d for d in comparison.of(table) if d.kind != "live_only"}


__all__ = ["Comparison", "Difference", "compare_guests", "compare_registration",
           "compare_search", "compare_trip", "statuses"]
