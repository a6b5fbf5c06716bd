"""Searching an archive's scratch database (or the live one, for a comparison):
guests by name, e-mail, document number, trip and registration date, one page
at a time by keyset (``guest.id > after ORDER BY guest.id LIMIT n``), never
loading everything.

A word of the search text matches the START of a first name, a last name, a
document number or an e-mail address (case-insensitive; on SQLite only ASCII
letters fold). Several words must all match a guest's names or document number.
Each way of matching is its own ``ORDER BY id LIMIT n`` branch, so the database
can stop early for a common word and use an index for a rare one; the branches
are merged. :func:`add_search_indexes` adds the indexes that makes fast on a
scratch copy after it is loaded (the live database is never changed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

PAGE = 50
MAX_PAGE = 200
MAX_WORDS = 5

#: (name, table, expression): the scratch copy's search indexes
INDEXES = (
    ("browse_guest_first", "guest", "lower(first_name)"),
    ("browse_guest_last", "guest", "lower(last_name)"),
    ("browse_guest_document", "guest", "lower(document_number)"),
    ("browse_registration_email", "registration", "lower(email)"),
    ("browse_registration_created", "registration", "created_at"),
)

#: the scratch copy's registrations per trip (made with the indexes)
COUNTS = "browse_trip_registrations"
COLUMNS = ("g.id AS guest_id, g.first_name, g.last_name, g.document_type, g.document_number, "
           "g.age_category, g.document_photo IS NOT NULL AS had_photo, g.created_at, "
           "r.id AS registration_id, r.email, r.status, r.created_at AS registered_at, "
           "r.trip_id, t.title AS trip_title")
FROM = ("guest g JOIN registration r ON r.id = g.registration_id "
        "LEFT JOIN trip t ON t.id = r.trip_id")


def add_search_indexes(engine: Engine) -> None:
    """The expression indexes the search uses, each trip's registrations counted
    once (the archive never changes), then fresh statistics."""
    postgres = engine.dialect.name == "postgresql"
    with engine.begin() as conn:
        for name, table, expression in INDEXES:
            ops = " text_pattern_ops" if postgres and expression.startswith("lower(") else ""
            conn.exec_driver_sql(f"CREATE INDEX IF NOT EXISTS {name} ON {table} "
                                 f"({expression}{ops})")
        conn.exec_driver_sql(f"CREATE TABLE {COUNTS} AS SELECT trip_id, count(*) AS "
                             f"registrations FROM registration GROUP BY trip_id")
        conn.exec_driver_sql(f"CREATE UNIQUE INDEX {COUNTS}_trip ON {COUNTS} (trip_id)")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE guest" if postgres else "ANALYZE")
        if postgres:
            conn.exec_driver_sql("ANALYZE registration")


@dataclass
class Search:
    """One search: text, trip, registration dates (inclusive), a page after ``after``."""

    text: str = ""
    trip_id: int | None = None
    date_from: date | None = None
    date_to: date | None = None
    after: int = 0
    limit: int = PAGE

    @property
    def words(self) -> list[str]:
        return [w.lower() for w in self.text.split()][:MAX_WORDS]

    def to_dict(self) -> dict:
        return {"text": self.text, "trip_id": self.trip_id, "after": self.after,
                "date_from": self.date_from.isoformat() if self.date_from else None,
                "date_to": self.date_to.isoformat() if self.date_to else None,
                "limit": self.limit}


@dataclass
class Page:
    rows: list[dict] = field(default_factory=list)
    next_after: int | None = None  # the next page's ``after``, None on the last page

    def to_dict(self) -> dict:
        return {"rows": [jsonable(r) for r in self.rows], "next_after": self.next_after}


def jsonable(row: dict) -> dict:
    return {k: (v.isoformat() if isinstance(v, (date,)) else v) for k, v in row.items()}


def _prefix(expression: str, key: str, word: str, params: dict, postgres: bool) -> str:
    """``expression`` starts with ``word``: LIKE on PostgreSQL (text_pattern_ops
    index), a range on SQLite (its LIKE would not use the index)."""
    if postgres:
        params[key] = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        return f"{expression} LIKE :{key}"
    params[key], params[key + "_hi"] = word, word + "\U0010ffff"
    return f"({expression} >= :{key} AND {expression} < :{key}_hi)"


def _filters(search: Search, params: dict) -> list[str]:
    """The conditions every branch shares: trip, dates, the page's start."""
    where = ["g.id > :after"]
    params["after"] = int(search.after or 0)
    if search.trip_id is not None:
        where.append("r.trip_id = :trip_id")
        params["trip_id"] = int(search.trip_id)
    if search.date_from is not None:
        where.append("r.created_at >= :date_from")
        params["date_from"] = search.date_from
    if search.date_to is not None:
        where.append("r.created_at < :date_to")
        params["date_to"] = search.date_to + timedelta(days=1)
    return where


def _branches(search: Search, params: dict, postgres: bool) -> list[list[str]]:
    """Each way the text may match, as a list of conditions."""
    words = search.words
    if not words:
        return [[]]
    if len(words) == 1 and "@" in words[0]:
        return [[_prefix("lower(r.email)", "w0", words[0], params, postgres)]]
    names = []
    for i, word in enumerate(words):
        names.append("(" + " OR ".join(
            _prefix(f"lower(g.{column})", f"w{i}{column[0]}", word, params, postgres)
            for column in ("first_name", "last_name", "document_number")) + ")")
    branches = [names]
    if len(words) == 1:
        branches.append([_prefix("lower(r.email)", "we", words[0], params, postgres)])
    else:  # names of several words: "van der Berg", "Jan van der Berg"
        rest = " ".join(words[1:])
        branches.append([_prefix("lower(g.last_name)", "wl", " ".join(words), params, postgres)])
        branches.append([_prefix("lower(g.first_name)", "wf", words[0], params, postgres),
                         _prefix("lower(g.last_name)", "wr", rest, params, postgres)])
    return branches


def search_guests(engine: Engine, search: Search) -> Page:
    """One page of guests matching ``search``, in id order."""
    limit = max(1, min(int(search.limit or PAGE), MAX_PAGE))
    with engine.connect() as conn:
        return _search(conn, search, limit)


def _search(conn: Connection, search: Search, limit: int) -> Page:
    postgres = conn.dialect.name == "postgresql"
    params: dict = {"n": limit + 1}
    common = _filters(search, params)
    parts = []
    for i, conditions in enumerate(_branches(search, params, postgres)):
        where = " AND ".join(common + conditions)
        parts.append(f"SELECT id FROM (SELECT g.id AS id FROM {FROM} WHERE {where} "
                     f"ORDER BY g.id LIMIT :n) b{i}")
    ids = " UNION ".join(parts)
    sql = (f"SELECT {COLUMNS} FROM {FROM} WHERE g.id IN ({ids}) ORDER BY g.id LIMIT :n")
    rows = [dict(r._mapping) for r in conn.execute(text(sql), params)]
    for row in rows:
        row["had_photo"] = bool(row["had_photo"])
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, rows[-1]["guest_id"] if more and rows else None)


def trips(engine: Engine, after: int = 0, limit: int = PAGE) -> Page:
    """A page of the trips, with how many registrations each holds."""
    sql = ("SELECT t.id, t.title, t.start_date, t.end_date, t.created_at, "
           f"coalesce(c.registrations, 0) AS registrations FROM trip t LEFT JOIN {COUNTS} c "
           "ON c.trip_id = t.id WHERE t.id > :after ORDER BY t.id LIMIT :n")
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(text(sql), {"after": after,
                                                                   "n": limit + 1})]
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, rows[-1]["id"] if more and rows else None)


def trip(engine: Engine, trip_id: int) -> dict | None:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT id, title, start_date, end_date, max_guests, "
                                "created_at FROM trip WHERE id = :id"), {"id": trip_id}).first()
    return dict(row._mapping) if row else None


def registration(engine: Engine, registration_id: int) -> dict | None:
    """A registration with its trip's title and its guests (a registration's guests
    are a handful: loaded whole)."""
    with engine.connect() as conn:
        row = conn.execute(text(
            "SELECT r.id, r.trip_id, r.email, r.language, r.status, r.created_at, "
            "t.title AS trip_title FROM registration r LEFT JOIN trip t ON t.id = r.trip_id "
            "WHERE r.id = :id"), {"id": registration_id}).first()
        if row is None:
            return None
        guests = conn.execute(text(
            "SELECT id, first_name, last_name, age_category, document_type, document_number, "
            "document_photo IS NOT NULL AS had_photo, gdpr_consent, created_at FROM guest "
            "WHERE registration_id = :id ORDER BY id LIMIT 1000"), {"id": registration_id})
        return {**row._mapping, "guests": [dict(g._mapping) for g in guests]}
