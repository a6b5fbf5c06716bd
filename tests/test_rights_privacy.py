"""No personal data in URLs, and no credential from a request body.

- The Guests' rights page: its search is a CSRF-checked POST, and no answer
  redirects with what was searched. A URL ends up in the server's access log
  (gunicorn's ``accesslog``) and the browser's history, where an erased person's
  e-mail address would stay; the ledger and the audit log never keep values.
- The guest export (``/api/backup/guests``) takes an admin from the
  ``Authentication-Token`` header or a session login, never from a token in a JSON
  body (Flask-Security's request loader reads one there, even over the header);
  the audit entry says which (``api`` / ``admin``).
"""

from __future__ import annotations

import re
from html import unescape
from urllib.parse import unquote

import pytest

from guest_registration.extensions import db
from guest_registration.models import AuditEntry, Guest, Registration, Trip
from tests.helpers import ADMIN, API, USER, csrf_token_from

EMAIL = "Jana.Novak@Example.org"
DOCUMENT = "AB 123 456"
PAGE = "/admin/rights/"

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])  # the same on PostgreSQL


def add_jana(app) -> int:
    with app.app_context():
        registration = Registration(trip=Trip(title="Lake Trip", max_guests=9), email=EMAIL)
        db.session.add(Guest(registration=registration, first_name="Jana",
                             last_name="Nováková", age_category="adult",
                             document_type="passport", document_number=DOCUMENT,
                             gdpr_consent=True))
        db.session.commit()
        return registration.id


@pytest.fixture
def urls(app) -> list[str]:
    """Every request line the server sees (what an access log keeps), and every
    redirect's ``Location``."""
    seen: list[str] = []
    inner = app.wsgi_app

    def recording(environ, start_response):
        query = environ.get("QUERY_STRING", "")
        seen.append(environ["PATH_INFO"] + (f"?{query}" if query else ""))

        def start(status, headers, *rest):
            seen.extend(value for name, value in headers if name.lower() == "location")
            return start_response(status, headers, *rest)

        return inner(environ, start)

    app.wsgi_app = recording
    return seen


def form_fields(html: str, form_id: str) -> tuple[str, str, dict[str, str]]:
    """A form of the page: its method, action and hidden fields."""
    form = re.search(rf'<form method="(\w+)" action="([^"]+)"[^>]*id="{form_id}">(.*?)</form>',
                     html, re.S)
    assert form, f"no form {form_id}"
    hidden = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', form[3]))
    return form[1], form[2], {k: unescape(v) for k, v in hidden.items()}


def assert_no_personal_data(seen: list[str]) -> None:
    assert seen
    for url in seen:
        text = unquote(unquote(url)).lower()
        assert "@" not in text and "novak" not in text, url
        assert "ab123456" not in text.replace(" ", "").replace("+", ""), url


def test_an_e_mail_search_and_its_erasure_put_the_address_in_no_url(app, client, auth, urls):
    rid = add_jana(app)
    auth.login()
    page = client.get(PAGE).get_data(as_text=True)
    method, action, hidden = form_fields(page, "rights-search")
    assert (method, action) == ("post", PAGE) and hidden["csrf_token"]
    assert client.post(PAGE, data={"kind": "email", "q": EMAIL}).status_code == 400  # no token
    shown = client.post(PAGE, data={**hidden, "kind": "email", "q": EMAIL})
    assert shown.status_code == 200
    html = shown.get_data(as_text=True)
    assert "What will be erased" in html and "Nováková" in html
    method, action, fields = form_fields(html, "erase-form")  # what the browser sends
    assert (method, action, fields["kind"], fields["q"]) == ("post", f"{PAGE}erase", "email",
                                                            EMAIL)
    done = client.post(action, data=fields, follow_redirects=True)
    assert "Erased: 1 guest(s), 1 registration e-mail(s)" in done.get_data(as_text=True)
    again = client.post(action, data=fields, follow_redirects=True)  # NotFound: bare page
    assert "Nothing to erase" in again.get_data(as_text=True)
    odd = client.post(action, data={**fields, "kind": "guest"}, follow_redirects=True)
    assert "Give a number" in odd.get_data(as_text=True)
    for response in (done, again, odd):
        assert [r.headers["Location"] for r in response.history] == [PAGE]
    assert_no_personal_data(urls)
    with app.app_context():
        assert db.session.get(Registration, rid).email == f"erased-{rid}@invalid"
        assert db.session.query(Guest).one().document_number == "[erased]"


def test_an_address_in_the_url_is_refused_and_ids_still_work(app, client, auth):
    rid = add_jana(app)
    auth.login()
    assert client.get(PAGE, query_string={"kind": "email", "q": EMAIL}).status_code == 400
    page = client.get(PAGE, query_string={"kind": "registration", "q": str(rid)})
    assert page.status_code == 200 and "Nováková" in page.get_data(as_text=True)
    token = csrf_token_from(page.get_data(as_text=True))
    posted = client.post(PAGE, data={"csrf_token": token, "kind": "guest", "q": "1"})
    assert posted.status_code == 200 and "Nováková" in posted.get_data(as_text=True)
    assert "Give a number" in client.post(PAGE, data={
        "csrf_token": token, "kind": "guest", "q": EMAIL}).get_data(as_text=True)


# --- the export: header token or session, never a token in the body ------------------

def last_export(app):
    with app.app_context():
        entry = (db.session.query(AuditEntry).filter_by(action="export")
                 .order_by(AuditEntry.id.desc()).first())
        return entry and (entry.via, entry.actor)


def export(client, **kwargs):
    response = client.get(API, query_string={"year": 2025, "month": 6}, **kwargs)
    response.get_data()
    response.close()
    return response.status_code


def test_a_token_in_a_json_body_is_no_credential_for_the_export(app, client, auth):
    admin, user = auth.token(), auth.token(*USER)
    assert export(client, json={"auth_token": admin}) == 401
    assert export(client, json={"auth_token": admin},
                  headers={"Authentication-Token": "x"}) == 401
    assert export(client, json={"auth_token": admin},
                  headers={"Authentication-Token": user}) == 401
    assert last_export(app) is None
    assert export(client, headers={"Authentication-Token": admin}) == 200
    assert last_export(app) == ("api", ADMIN[0])
    assert export(client, headers={"Authorization": f"Bearer {admin}"}) == 200
    assert last_export(app) == ("api", ADMIN[0])
    auth.login()
    assert export(client) == 200
    assert last_export(app) == ("admin", ADMIN[0])
    assert export(client, json={"auth_token": user}) == 200  # the session's admin
    assert last_export(app) == ("admin", ADMIN[0])
    # a header token decides, whatever session comes with it
    assert export(client, headers={"Authentication-Token": user}) == 403
    assert export(client, headers={"Authentication-Token": "x"}) == 401


def test_a_token_in_a_json_body_is_no_credential_for_the_archive_api(app, client, auth):
    """The archive API took the header's word only when the header's token was
    Flask-Security's choice: with any header, it took an admin token from the body
    (a wrong header, or a non-admin's, with an admin's token in the body: 200)."""
    admin, user = auth.token(), auth.token(*USER)
    for header in ("x", user):
        response = client.get("/api/backup/archives", json={"auth_token": admin},
                              headers={"Authentication-Token": header})
        assert response.status_code == 401, (header, response.status_code)
    assert client.get("/api/backup/archives",
                      headers={"Authentication-Token": admin}).status_code == 200
