"""Monthly guest export: the query and the streaming pipeline (the request is
checked in :mod:`guest_backup.export.request`).

No Flask request in here: the API, the admin page (download and preview, see
:mod:`.preview`) and the CLI all call :func:`parse_request` and :func:`open_export`.

Flow: one connection, one read-only snapshot opened by the database engine
(``REPEATABLE READ`` on PostgreSQL) → ``COUNT(*)`` (sent as ``X-Export-Rows`` so
a client can check it got everything) → the rows through a server-side cursor →
the format's writer (or its engine fast path, which renders each row inside the
database) → bytes. Memory does not grow with the month. The query is the same
on every engine; only the timestamp's rendering comes from the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Iterator

from sqlalchemy import and_, func, select
from sqlalchemy.engine import Connection, Engine

from guest_registration import audit
from guest_registration.models import Guest, Registration, Trip

from guest_backup.engines import DatabaseEngine
from guest_backup.export.request import ExportRequest, month_range
from guest_backup.ops.metrics import record_export

#: The export's columns, in order, named as in the backup-system document.
FIELDS = (
    "id", "registration_id", "first_name", "last_name", "age_category", "document_type",
    "document_number", "gdpr_consent", "created_at", "trip_title", "registration_email",
    "registration_language",
)
def _in_month(column, start: datetime, end: datetime | None):
    return (column >= start) if end is None else and_(column >= start, column < end)


def export_query(start: datetime, end: datetime | None, *, timestamp: Callable | None = None):
    """The export's SELECT: one row per guest created in [start, end), by guest id.

    ``timestamp`` renders ``created_at`` in SQL (an engine's ``timestamp_text``);
    without it the column comes as a datetime."""
    created = timestamp(Guest.created_at) if timestamp else Guest.created_at
    return (
        select(
            Guest.id, Guest.registration_id, Guest.first_name, Guest.last_name,
            Guest.age_category, Guest.document_type, Guest.document_number,
            Guest.gdpr_consent, created.label("created_at"), Trip.title.label("trip_title"),
            Registration.email.label("registration_email"),
            Registration.language.label("registration_language"),
        )
        .join(Registration, Guest.registration_id == Registration.id)
        .join(Trip, Registration.trip_id == Trip.id)
        .where(_in_month(Guest.created_at, start, end))
        .order_by(Guest.id)
    )


def count_query(start: datetime, end: datetime | None, *, joins: bool = True):
    """The number of rows :func:`export_query` returns.

    ``joins=False`` counts the guests alone: equal where the foreign keys are
    enforced (PostgreSQL; ``guest.registration_id`` and ``registration.trip_id``
    are NOT NULL foreign keys, so the inner joins neither drop nor repeat a
    guest), and about four times cheaper there, which is a tenth of a large
    export's time. SQLite keeps the joins: its foreign keys depend on a pragma."""
    query = select(func.count()).select_from(Guest)
    if joins:
        query = (query.join(Registration, Guest.registration_id == Registration.id)
                 .join(Trip, Registration.trip_id == Trip.id))
    return query.where(_in_month(Guest.created_at, start, end))


class ExportIncomplete(RuntimeError):
    """The rows read are not the rows announced (``X-Export-Rows``, the CLI's
    count): the export fails, its body cut before the format's last chunk."""


def _generic_rows(conn: Connection, query, fetch_rows: int, announced: int) -> Iterator[tuple]:
    """Rows as plain tuples, the timestamp rendered ``YYYY-MM-DD HH:MM:SS``; an
    :class:`ExportIncomplete` after the last one when they were not ``announced``."""
    result = conn.execution_options(stream_results=True, max_row_buffer=fetch_rows).execute(query)
    read = 0
    try:
        for part in result.partitions(fetch_rows):
            read += len(part)
            for r in part:
                created = r[8]
                yield (r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7],
                       None if created is None else str(created)[:19], r[9], r[10], r[11])
    finally:
        result.close()
    if read != announced:
        raise ExportIncomplete(f"read {read} of the {announced} rows announced")


@dataclass
class ExportStream:
    """A ready-to-send export: metadata known up front, body produced lazily."""

    request: ExportRequest
    rows: int
    chunks: Iterator[bytes]

    @property
    def filename(self) -> str:
        return self.request.filename

    @property
    def media_type(self) -> str:
        return self.request.format.media_type


def open_export(engine: Engine, req: ExportRequest, *, db_engine: DatabaseEngine | None,
                actor: str | None, via: str, action: str = "export", fetch_rows: int = 2000,
                use_fast_path: bool = True,
                on_error: Callable[[BaseException], None] | None = None,
                on_close: Callable[[], None] | None = None) -> ExportStream:
    """Open the month's snapshot, count it, log the export, and return the stream.

    ``db_engine`` opens the snapshot and renders timestamps for fast paths
    (without one: the driver's own transaction, no fast path). The connection is
    held until the returned ``chunks`` are exhausted or closed (e.g. the HTTP
    client disconnected); the audit entry (``action``) then records ``ok``,
    ``failed`` or ``aborted``; ``on_close`` is called once, whichever way it ends
    (also when opening fails).
    """
    try:
        return _open(engine, req, db_engine, actor, via, action, fetch_rows, use_fast_path,
                     on_error, on_close)
    except BaseException:
        if on_close:
            on_close()
        raise


def _open(engine, req, db_engine, actor, via, action, fetch_rows, use_fast_path, on_error,
          on_close) -> ExportStream:
    start, end = month_range(req.year, req.month)
    conn = engine.connect()  # the export's one connection, for its whole life
    try:
        # the entry goes in first, on this connection and outside the snapshot
        entry = audit.start(conn, action, actor=actor, via=via, year=req.year,
                            month=req.month, format=req.format.name)
    except BaseException:
        conn.close()
        raise
    try:
        if db_engine is not None:
            db_engine.begin_snapshot(conn)
        rows = conn.execute(count_query(start, end, joins=conn.dialect.name != "postgresql")
                            ).scalar_one()
        produce = _producer(conn, req, db_engine, start, end, fetch_rows, use_fast_path,
                            rows)
    except BaseException as exc:  # the connection given back, the entry finished
        _release(conn, engine, entry, "failed", message=type(exc).__name__)
        raise
    body = _Body(produce, conn, engine, entry, rows, on_error, on_close)
    body.label = (action, req.format.name)  # counted by format when it ends (ops.metrics)
    return ExportStream(req, rows, body)


def _producer(conn: Connection, req: ExportRequest, db_engine: DatabaseEngine | None,
              start: datetime, end: datetime | None, fetch_rows: int,
              use_fast_path: bool, rows: int) -> Callable[[], Iterator[bytes]]:
    """What makes the body's chunks: the format's fast path for this database
    (the query compiled here, timestamps rendered by the engine), else its writer,
    fed rows that must come to ``rows`` (the fast paths count inside the database)."""
    fast = (req.format.fast_paths.get(conn.dialect.name)
            if use_fast_path and db_engine is not None else None)
    if fast is None:
        return lambda: req.format.write(
            _generic_rows(conn, export_query(start, end), fetch_rows, rows), FIELDS)
    compiled = export_query(start, end, timestamp=db_engine.timestamp_text).compile(
        dialect=conn.dialect)
    return lambda: fast(conn.connection.dbapi_connection, str(compiled), compiled.params,
                        FIELDS, fetch_rows)


class _Body:
    """The export body: iterates the format's chunks; closing it at any point
    (finished, failed, client gone, or never started) releases the connection
    and records the outcome exactly once."""

    def __init__(self, produce, conn: Connection, engine: Engine, entry: int, rows: int,
                 on_error: Callable[[BaseException], None] | None,
                 on_close: Callable[[], None] | None = None) -> None:
        self._produce, self._conn, self._engine = produce, conn, engine
        self._entry, self._rows, self._on_error = entry, rows, on_error
        self._on_close = on_close
        self._chunks: Iterator[bytes] | None = None
        self._done = False
        self.label: tuple[str, str] | None = None  # (action, format), for the metrics
        self.sent = 0

    def __iter__(self) -> "_Body":
        return self

    def __next__(self) -> bytes:
        if self._done:
            raise StopIteration
        try:
            if self._chunks is None:
                self._chunks = iter(self._produce())
            chunk = next(self._chunks)
        except StopIteration:
            self._finish("ok", None, self._rows)
            raise
        except BaseException as exc:  # the message: never the database's own words
            self._finish("failed", f"{type(exc).__name__}: {exc}"
                         if isinstance(exc, ExportIncomplete) else type(exc).__name__)
            if self._on_error:
                self._on_error(exc)
            raise
        self.sent += len(chunk)
        return chunk

    def close(self, outcome: str = "aborted",
              message: str | None = "the export was closed before its end",
              rows: int | None = None) -> None:
        """Release everything; a WSGI server calls this when the client is gone."""
        if not self._done:
            self._finish(outcome, message, rows)

    def _finish(self, outcome: str, message: str | None, rows: int | None = None) -> None:
        if self._done:
            return
        self._done = True
        record_export(self.label, outcome, rows)  # never raises
        try:
            close = getattr(self._chunks, "close", None)
            if close:
                close()
        finally:
            try:
                _release(self._conn, self._engine, self._entry, outcome, rows=rows,
                         bytes=self.sent, message=message)
            finally:
                if self._on_close:
                    self._on_close()


def _release(conn: Connection, engine: Engine, entry: int, outcome: str, **fields) -> None:
    """End the snapshot, record the outcome on the same connection, and give the
    connection back. A broken connection (the database went away) is closed first
    and the outcome is then written on a fresh one: never two held at once."""
    try:
        conn.rollback()
        audit.finish(conn, entry, outcome, **fields)
    except Exception:
        conn.close()
        audit.finish(engine, entry, outcome, **fields)
    else:
        conn.close()


__all__ = ["FIELDS", "ExportIncomplete", "ExportStream", "open_export", "export_query"]

