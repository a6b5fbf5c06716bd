"""``X-Export-Rows`` counted beside the rows on PostgreSQL: a second connection of
a small pool that never waits imports the export's snapshot and counts while the
export's own connection runs the rows' query (count_beside). The count is the
snapshot's, whichever connection took it; with no second connection free the
export counts on its own, as before; a failure on either side leaves no
connection behind in a transaction and the export audited as failed."""

from __future__ import annotations

import threading
from datetime import datetime

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

import guest_backup.export.count_beside as count_beside
from guest_backup.export.stream import open_export, parse_request
from guest_registration.extensions import db
from guest_registration.models import AuditEntry, Guest, Registration, Trip
from tests.helpers import db_engine_of, terminate_open_transactions

pytestmark = pytest.mark.parametrize("backend", ["postgresql"])

GUESTS = 3000


@pytest.fixture
def month(app):
    with app.app_context():
        trip = Trip(title="Count", max_guests=9)
        reg = Registration(trip=trip, email="count@example.com", language="en")
        db.session.add_all([trip, reg])
        db.session.commit()
        db.session.execute(sa.insert(Guest), [
            {"registration_id": reg.id, "first_name": f"G{i}", "last_name": "x",
             "age_category": "adult", "document_type": "passport", "document_number": str(i),
             "gdpr_consent": True, "created_at": datetime(2025, 4, 1 + i % 28, 9)}
            for i in range(GUESTS)])
        db.session.commit()
        return reg.id


def _open(app, fmt: str = "csv", **kwargs):
    req = parse_request({"year": ["2025"], "month": ["4"], "format": [fmt]},
                        app.extensions["export_formats"])
    return open_export(db.engine, req, db_engine=db_engine_of(app), actor="t", via="cli",
                       **kwargs)


def _counted_on(app):
    """A list of (kind, backend pid) of the count statement and of the export's
    own connection (the first to open a snapshot: the one whose rows are sent),
    and the listener filling it."""
    seen: list[tuple[str, int]] = []

    def record(conn, cursor, statement, *args):
        pid = conn.connection.dbapi_connection.get_backend_pid()
        if "count(" in statement.lower():
            seen.append(("count", pid))
        elif "REPEATABLE READ" in statement and "export" not in dict(seen):
            seen.append(("export", pid))
    return seen, record


def _no_open_transactions(app) -> None:
    engine = sa.create_engine(app.config["DATABASE_URL"])
    try:
        assert terminate_open_transactions(engine) == []
    finally:
        engine.dispose()


def _last_entry(app) -> AuditEntry:
    db.session.remove()
    return db.session.query(AuditEntry).order_by(AuditEntry.id.desc()).first()


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_the_count_runs_beside_in_the_exports_snapshot(app, month, fmt, monkeypatch):
    """On a second connection, while the export's own starts its rows; a guest
    committed after the snapshot is in neither the count nor the rows."""
    from guest_backup.export import body as body_module

    seen, record = _counted_on(app)
    real_prime = body_module.ExportBody.prime

    def prime(self):  # a guest committed once the snapshot is taken and shared
        with app.app_context(), sa.create_engine(app.config["DATABASE_URL"]).begin() as other:
            other.execute(sa.insert(Guest.__table__).values(
                registration_id=month, first_name="Late", last_name="Comer",
                age_category="adult", document_type="passport", document_number="LATE",
                gdpr_consent=True, created_at=datetime(2025, 4, 2, 9)))
        real_prime(self)
    monkeypatch.setattr(body_module.ExportBody, "prime", prime)
    with app.app_context():
        event.listen(Engine, "before_cursor_execute", record)
        try:
            stream = _open(app, fmt)
            body = b"".join(stream.chunks)
        finally:
            event.remove(Engine, "before_cursor_execute", record)
        entry = _last_entry(app)
    lines = body.count(b"\r\n") - 1 if fmt == "csv" else body.count(b"\n") - 1
    assert stream.rows == lines == GUESTS and b"LATE" not in body
    kinds = dict(seen)
    assert set(kinds) == {"count", "export"} and kinds["count"] != kinds["export"], seen
    assert entry.outcome == "ok" and entry.rows == GUESTS
    _no_open_transactions(app)


def test_without_a_free_second_connection_the_export_counts_on_its_own(app, month,
                                                                        monkeypatch):
    """The counting pool full (one connection, held by someone else): no wait, the
    count on the export's connection first, the same answer."""
    monkeypatch.setattr(count_beside, "SIDE_POOL_SIZE", 1)
    seen, record = _counted_on(app)
    with app.app_context():
        count_beside._dispose_side(db.engine)  # a pool of the patched size
        held = count_beside._side_engine(db.engine).connect()
        event.listen(Engine, "before_cursor_execute", record)
        try:
            stream = _open(app)
            body = b"".join(stream.chunks)
        finally:
            event.remove(Engine, "before_cursor_execute", record)
            held.close()
    assert stream.rows == GUESTS == body.count(b"\r\n") - 1
    kinds = dict(seen)
    assert kinds["count"] == kinds["export"], seen  # one connection
    _no_open_transactions(app)


def test_a_failing_count_fails_the_export_and_leaves_nothing_open(app, month, monkeypatch):
    """The count beside fails after the rows' query started: the export is not
    sent, audited as failed, its connection and the counting one given back, and
    the caller's on_close called once."""
    real = sa.engine.Connection.execute

    def execute(self, statement, *args, **kwargs):
        if threading.current_thread().name == "export-count":
            raise sa.exc.OperationalError("SELECT count(*)", {}, Exception("server closed"))
        return real(self, statement, *args, **kwargs)
    monkeypatch.setattr(sa.engine.Connection, "execute", execute)
    closed: list[int] = []
    with app.app_context():
        with pytest.raises(sa.exc.OperationalError):
            _open(app, on_close=lambda: closed.append(1))
        entry = _last_entry(app)
    assert closed == [1]
    assert entry.action == "export" and entry.outcome == "failed"
    assert entry.message == "OperationalError"
    _no_open_transactions(app)


def test_a_failing_query_waits_for_the_count_beside(app, month, monkeypatch):
    """The rows' query fails while the count runs beside: the export raises only
    once the counting connection is given back (the backup's row counts had that
    fault: its thread went on in a transaction after the command)."""
    import time

    real = sa.engine.Connection.execute

    def slow(self, statement, *args, **kwargs):
        if threading.current_thread().name == "export-count":
            time.sleep(0.5)
        return real(self, statement, *args, **kwargs)

    def failing(*args):
        raise RuntimeError("the COPY failed")
        yield b""
    monkeypatch.setattr(sa.engine.Connection, "execute", slow)
    monkeypatch.setitem(app.extensions["export_formats"].get("csv").fast_paths, "postgresql",
                        failing)
    with app.app_context():
        with pytest.raises(RuntimeError):
            _open(app)
        entry = _last_entry(app)
    assert entry.outcome == "failed" and entry.message == "RuntimeError"
    assert not [t for t in threading.enumerate() if t.name == "export-count"]
    _no_open_transactions(app)


def test_disposing_the_apps_engine_closes_the_counting_connections(app, month):
    with app.app_context():
        b"".join(_open(app).chunks)
        side = count_beside._side_engine(db.engine)
        assert side.pool.checkedin() == 1
        db.engine.dispose()
        assert db.engine not in count_beside._sides
        assert side.pool.checkedin() == 0
