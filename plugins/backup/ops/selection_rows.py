"""Rows of a selective restore, on both databases: the three tables as both
databases have them (the columns they share, so a column added by a later
migration or a plugin is carried without naming it here), reading rows by id in
chunks, a row's fingerprint (how the apply sees that a row changed since the
preview), the same record found under another id, whether an archive's value
fits today's column, and new ids for rows whose id is taken.

SQLAlchemy Core on table names only; no host models (see ``ops`` layering).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterable, Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from guest_backup.errors import BackupError
from guest_backup.ops.erasure_sql import chunks
from guest_backup.ops.selection_steps import SelectionError

TABLES = ("trip", "registration", "guest")
#: the column tying a row to its parent (None: a trip has no parent)
PARENT = {"trip": None, "registration": "trip_id", "guest": "registration_id"}
#: the parent's table
UP = {"trip": None, "registration": "trip", "guest": "registration"}
#: what says that an id holds the same record (with the parent column)
IDENTITY = "created_at"
#: columns never compared nor overwritten: the key, the identity, and the photo
#: (photos are not in system archives, so today's photo name is kept)
FIXED = {"id", IDENTITY, "trip_id", "registration_id", "document_photo"}
#: what else a row must share with the archive's to be its record under another id
#: (one a selective restore brought back with a new id, its own being taken): the
#: creation time alone is shared by every row of an import in one transaction
#: (PostgreSQL's now()) or one second (SQLite's CURRENT_TIMESTAMP)
ALIKE = {"trip": ("title",), "registration": ("email",), "guest": ("first_name", "last_name")}
#: the creation times searched around one (SQLite compares them as text, whole
#: seconds and microseconds alike); the match itself is exact
SLACK = timedelta(seconds=1)


@dataclass
class Tables:
    """The live database's tables, each with the columns the archive has too."""

    tables: dict[str, sa.Table]
    columns: dict[str, list[str]]

    @classmethod
    def reflect(cls, source: Connection, live: Connection) -> "Tables":
        tables, columns = {}, {}
        for name in TABLES:
            try:  # columns only (a scratch copy has search indexes on expressions)
                mine = {c["name"]: c["type"] for c in sa.inspect(live).get_columns(name)}
                theirs = {c["name"] for c in sa.inspect(source).get_columns(name)}
            except sa.exc.NoSuchTableError:
                raise BackupError(f"the table {name} is missing in the archive or the "
                                  f"live database") from None
            shared = [c for c in mine if c in theirs]
            for needed in ("id", IDENTITY, PARENT[name]):
                if needed and needed not in shared:
                    raise BackupError(f"{name}.{needed} is missing in the archive")
            tables[name] = sa.Table(name, sa.MetaData(), *[
                sa.Column(c, kind, primary_key=c == "id") for c, kind in mine.items()])
            columns[name] = shared
        return cls(tables, columns)

    def select(self, name: str) -> sa.Select:
        table, names = self.tables[name], self.columns[name]
        return sa.select(table.c.id, *[table.c[c] for c in names if c != "id"])  # id first

    def compared(self, name: str) -> list[str]:
        """The columns whose difference makes a row "changed" (and that overwrite sets)."""
        return [c for c in self.columns[name] if c not in FIXED]

    def rows_by_id(self, conn: Connection, name: str, ids: Iterable[int],
                   lock: str | None = None) -> dict[int, sa.Row]:
        """``{id: row}`` of these ids; ``lock`` (PostgreSQL) "share" or "update"
        takes row locks that never block a sign-up (FOR SHARE / FOR NO KEY UPDATE)."""
        table, found = self.tables[name], {}
        for part in chunks(ids):
            query = self.select(name).where(table.c.id.in_(part))
            if lock and conn.dialect.name == "postgresql":
                query = (query.with_for_update(read=True) if lock == "share"
                         else query.with_for_update(key_share=True))
            found.update((row.id, row) for row in conn.execute(query))
        return found

    def children(self, conn: Connection, name: str, parent_ids: Iterable[int]) -> Iterator[sa.Row]:
        """The rows of ``name`` whose parent is one of these ids, by id."""
        table = self.tables[name]
        for part in chunks(parent_ids):
            yield from conn.execute(self.select(name).where(
                table.c[PARENT[name]].in_(part)).order_by(table.c.id))


def same_record(name: str, archived: sa.Row, live: sa.Row | None, parent: int | None) -> bool:
    """Whether today's row with this id holds the archive's record: same parent
    (after remapping) and same creation time."""
    if live is None:
        return False
    if PARENT[name] and getattr(live, PARENT[name]) != parent:
        return False
    return _same_time(getattr(live, IDENTITY), getattr(archived, IDENTITY))


def _same_time(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return a.replace(tzinfo=None) == b.replace(tzinfo=None)


def record_key(name: str, row: sa.Row, parent: int | None) -> tuple | None:
    """What says that two rows hold one record whatever their ids: the parent
    (today's id), the creation time and :data:`ALIKE` (None: no creation time)."""
    stamp = getattr(row, IDENTITY)
    if stamp is None:
        return None
    return (parent, stamp.replace(tzinfo=None), *(getattr(row, c, None) for c in ALIKE[name]))


def copies(conn: Connection, tables: Tables, name: str, wanted: dict[int, tuple | None],
           taken: set[int]) -> dict[int, sa.Row]:
    """``{archive id: today's row}`` for the rows of ``wanted`` (``{archive id:
    record_key}``) that today's database holds under another id. A row of ``taken``
    (today's rows other rows of the plan are) is never chosen; each row found is
    chosen once, the lowest id first, and added to ``taken``. Read by parent and a
    window of creation times, compared here: bounded by the rows alike."""
    wanted = {i: k for i, k in wanted.items() if k is not None}
    if not wanted:
        return {}
    table, column = tables.tables[name], PARENT[name]
    stamps = [k[1] for k in wanted.values()]
    query = tables.select(name).where(table.c[IDENTITY].between(min(stamps) - SLACK,
                                                                max(stamps) + SLACK))
    parts = list(chunks({k[0] for k in wanted.values()})) if column else [None]
    alike: dict[tuple, list[sa.Row]] = {k: [] for k in wanted.values()}
    for part in parts:
        for row in conn.execute(query if part is None else query.where(table.c[column].in_(part))):
            key = record_key(name, row, getattr(row, column) if column else None)
            if key in alike and row.id not in taken:
                alike[key].append(row)
    found = {}
    for archive_id in sorted(wanted):
        rows = sorted((r for r in alike[wanted[archive_id]] if r.id not in taken),
                      key=lambda r: r.id)
        if rows:
            found[archive_id] = rows[0]
            taken.add(rows[0].id)
    return found


def check_fit(tables: Tables, name: str, archive_id: int, values, columns: Iterable[str]) -> None:
    """Refuse (:class:`SelectionError`) a row of the archive that today's column
    cannot hold as it is: a text longer than the column's length, or holding a NUL.
    PostgreSQL refuses both, SQLite stores both (a signed archive's scratch copy on
    SQLite holds any length): checked here alike, naming no value."""
    for column in columns:
        value, kind = values[column], tables.tables[name].c[column].type
        if value is None or not isinstance(kind, sa.String):
            continue
        limit = kind.length
        if not isinstance(value, str):
            why = "is not text"
        elif "\x00" in value:
            why = "holds a NUL character, which the live database does not store"
        elif limit and len(value) > limit:
            why = (f"is {len(value):,} characters long and the live database's column "
                   f"holds {limit:,}")
        else:
            continue
        raise SelectionError(f"{name} {archive_id} of the archive: its {column} {why}: it "
                             f"cannot be restored as it is; choose without the registration "
                             f"(or trip) holding it")


def changed_fields(columns: list[str], archived: sa.Row, live: sa.Row) -> list[str]:
    return [c for c in columns if getattr(archived, c) != getattr(live, c)]


def fingerprint(row: sa.Row | None) -> str | None:
    """A digest of every column of today's row (None: no row), compared at apply."""
    if row is None:
        return None
    text = repr(sorted((k, repr(v)) for k, v in row._mapping.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def new_ids(conn: Connection, tables: Tables, name: str, count: int,
            avoid: set[int]) -> list[int]:
    """``count`` ids no row has and no planned row takes. PostgreSQL: drawn from
    the table's sequence (never handed out again, so the preview's mapping holds
    at apply time even while sign-ups come in); SQLite: above the highest id."""
    if count <= 0:
        return []
    table = tables.tables[name]
    if conn.dialect.name == "postgresql":
        sequence = conn.execute(sa.text("SELECT pg_get_serial_sequence(:t, 'id')"),
                                {"t": name}).scalar()
        if sequence:
            return _drawn(conn, tables, name, sequence, count, avoid)
    top = conn.execute(sa.select(sa.func.max(table.c.id))).scalar() or 0
    start = max([top, *avoid]) + 1
    return list(range(start, start + count))


def _drawn(conn, tables: Tables, name: str, sequence: str, count: int,
           avoid: set[int]) -> list[int]:
    found: list[int] = []
    while len(found) < count:
        drawn = list(conn.execute(sa.text(
            "SELECT nextval(CAST(:s AS regclass)) FROM generate_series(1, :n)"),
            {"s": sequence, "n": count - len(found)}).scalars())
        taken = tables.rows_by_id(conn, name, drawn)
        found += [i for i in drawn if i not in avoid and i not in taken]
    return found


def issued_up_to(conn: Connection, name: str) -> int | None:
    """PostgreSQL: the highest id the table's sequence has handed out (0: none);
    None where ids come from no sequence (SQLite: above the highest id, which a
    huge id cannot exhaust)."""
    if conn.dialect.name != "postgresql":
        return None
    return conn.execute(sa.text(
        "SELECT COALESCE(pg_sequence_last_value(CAST(s.seq AS regclass)), 0) FROM "
        "(SELECT pg_get_serial_sequence(:t, 'id') AS seq) AS s WHERE s.seq IS NOT NULL"),
        {"t": name}).scalar()
