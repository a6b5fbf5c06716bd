"""Control characters in guests' data. The public form took a first name with
terminal escape sequences (``ESC ] 0 ; … BEL`` sets the window title, ``ESC [ 2 J``
clears the screen) and stored it; ``browse --search`` and ``restore-select``
printed it raw to the operator's terminal. The form now refuses them (in the
visitor's language), and what the commands print of the data shows them escaped:
an archive made before, or forged, may still hold them."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from guest_registration.extensions import db
from guest_registration.models import Guest, Registration, Trip
from tests.helpers import csrf_token_from, make_backup
from tests.test_browse import _close_sessions  # noqa: F401 (autouse fixture)

EVIL = "Eve\x1b]0;owned\x07\x1b[2J\x1b[1;1H\x9b31m"


@pytest.mark.parametrize("field", ["first_name", "last_name", "document_number"])
@pytest.mark.parametrize("language,message", [
    ("en", "may not contain control characters"), ("cs", "řídicí znaky")])
def test_the_public_form_refuses_control_characters(app, client, trip_id, field, language,
                                                     message):
    values = {"first_name": "Eve", "last_name": "Smith", "document_number": "E1"}
    values[field] = EVIL
    page = client.get(f"/trips/{trip_id}/register?lang={language}")
    response = client.post(f"/trips/{trip_id}/register?lang={language}", data={
        "csrf_token": csrf_token_from(page.get_data(as_text=True)),
        "email": "eve@example.com", "language": language,
        **{f"guests-0-{k}": v for k, v in values.items()},
        "guests-0-age_category": "adult", "guests-0-document_type": "passport",
        "guests-0-gdpr_consent": "y"})
    assert response.status_code == 400 and message in response.get_data(as_text=True)
    with app.app_context():
        assert db.session.query(Guest).count() == 0


def test_ordinary_names_still_pass(app, client, trip_id):
    page = client.get(f"/trips/{trip_id}/register")
    response = client.post(f"/trips/{trip_id}/register", data={
        "csrf_token": csrf_token_from(page.get_data(as_text=True)),
        "email": "zoe@example.com", "language": "en",
        "guests-0-first_name": "Zoë-Ľudmila", "guests-0-last_name": "O'Brien Nováková",
        "guests-0-age_category": "adult", "guests-0-document_type": "passport",
        "guests-0-document_number": "AB 123/45", "guests-0-gdpr_consent": "y"})
    assert response.status_code == 302
    with app.app_context():
        assert db.session.query(Guest).count() == 1


def _stored_evil(app) -> tuple[int, int]:
    """A guest as an older version (or a forged archive) holds it."""
    with app.app_context():
        trip = Trip(title=f"Alps{EVIL}", max_guests=5)
        registration = Registration(trip=trip, email="eve@example.com", language="en")
        guest = Guest(registration=registration, first_name=EVIL, last_name="Smith",
                      age_category="adult", document_type="passport", document_number="E1",
                      gdpr_consent=True)
        db.session.add_all([trip, registration, guest])
        db.session.commit()
        return registration.id, guest.id


def test_commands_print_the_data_s_control_characters_escaped(app, runner):
    registration, guest = _stored_evil(app)
    archive = make_backup(runner)
    with app.app_context():  # so that the archive's guest differs from today's
        db.session.execute(sa.text("UPDATE guest SET last_name = 'Changed'"))
        db.session.commit()
    outputs = {
        "search": runner.invoke(args=["browse", str(archive), "--search", "smith"]),
        "trips": runner.invoke(args=["browse", str(archive)]),
        "trip": runner.invoke(args=["browse", str(archive), "--trip", "1"]),
        "preview": runner.invoke(args=["restore-select", str(archive), "--registration",
                                       str(registration), "--overwrite", str(guest),
                                       "--dry-run"]),
        "erase": runner.invoke(args=["erase", "--guest", str(guest)], input="n\n"),
    }
    for what, result in outputs.items():
        assert "\x1b" not in result.output and "\x07" not in result.output, what
        assert "\x9b" not in result.output, what
        assert "Eve\\x1b]0;owned\\x07" in result.output, (what, result.output)
