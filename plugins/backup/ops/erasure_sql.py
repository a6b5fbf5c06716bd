"""The anonymisation SQL of an erasure, on table and column names (SQLAlchemy
Core, no host models): the same statements erase live rows and re-apply the
ledger to a restored database, on PostgreSQL and SQLite.

A guest is erased when ``first_name``, ``last_name`` and ``document_number``
are ``[erased]`` and ``document_photo`` is NULL; a registration when its
``email`` is ``erased-<id>@invalid``. See :mod:`guest_backup.ops.erasure`.
"""

from __future__ import annotations

from datetime import date, datetime, time
from typing import Iterable, Iterator, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from guest_backup.errors import BackupError
from guest_backup.ops.ledger_format import normalise

ERASED = "[erased]"
#: rows per statement (IN lists) and per batch of a streamed table (a restore that
#: matches by keyed hash reads 500,000 guests in 10.2-10.4 s with 5,000, 12.3-13.2 s
#: with 1,000, on psql's open transaction)
CHUNK = 500
BATCH = 5000

TRIP = sa.table("trip", sa.column("id", sa.Integer), sa.column("title", sa.String),
                sa.column("start_date", sa.Date), sa.column("end_date", sa.Date))
REGISTRATION = sa.table(
    "registration", sa.column("id", sa.Integer), sa.column("trip_id", sa.Integer),
    sa.column("email", sa.String), sa.column("language", sa.String),
    sa.column("status", sa.String), sa.column("created_at", sa.DateTime))
GUEST = sa.table(
    "guest", sa.column("id", sa.Integer), sa.column("registration_id", sa.Integer),
    sa.column("first_name", sa.String), sa.column("last_name", sa.String),
    sa.column("age_category", sa.String), sa.column("document_type", sa.String),
    sa.column("document_number", sa.String), sa.column("document_photo", sa.String),
    sa.column("gdpr_consent", sa.Boolean), sa.column("created_at", sa.DateTime))

R, G, T = REGISTRATION.c, GUEST.c, TRIP.c
#: the tables an erasure writes and the columns it writes in them
ERASED_COLUMNS = {"guest": ("first_name", "last_name", "document_number", "document_photo"),
                  "registration": ("email",)}
#: what the erasure sets NULL; the longest text it writes in each table
#: (``erased-<id>@invalid``, a 10-digit id); erasure_mark's columns (it may INSERT)
ERASED_TO_NULL, ERASED_WIDTH = ("document_photo",), {"guest": 8, "registration": 26}
MARK_COLUMNS = ("id", "seq", "marked_at")


def written_columns_sql() -> str:
    """PostgreSQL ``VALUES (table, written columns, width, set NULL)`` of the above
    (``guest_backup.ops.finishing``); erasure_mark's columns are all written (NULL)."""
    def array(names) -> str:
        return "ARRAY[" + ", ".join(f"'{c}'" for c in names) + "]::text[]"
    return ", ".join([f"('{t}', {array(cs)}, {ERASED_WIDTH[t]}, "
                      f"{array(c for c in cs if c in ERASED_TO_NULL)}, NULL)"
                      for t, cs in sorted(ERASED_COLUMNS.items())]
                     + [f"('erasure_mark', NULL, 0, NULL, {array(MARK_COLUMNS)})"])


def erased_email(registration_id: int) -> str:
    """What an erased registration's ``email`` holds (the column is NOT NULL)."""
    return f"erased-{registration_id}@invalid"


def erased_email_sql() -> sa.ColumnElement:
    return sa.literal("erased-", sa.String) + sa.cast(R.id, sa.String) + \
        sa.literal("@invalid", sa.String)


def guest_not_erased() -> sa.ColumnElement:
    return sa.or_(G.first_name != ERASED, G.last_name != ERASED,
                  G.document_number != ERASED, G.document_photo.isnot(None))


def registration_not_erased() -> sa.ColumnElement:
    return R.email != erased_email_sql()


def guest_is_erased(row) -> bool:
    """Whether a row with the guest's columns holds no personal data any more."""
    return (row.first_name == ERASED and row.last_name == ERASED
            and row.document_number == ERASED and row.document_photo is None)


def _probe_statements(guest_ids: Iterable[int] = (),
                      registration_ids: Iterable[int] = ()) -> list:
    """An erasure of the first two guests and the first two registrations, and of
    every guest and registration named here (with the registrations of those
    guests and the guests of those registrations, as an erasure touches them):
    one statement per condition, so that each finds its rows by an index."""
    guest_ids, registration_ids = _ids(guest_ids), _ids(registration_ids)
    guests = [G.id.in_(sa.select(G.id).order_by(G.id).limit(2))]
    registrations = [R.id.in_(sa.select(R.id).order_by(R.id).limit(2))]
    if guest_ids:
        guests.append(G.id.in_(guest_ids))
        registrations.append(R.id.in_(sa.select(G.registration_id).where(G.id.in_(guest_ids))))
    if registration_ids:
        guests.append(G.registration_id.in_(registration_ids))
        registrations.append(R.id.in_(registration_ids))
    erase_guests = sa.update(GUEST).values(first_name=ERASED, last_name=ERASED,
                                           document_number=ERASED, document_photo=None)
    erase_registrations = sa.update(REGISTRATION).values(email=erased_email_sql())
    return ([erase_guests.where(c) for c in guests]
            + [erase_registrations.where(c) for c in registrations])


def _ids(values: Iterable[int]) -> list[int]:
    """Whole numbers only (they come from a ledger file and go into SQL text)."""
    return sorted({v for v in values if isinstance(v, int) and not isinstance(v, bool)})


def probe_erasure(conn: Connection) -> None:
    """Erase two guests and two registrations inside a savepoint, then undo it:
    BackupError when the database refuses (a constraint or a column type that an
    archive signed with a stolen key brought, e.g. ``CHECK (first_name <>
    '[erased]')``): nobody could ever be erased from it."""
    try:
        with conn.begin_nested() as probe:
            for statement in _probe_statements():
                conn.execute(statement)
            probe.rollback()
    except (sa.exc.IntegrityError, sa.exc.DataError) as exc:
        raise BackupError(f"the archive's database refuses an erasure "
                          f"({type(exc.orig).__name__})") from None


def probe_erasure_sql(guest_ids: Iterable[int] = (), registration_ids: Iterable[int] = ()) -> str:
    """:func:`probe_erasure` as PostgreSQL text for the end of a load's transaction
    (psql stops there: nothing is committed), also over the rows the ledger names
    (``guest_ids``, ``registration_ids``): a constraint aimed at one erased
    person's row (``CHECK (id <> 7 OR first_name <> '[erased]')``) refuses the
    load instead of the re-apply after its COMMIT. A schema the statements do not
    fit (an older one, not upgraded) is not probed."""
    from guest_backup.engines.psqlsession import psql_text

    body = " ".join(f"{psql_text(st)};" for st in _probe_statements(guest_ids, registration_ids))
    return ("DO $$BEGIN BEGIN " + body + " RAISE EXCEPTION 'gr-erasure-probe-ok'; "
            "EXCEPTION WHEN integrity_constraint_violation OR data_exception THEN "
            "RAISE EXCEPTION 'gr-erasure-refused %', SQLSTATE; WHEN OTHERS THEN NULL; "
            "END; END$$;\n")


def chunks(ids: Iterable[int], size: int = CHUNK) -> Iterator[list[int]]:
    ordered = sorted(set(ids))
    for start in range(0, len(ordered), size):
        yield ordered[start:start + size]


def anonymise_guests(conn: Connection, guest_ids: Iterable[int]) -> int:
    """Erase these guests (those not erased yet); the rows changed."""
    changed = 0
    for part in chunks(guest_ids):
        changed += conn.execute(
            sa.update(GUEST).where(G.id.in_(part), guest_not_erased())
            .values(first_name=ERASED, last_name=ERASED, document_number=ERASED,
                    document_photo=None)).rowcount
    return changed


def anonymise_registrations(conn: Connection, registration_ids: Iterable[int]) -> int:
    """Erase these registrations: every guest of theirs and their e-mail."""
    changed = 0
    for part in chunks(registration_ids):
        changed += conn.execute(
            sa.update(GUEST).where(G.registration_id.in_(part), guest_not_erased())
            .values(first_name=ERASED, last_name=ERASED, document_number=ERASED,
                    document_photo=None)).rowcount
        changed += conn.execute(
            sa.update(REGISTRATION).where(R.id.in_(part), registration_not_erased())
            .values(email=erased_email_sql())).rowcount
    return changed


def close_emptied(conn: Connection, registration_ids: Iterable[int]) -> int:
    """Erase the e-mail of those of these registrations that have no guest with
    personal data left; the rows changed."""
    changed = 0
    left = sa.exists().where(G.registration_id == R.id, guest_not_erased())
    for part in chunks(registration_ids):
        changed += conn.execute(
            sa.update(REGISTRATION).where(R.id.in_(part), registration_not_erased(), ~left)
            .values(email=erased_email_sql())).rowcount
    return changed


def stream(conn: Connection, query: sa.Select, id_column: sa.ColumnElement,
           size: int = BATCH) -> Iterator[Sequence]:
    """The rows of ``query`` in batches of ``size``, by ascending ``id_column``
    (keyset pages: never the whole table in memory, inside any transaction)."""
    last = None
    while True:
        page = query if last is None else query.where(id_column > last)
        rows = conn.execute(page.order_by(id_column).limit(size)).all()
        if not rows:
            return
        yield rows
        last = rows[-1][0]


def _guest_select() -> sa.Select:
    return sa.select(G.id, G.registration_id, G.first_name, G.last_name, G.age_category,
                     G.document_type, G.document_number, G.document_photo, G.created_at,
                     R.email).select_from(GUEST.join(REGISTRATION, R.id == G.registration_id))


def guest_rows(conn: Connection, guest_ids: Iterable[int]) -> list:
    """The guests of these ids with their registration's e-mail."""
    found, query = [], _guest_select()
    for part in chunks(guest_ids):
        found += conn.execute(query.where(G.id.in_(part)).order_by(G.id)).all()
    return found


def guests_of(conn: Connection, registration_ids: Iterable[int]) -> list:
    """Every guest of these registrations (same columns as :func:`guest_rows`)."""
    found, query = [], _guest_select()
    for part in chunks(registration_ids):
        found += conn.execute(query.where(G.registration_id.in_(part)).order_by(G.id)).all()
    return found


def registration_rows(conn: Connection, registration_ids: Iterable[int]) -> list:
    """The registrations of these ids with their trip's title."""
    found = []
    query = sa.select(R.id, R.trip_id, R.email, R.language, R.status, R.created_at,
                      T.title).select_from(REGISTRATION.outerjoin(TRIP, T.id == R.trip_id))
    for part in chunks(registration_ids):
        found += conn.execute(query.where(R.id.in_(part)).order_by(R.id)).all()
    return found


def registrations_with_email(conn: Connection, address: str) -> list[int]:
    """The ids of the registrations whose e-mail is ``address`` (trimmed, any case,
    as the ledger normalises it)."""
    wanted = normalise("email", address)
    if not wanted:
        return []
    if wanted.isascii():
        return list(conn.execute(sa.select(R.id).where(
            sa.func.lower(sa.func.trim(R.email)) == wanted).order_by(R.id)).scalars())
    return [row.id for rows in stream(conn, sa.select(R.id, R.email), R.id) for row in rows
            if normalise("email", row.email) == wanted]


def guests_with_document(conn: Connection, number: str) -> list[int]:
    """The ids of the guests whose document number is ``number`` (without any
    whitespace, any case, as the ledger normalises it), streamed."""
    wanted = normalise("document_number", number)
    if not wanted:
        return []
    return [row.id for rows in stream(conn, sa.select(G.id, G.document_number), G.id)
            for row in rows if normalise("document_number", row.document_number) == wanted]


def stay_ended_before(cutoff: date) -> sa.ColumnElement:
    """A registration (joined with its trip) whose stay ended before ``cutoff``: the
    trip's end date, else its start date, else the registration's creation day."""
    midnight = datetime.combine(cutoff, time())
    return sa.or_(T.end_date < cutoff,
                  sa.and_(T.end_date.is_(None), T.start_date < cutoff),
                  sa.and_(T.end_date.is_(None), T.start_date.is_(None), R.created_at < midnight))


def overdue_query(cutoff: date) -> sa.Select:
    """The ids of the registrations past ``cutoff`` that still hold personal data."""
    holds = sa.exists().where(G.registration_id == R.id, guest_not_erased())
    return (sa.select(R.id).select_from(REGISTRATION.outerjoin(TRIP, T.id == R.trip_id))
            .where(stay_ended_before(cutoff), sa.or_(registration_not_erased(), holds)))


def photos_in_use(conn: Connection, names: Iterable[str]) -> set[str]:
    """Those of these document photo names that a guest row still holds."""
    names, found = sorted(set(names)), set()
    for start in range(0, len(names), CHUNK):
        found.update(conn.execute(sa.select(G.document_photo).where(
            G.document_photo.in_(names[start:start + CHUNK]))).scalars())
    return found


def checkpoint(engine) -> None:
    """SQLite: the write-ahead log copied into the database file and emptied, so an
    erased value is not left in the ``-wal`` file while the app keeps connections
    open (with ``secure_delete``, the pages copied hold no trace of it either).
    A reader in the middle of a transaction may keep it from finishing: the next
    checkpoint does. Nothing on PostgreSQL."""
    if engine.dialect.name != "sqlite":
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
