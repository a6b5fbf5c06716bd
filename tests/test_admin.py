"""The admin panel: who gets in, what admins see, CSRF on model forms, photos."""

from __future__ import annotations

import pytest

from guest_registration.extensions import db
from guest_registration.models import Trip
from tests.helpers import ADMIN, USER, add_guest_with_photo, csrf_token_from

MODEL_VIEWS = ["trip", "registration", "guest", "user"]


def admin_urls(app) -> list[str]:
    """Every GET admin URL without parameters, from the url map (not hand-picked)."""
    urls = []
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/admin") and "GET" in rule.methods and not rule.arguments:
            if "static" not in rule.endpoint:
                urls.append(rule.rule)
    return sorted(set(urls))


def test_anonymous_is_sent_to_login(client, app):
    urls = admin_urls(app)
    assert "/admin/" in urls and "/admin/backup/" in urls
    for url in urls:
        resp = client.get(url)
        assert resp.status_code == 302, url
        assert "/login" in resp.headers["Location"], url


def test_non_admin_gets_403_everywhere(client, auth, app):
    auth.login(*USER)
    guest_id = add_guest_with_photo(app)
    for url in admin_urls(app) + [f"/admin/guest/photo/{guest_id}"]:
        assert client.get(url).status_code == 403, url


def test_admin_sees_every_menu_entry(client, auth):
    auth.login()
    page = client.get("/admin/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    for label in ("Trips", "Registrations", "Guests", "Users", "Backup", "System Backup"):
        assert label in html, label
    for view in MODEL_VIEWS:
        assert client.get(f"/admin/{view}/").status_code == 200, view
    assert client.get("/admin/backup/").status_code == 200


def test_admin_model_form_requires_csrf(client, auth, app):
    auth.login()
    resp = client.post("/admin/trip/new/", data={"title": "No token", "max_guests": "3"})
    assert resp.status_code == 200  # form re-rendered with the CSRF error
    with app.app_context():
        assert db.session.query(Trip).filter_by(title="No token").count() == 0
    page = client.get("/admin/trip/new/").get_data(as_text=True)
    token = csrf_token_from(page)
    resp = client.post("/admin/trip/new/", data={"title": "With token", "max_guests": "3",
                                                 "csrf_token": token})
    assert resp.status_code == 302
    with app.app_context():
        assert db.session.query(Trip).filter_by(title="With token").count() == 1


def test_admin_delete_requires_csrf(client, auth, app):
    auth.login()
    with app.app_context():
        trip = Trip(title="Keep me", max_guests=2)
        db.session.add(trip)
        db.session.commit()
        trip_id = trip.id
    client.post("/admin/trip/delete/", data={"id": str(trip_id)})
    with app.app_context():
        assert db.session.get(Trip, trip_id) is not None


def test_photo_route_serves_admins_only(client, auth, app):
    guest_id = add_guest_with_photo(app)
    assert client.get(f"/admin/guest/photo/{guest_id}").status_code == 302
    auth.login()
    resp = client.get(f"/admin/guest/photo/{guest_id}")
    assert resp.status_code == 200
    assert resp.data.startswith(b"\x89PNG")
    assert resp.headers["Cache-Control"] == "no-store"
    listing = client.get("/admin/guest/").get_data(as_text=True)
    assert f"/admin/guest/photo/{guest_id}" in listing


def test_photo_route_refuses_odd_names(client, auth, app):
    guest_id = add_guest_with_photo(app, name="../../etc/passwd")
    auth.login()
    assert client.get(f"/admin/guest/photo/{guest_id}").status_code == 404
    assert client.get("/admin/guest/photo/999999").status_code == 404


@pytest.mark.parametrize("path", ["/uploads/x.png", "/static/uploads/x.png", "/instance/uploads/x.png"])
def test_upload_folder_is_not_served(client, path):
    assert client.get(path).status_code == 404


def test_security_headers(client, auth):
    auth.login()
    resp = client.get("/admin/")
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["Cache-Control"] == "no-store"


def test_login_page_uses_admin_layout(client):
    html = client.get("/login").get_data(as_text=True)
    assert "navbar" in html and "bootstrap.min.css" in html and "Guest Registration" in html
    assert 'name="csrf_token"' in html


def test_login_without_csrf_is_rejected(client):
    resp = client.post("/login", data={"email": ADMIN[0], "password": ADMIN[1]})
    assert resp.status_code == 400  # the CSRF check refuses the form: our error page
    assert "The form expired or was not sent from this site." in resp.get_data(as_text=True)
    assert client.get("/admin/").status_code == 302  # and nobody was logged in


def test_token_login_and_header(client, auth, app):
    token = auth.token()
    assert len(token) > 20
    # the token is a valid credential for Flask-Security's own auth check: the
    # request that carries it is the admin's
    resp = client.get("/admin/", headers={"Authentication-Token": token})
    assert resp.status_code == 200 and 'id="logout-form"' in resp.get_data(as_text=True)
    # but it logs nobody in: the next request without it goes to the login page
    after = client.get("/admin/")
    assert after.status_code == 302 and "/login" in after.headers["Location"]


def test_logout_is_a_csrf_checked_post(client, auth):
    auth.login()
    page = client.get("/admin/").get_data(as_text=True)
    assert 'id="logout-form"' in page
    assert client.get("/logout").status_code == 405
    client.post("/logout")  # no token: refused, still logged in
    assert client.get("/admin/").status_code == 200
    client.post("/logout", data={"csrf_token": csrf_token_from(page)})
    assert client.get("/admin/").status_code == 302


def admin_link(html: str) -> bool:
    return 'id="admin-link"' in html and ">Admin</a>" in html


def test_public_pages_link_the_admin_panel_for_visitors_and_admins(client, auth, trip_id):
    public = ("/", f"/trips/{trip_id}/register", "/no-such-page")
    assert all(admin_link(client.get(path).get_data(as_text=True)) for path in public)
    auth.login()  # an admin keeps the link (it was gone once logged in)
    for path in public:
        page = client.get(path).get_data(as_text=True)
        assert admin_link(page) and 'id="logout-form"' in page, path
    assert client.get("/admin/").status_code == 200


def test_public_pages_have_no_admin_link_for_other_users(client, auth, trip_id):
    auth.login(*USER)  # not an admin: the panel would answer 403
    for path in ("/", f"/trips/{trip_id}/register"):
        page = client.get(path).get_data(as_text=True)
        assert not admin_link(page) and 'id="logout-form"' in page, path
