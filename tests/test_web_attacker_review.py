"""An anonymous client's cheap requests that cost the server dear, and database
refusals said plainly (review findings: big urlencoded bodies, thousands of
guest entries, SQL in an admin flash, a filter number SQLite cannot hold)."""

from __future__ import annotations

import io
from urllib.parse import urlencode

import pytest

from guest_registration.extensions import db
from guest_registration.models import Trip
from guest_registration.registration.forms import MAX_GUESTS, RegistrationForm
from tests.helpers import csrf_token_from

GUEST = {"first_name": "A", "last_name": "B", "age_category": "adult",
         "document_type": "passport", "document_number": "1", "gdpr_consent": "y"}


def _guest_fields(count: int) -> list[tuple[str, str]]:
    return [(f"guests-{i}-{k}", v) for i in range(count) for k, v in GUEST.items()]


def _register(client, trip_id: int, guests: int):
    token = csrf_token_from(client.get(f"/trips/{trip_id}/register").get_data(as_text=True))
    fields = [("csrf_token", token), ("email", "a@example.com"), ("language", "en")]
    return client.post(f"/trips/{trip_id}/register", data=urlencode(fields + _guest_fields(guests)),
                       content_type="application/x-www-form-urlencoded")


# -- 1. a large body that is not multipart is refused before it is parsed ----------

@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_large_urlencoded_body_is_refused_unparsed(app, client):
    """Flask's MAX_FORM_MEMORY_SIZE binds multipart only; urlencoded bodies up to
    MAX_CONTENT_LENGTH (126 MiB) were parsed whole on any POST (100 MiB: 30 s, 3.8 GiB)."""
    body = b"a=b&" * (app.config["MAX_FORM_MEMORY_SIZE"] // 4 + 1)
    resp = client.post("/language", data=body, content_type="application/x-www-form-urlencoded")
    assert resp.status_code == 413
    assert "too large" in resp.get_data(as_text=True)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_chunked_body_without_length_is_bounded_too(app, client):
    """No Content-Length (chunked): the stream stops at the bound, not at 126 MiB."""
    body = io.BytesIO(b"a=b&" * (app.config["MAX_FORM_MEMORY_SIZE"] // 4 + 1))
    resp = client.post("/language", input_stream=body,
                       content_type="application/x-www-form-urlencoded",
                       environ_overrides={"wsgi.input_terminated": True})
    assert resp.status_code == 413
    assert body.tell() <= app.config["MAX_FORM_MEMORY_SIZE"] + 1, "read past the bound"


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_large_json_body_to_the_api_gets_json_413(app, client):
    body = b'{"a": "' + b"x" * app.config["MAX_FORM_MEMORY_SIZE"] + b'"}'
    resp = client.post("/api/backup/archives", data=body, content_type="application/json")
    assert resp.status_code == 413
    assert resp.get_json() == {"error": "the upload is too large"}


@pytest.mark.parametrize("backend", ["sqlite"])
def test_multipart_and_small_forms_still_pass_the_bound(app, client):
    """Photos come as multipart (bounded per field by Werkzeug): not refused by size."""
    token = csrf_token_from(client.get("/").get_data(as_text=True))
    small = client.post("/language", data={"language": "de", "next": "/", "csrf_token": token})
    assert small.status_code == 302
    big = client.post("/language", data={
        "language": "en", "next": "/", "csrf_token": token,
        "file": (io.BytesIO(b"x" * (app.config["MAX_FORM_MEMORY_SIZE"] + 1)), "a.bin")})
    assert big.status_code == 302


# -- 2. the public form: no more guest entries than the trip takes are built -------

@pytest.mark.parametrize("backend", ["sqlite"])
def test_thousands_of_guest_entries_are_refused_before_the_form_is_built(client, trip_id):
    """The trip takes 2 guests; 2,000 entries were built, validated and echoed
    back (40,000: 69 s, an 89 MiB page)."""
    resp = _register(client, trip_id, 2000)
    page = resp.get_data(as_text=True)
    assert resp.status_code == 400
    assert "At most 2 guests can register for this trip." in page
    assert len(resp.data) < 100_000, f"{len(resp.data)} bytes: every guest echoed back"
    assert 'name="guests-3-first_name"' not in page


@pytest.mark.parametrize("backend", ["sqlite"])
def test_one_guest_over_the_limit_is_the_usual_error(client, trip_id):
    resp = _register(client, trip_id, 3)
    assert resp.status_code == 400
    assert "At most 2 guests can register for this trip." in resp.get_data(as_text=True)
    assert _register(client, trip_id, 2).status_code == 302


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_trip_with_a_huge_limit_still_builds_at_most_the_hard_cap(app, client):
    with app.app_context():
        trip = Trip(title="Big", max_guests=2**31 - 1)
        db.session.add(trip)
        db.session.commit()
        trip_id = trip.id
    page = client.get(f"/trips/{trip_id}/register?guests=100000").get_data(as_text=True)
    assert f'name="guests-{MAX_GUESTS - 1}-first_name"' in page
    assert f'name="guests-{MAX_GUESTS}-first_name"' not in page
    resp = _register(client, trip_id, MAX_GUESTS + 1)
    assert resp.status_code == 400
    assert f"At most {MAX_GUESTS} guests" in resp.get_data(as_text=True)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_field_list_itself_has_a_ceiling(app):
    with app.test_request_context():
        assert RegistrationForm(meta={"csrf": False}).guests.max_entries == MAX_GUESTS


# -- 3. a value the database refuses: no SQL on the admin page --------------------

def _edit_trip(client, trip_id: int, max_guests: str):
    token = csrf_token_from(client.get("/admin/trip/new/").get_data(as_text=True))
    return client.post(f"/admin/trip/edit/?id={trip_id}", follow_redirects=True,
                       data={"title": "Lake Trip", "max_guests": max_guests, "csrf_token": token})


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_number_the_column_cannot_hold_is_a_form_error(client, auth, trip_id):
    auth.login()
    page = _edit_trip(client, trip_id, "99999999999").get_data(as_text=True)
    assert "[SQL:" not in page and "parameters:" not in page
    assert "Number must be between 1 and 2147483647." in page


@pytest.fixture
def refusing_trigger(app):
    """A real PostgreSQL refusal (numeric_value_out_of_range) on every trip update."""
    with app.app_context():
        with db.engine.begin() as conn:
            conn.exec_driver_sql(
                "CREATE FUNCTION gr_refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION "
                "'integer out of range' USING ERRCODE = '22003'; END $$ LANGUAGE plpgsql")
            conn.exec_driver_sql("CREATE TRIGGER gr_refuse BEFORE UPDATE ON trip "
                                 "FOR EACH ROW EXECUTE FUNCTION gr_refuse()")
    yield
    with app.app_context():
        with db.engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER IF EXISTS gr_refuse ON trip")
            conn.exec_driver_sql("DROP FUNCTION IF EXISTS gr_refuse()")


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_value_the_database_refuses_is_said_without_sql(client, auth, trip_id,
                                                           refusing_trigger):
    auth.login()
    page = _edit_trip(client, trip_id, "5").get_data(as_text=True)
    assert "[SQL:" not in page and "parameters:" not in page and "UPDATE trip" not in page
    assert "The database refused a value of this record" in page


# -- 4. a filter number SQLite cannot hold ---------------------------------------

@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_trip_filter_sqlite_cannot_hold_is_a_400(app, client, auth):
    app.testing = False
    app.config["PROPAGATE_EXCEPTIONS"] = False
    auth.login()
    resp = client.get("/admin/trip/", query_string={"flt0_14": "99999999999999999999"})
    assert resp.status_code == 400
    assert client.get("/admin/trip/", query_string={"flt0_14": "3"}).status_code == 200


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("index", ["²", "9" * 5000])
def test_a_guest_number_no_form_sends_is_a_400(client, trip_id, index):
    """WTForms' int() of the index raised ValueError: a 500."""
    token = csrf_token_from(client.get(f"/trips/{trip_id}/register").get_data(as_text=True))
    fields = [("csrf_token", token), ("email", "a@example.com"),
              (f"guests-{index}-first_name", "A")]
    resp = client.post(f"/trips/{trip_id}/register", data=urlencode(fields),
                       content_type="application/x-www-form-urlencoded")
    assert resp.status_code == 400
