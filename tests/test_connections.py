"""Connections under pressure: one pooled connection per export for its whole
life, a short wait for a free connection and then 503 with Retry-After (never a
hang, a 500 or a 401), and a per-process limit on concurrent exports (429)."""

from __future__ import annotations

import time
from datetime import datetime

import pytest
import sqlalchemy as sa

from guest_registration.extensions import db
from guest_registration.models import Guest, Registration, Trip
from tests.helpers import API

ROWS = 30_000


@pytest.fixture
def many_guests(app):
    """Enough rows that an export streams in many chunks (bulk insert)."""
    with app.app_context():
        trip = Trip(title="Bulk", max_guests=9)
        reg = Registration(trip=trip, email="bulk@example.com", language="en")
        db.session.add_all([trip, reg])
        db.session.commit()
        db.session.execute(sa.insert(Guest), [
            {"registration_id": reg.id, "first_name": f"G{i}", "last_name": "x" * 40,
             "age_category": "adult", "document_type": "passport", "document_number": str(i),
             "gdpr_consent": True, "created_at": datetime(2025, 3, 1 + i % 28, 10, 0, 0)}
            for i in range(ROWS)])
        db.session.commit()


def connections(app) -> list[tuple[str, bool]]:
    """(state, in a transaction) of every other session of the app's database."""
    engine = sa.create_engine(app.config["DATABASE_URL"])
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(
                "SELECT state, xact_start IS NOT NULL FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"))]
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["postgresql"])
@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_a_streaming_export_holds_exactly_one_connection(app, client, auth, many_guests,
                                                         backend, fmt):
    token = auth.token()
    with app.app_context():
        db.engine.dispose()  # count only what the export opens from here on
    response = client.get(API, query_string={"year": 2025, "month": 3, "format": fmt},
                          headers={"Authentication-Token": token}, buffered=False)
    assert response.status_code == 200
    chunks = iter(response.response)
    first = next(chunks)
    assert first
    in_transaction = [state for state, xact in connections(app) if xact]
    assert len(in_transaction) == 1, connections(app)  # the export's snapshot, nothing else
    rest = b"".join(chunks)
    response.close()
    assert (first + rest).count(b"\n") >= ROWS
    assert not [state for state, xact in connections(app) if xact]


@pytest.fixture
def tiny_pool(app_config):
    """One pooled connection, and a 1 s wait for it."""
    app_config.update(DATABASE_POOL_SIZE=1, DATABASE_MAX_OVERFLOW=0, DATABASE_POOL_TIMEOUT=1)
    return app_config


def test_an_export_and_a_preview_need_only_one_connection(tiny_pool, app, client, auth,
                                                         many_guests):
    """The request's own connection (the user lookup) goes back to the pool before
    the export takes one, and the audit entries are written on the export's."""
    token = auth.token()
    response = client.get(API, query_string={"year": 2025, "month": 3},
                          headers={"Authentication-Token": token}, buffered=True)
    assert response.status_code == 200, response.data
    assert int(response.headers["X-Export-Rows"]) == ROWS
    auth.login()
    preview = client.get("/admin/backup/preview?year=2025&month=3&format=json")
    assert preview.status_code == 200 and preview.get_json()["rows"] == ROWS


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_no_free_connection_is_a_fast_503_never_a_401(tiny_pool, app, client, auth, backend):
    token = auth.token()
    with app.app_context():
        hog = db.engine.connect()  # the pool's only connection
        try:
            started = time.monotonic()
            api = client.get(API, query_string={"year": 2025, "month": 3},
                             headers={"Authentication-Token": token})
            page = client.get("/")
            elapsed = time.monotonic() - started
        finally:
            hog.close()
    assert api.status_code == 503 and api.is_json, api.data
    assert int(api.headers["Retry-After"]) > 0
    assert "busy" in api.get_json()["error"]
    assert page.status_code == 503 and page.headers["Retry-After"]
    assert "Traceback" not in page.get_data(as_text=True)
    assert elapsed < 6, elapsed  # two requests, each waiting the 1 s pool timeout
    # and once the connection is back, the same token works
    assert client.get(API, query_string={"year": 2025, "month": 3},
                      headers={"Authentication-Token": token}, buffered=True).status_code == 200


def test_a_signed_in_page_without_a_free_connection_is_one_503(tiny_pool, app, client, auth,
                                                                backend):
    """With a session cookie the user is looked up by Flask-Login's loader; when that
    lookup timed out, the 503 page looked the user up again (its template context)
    and the second timeout became a 500 after twice the wait (the review of
    2026-12-05: 14 to 27 500s in 60 signed-in requests on a pool of 2)."""
    auth.login()
    with app.app_context():
        hog = db.engine.connect()  # the pool's only connection
        try:
            started = time.monotonic()
            pages = [client.get(path) for path in ("/admin/", "/admin/backup/")]
            elapsed = time.monotonic() - started
        finally:
            hog.close()
    for page in pages:
        assert page.status_code == 503, page.status_code
        assert page.headers["Retry-After"] and "Traceback" not in page.get_data(as_text=True)
    assert elapsed < 3.5, elapsed  # each waited the 1 s pool timeout once, not twice
    assert client.get("/admin/").status_code == 200  # and the session still works


@pytest.mark.parametrize("backend", ["sqlite"])
def test_concurrent_exports_are_limited_with_429(app_config, app, client, auth, many_guests,
                                                 backend):
    app.config["EXPORT_MAX_CONCURRENT"] = 1
    token = auth.token()
    headers = {"Authentication-Token": token}
    first = client.get(API, query_string={"year": 2025, "month": 3}, headers=headers,
                       buffered=False)
    assert first.status_code == 200
    next(iter(first.response))  # streaming, holding its slot
    second = client.get(API, query_string={"year": 2025, "month": 3}, headers=headers)
    assert second.status_code == 429 and second.is_json
    assert int(second.headers["Retry-After"]) > 0
    first.close()
    third = client.get(API, query_string={"year": 2025, "month": 3}, headers=headers,
                       buffered=True)
    assert third.status_code == 200


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_pages_preview_takes_an_export_slot(app_config, app, client, auth, many_guests,
                                                backend):
    """A preview holds a connection and a snapshot as an export does: with every
    slot taken it is answered 429 like the API (found by the review of 2026-12-05:
    60 previews at once took both servers' pools, 15 of them ended in a 500), and
    it gives its slot back when it ends."""
    app.config["EXPORT_MAX_CONCURRENT"] = 1
    headers = {"Authentication-Token": auth.token()}
    auth.login()
    month = {"year": 2025, "month": 3}
    first = client.get(API, query_string=month, headers=headers, buffered=False)
    assert first.status_code == 200
    next(iter(first.response))  # streaming, holding the only slot
    busy = client.get("/admin/backup/preview", query_string=month)
    assert busy.status_code == 429 and int(busy.headers["Retry-After"]) > 0
    assert "Too many exports" in busy.get_json()["error"]
    first.close()
    for _ in range(2):  # each preview gives the slot back
        shown = client.get("/admin/backup/preview", query_string=month)
        assert shown.status_code == 200 and shown.get_json()["rows"] > 0, shown.data[:300]
    assert client.get(API, query_string=month, headers=headers,
                      buffered=True).status_code == 200


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_session_idle_in_a_transaction_is_ended_but_a_slow_export_is_not(
        app_config, app, client, auth, many_guests, backend):
    """The second line behind reading bodies first: PostgreSQL ends a pooled session
    left idle inside a transaction (DATABASE_IDLE_TRANSACTION_TIMEOUT), while an
    export read slowly by its client, idle in its snapshot between fetches, goes on."""
    assert app.config["DATABASE_IDLE_TRANSACTION_TIMEOUT"] == 60
    with app.app_context():
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW idle_in_transaction_session_timeout").scalar() \
                == "1min"
    quick = create_app_with(app_config, app, DATABASE_IDLE_TRANSACTION_TIMEOUT=1,
                            EXPORT_FETCH_ROWS=2000)
    try:
        with quick.app_context():
            conn = db.engine.connect()
            conn.exec_driver_sql("SELECT 1")  # a transaction begins, then nothing
            time.sleep(1.6)
            with pytest.raises(sa.exc.OperationalError):
                conn.exec_driver_sql("SELECT 1")
            conn.invalidate()
            conn.close()
        client = quick.test_client()
        token = auth.token()
        response = client.get(API, query_string={"year": 2025, "month": 3, "format": "csv"},
                              headers={"Authentication-Token": token}, buffered=False)
        assert response.status_code == 200
        body = []
        for chunk in response.response:
            body.append(chunk)
            if len(body) in (1, 2):
                time.sleep(1.6)  # a slow reader: the snapshot idles beyond the 1 s
        response.close()
        assert b"".join(body).count(b"\n") == ROWS + 1  # header + every row
    finally:
        with quick.app_context():
            db.engine.dispose()


def create_app_with(app_config, app, **changes):
    from guest_registration import create_app

    return create_app(dict(app_config, **changes), instance_path=app.instance_path)
