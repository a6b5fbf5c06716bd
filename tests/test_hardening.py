"""Hardening, item by item (from the hardening issue): odd input is a 400, not a
500; tokens only in the header; setup never silently resets a password; no hash
or uniquifier in the admin; no registration for a trip that has ended."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from guest_registration.extensions import db
from guest_registration.models import Guest, Registration, Trip, User
from tests.helpers import ADMIN, API, csrf_token_from


@pytest.mark.parametrize("query", ["page=-5", "page=99999999999999999999", "page=1e3",
                                   "page_size=-1", "search=%00", "flt1_0=%00"])
def test_odd_admin_list_parameters_are_a_400(client, auth, query):
    auth.login()
    response = client.get(f"/admin/guest/?{query}")
    assert response.status_code == 400
    assert "Traceback" not in response.get_data(as_text=True)


def test_a_nul_byte_in_a_registration_is_a_400_and_nothing_is_stored(app, client, trip_id):
    page = client.get(f"/trips/{trip_id}/register")
    response = client.post(f"/trips/{trip_id}/register", data={
        "csrf_token": csrf_token_from(page.get_data(as_text=True)),
        "email": "nul@example.com", "language": "en",
        "guests-0-first_name": "Ja\x00na", "guests-0-last_name": "N",
        "guests-0-age_category": "adult", "guests-0-document_type": "passport",
        "guests-0-document_number": "X1", "guests-0-gdpr_consent": "y"})
    assert response.status_code == 400
    with app.app_context():
        assert db.session.query(Guest).count() == 0


def test_tokens_in_the_query_string_are_refused(client, auth):
    token = auth.token()
    assert client.get("/admin/", headers={"Authentication-Token": token}).status_code == 200
    in_url = client.get(f"/admin/?auth_token={token}")
    assert in_url.status_code == 400
    api = client.get(f"{API}?year=2025&month=6&auth_token={token}")
    assert api.status_code == 400 and api.is_json


def test_setup_keeps_an_existing_password_unless_told(app, runner, client, auth):
    result = runner.invoke(args=["setup", "--admin-email", ADMIN[0], "--admin-password",
                                 "published-demo-password"])
    assert result.exit_code == 0 and "password unchanged" in result.output
    assert auth.login().status_code == 302  # the old password still works
    auth.logout()
    assert auth.login(ADMIN[0], "published-demo-password").status_code != 302
    reset = runner.invoke(args=["setup", "--admin-email", ADMIN[0], "--admin-password",
                                "a-new-password-1", "--reset-password"])
    assert reset.exit_code == 0 and "password reset" in reset.output
    assert auth.login(ADMIN[0], "a-new-password-1").status_code == 302


def test_no_hash_or_uniquifier_in_the_admin(app, client, auth):
    auth.login()
    with app.app_context():
        user = db.session.query(User).filter_by(email=ADMIN[0]).one()
        secrets = [user.password, user.fs_uniquifier]
        if getattr(user, "fs_token_uniquifier", None):
            secrets.append(user.fs_token_uniquifier)
        user_id = user.id
    for url in ("/admin/user/", f"/admin/user/details/?id={user_id}",
                f"/admin/user/edit/?id={user_id}"):
        page = client.get(url).get_data(as_text=True)
        assert "$argon2" not in page, url
        assert not [s for s in secrets if s and s in page], url


def test_no_registration_for_a_trip_that_has_ended(app, client):
    with app.app_context():
        trip = Trip(title="Last summer", max_guests=3, start_date=date.today() - timedelta(days=9),
                    end_date=date.today() - timedelta(days=2))
        db.session.add(trip)
        db.session.commit()
        trip_id = trip.id
    page = client.get(f"/trips/{trip_id}/register")
    assert page.status_code == 410 and "registration is closed" in page.get_data(as_text=True)
    posted = client.post(f"/trips/{trip_id}/register", data={"email": "late@example.com"})
    assert posted.status_code == 410
    with app.app_context():
        assert db.session.query(Registration).count() == 0
