"""The UI review's findings through the test client: a login asked for by a POST
button comes back to the page the button was on (not the POST-only path, a 405),
the language picker on a page that answers a POST goes back to a page that can be
got, and the messages of opening and restoring are in the page's language."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.helpers import csrf_token_from
from tests.test_browse import _close_sessions, live  # noqa: F401 (autouse fixture)
from tests.test_browse_page import BASE, html, open_session, verified_archive

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


@pytest.fixture
def admin(client, auth, runner):
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    auth.login()
    return client


def _login_next(resp) -> str:
    assert resp.status_code == 302, resp.status_code
    location = urlsplit(resp.headers["Location"])
    assert location.path == "/login", resp.headers["Location"]
    return parse_qs(location.query)["next"][0]


def _signed_out_post(client, path: str, **headers):
    token = csrf_token_from(client.get("/login").get_data(as_text=True))
    return client.post(path, data={"csrf_token": token}, headers=headers)


def test_a_post_button_signed_out_logs_in_back_to_its_page(client, app):
    resp = _signed_out_post(client, "/admin/backup/start",
                            Referer="http://localhost/admin/backup/?lang=cs")
    assert _login_next(resp) == "/admin/backup/?lang=cs"
    # no referrer, or another site's: the view's own page, never the POST-only path
    assert _login_next(_signed_out_post(client, "/admin/backup/verify/x.zip")) == "/admin/backup/"
    resp = _signed_out_post(client, "/admin/backup/verify/x.zip",
                            Referer="https://evil.example/admin/backup/")
    assert _login_next(resp) == "/admin/backup/"
    # a model view's POST (a delete) signed out: its list
    assert _login_next(_signed_out_post(client, "/admin/trip/delete/")) == "/admin/trip/"
    # a GET still comes back to itself
    assert _login_next(client.get("/admin/backup/?lang=de")) == "/admin/backup/?lang=de"


def _picker_next(page: str) -> str:
    form = re.search(r'<form[^>]*action="/language".*?</form>', page, re.S).group(0)
    return re.search(r'name="next" value="([^"]*)"', form).group(1).replace("&amp;", "&")


def _preview(app, admin, runner, sid: str, **headers) -> str:
    trip_id = live(app, "SELECT min(trip_id) FROM registration")[0][0]
    token = csrf_token_from(html(admin.get(f"{BASE}/s/{sid}/trip/{trip_id}")))
    return html(admin.post(f"{BASE}/s/{sid}/preview", headers=headers,
                           data={"csrf_token": token, "trip": str(trip_id)}))


def test_the_language_picker_on_a_preview_goes_back_to_a_page(app, admin, runner):
    sid = open_session(admin, verified_archive(admin, runner))
    referrer = f"http://localhost{BASE}/s/{sid}/trip/1?lang=cs&x=1"
    page = _preview(app, admin, runner, sid, Referer=referrer)
    assert _picker_next(page) == f"{BASE}/s/{sid}/trip/1?x=1"
    assert _picker_next(_preview(app, admin, runner, sid)) == f"{BASE}/"
    page = _preview(app, admin, runner, sid, Referer="https://evil.example/x")
    assert _picker_next(page) == f"{BASE}/"


def test_a_restore_posted_again_says_so_in_the_page_language(app, admin, runner):
    sid = open_session(admin, verified_archive(admin, runner))
    admin.get("/admin/?lang=cs")
    page = _preview(app, admin, runner, sid)
    plan_token = re.search(r'name="token" value="([0-9a-f]{32})"', page).group(1)
    token = csrf_token_from(page)
    data = {"csrf_token": token, "token": plan_token}
    assert 'id="browse-result"' in html(admin.post(f"{BASE}/s/{sid}/restore", data=data))
    again = html(admin.post(f"{BASE}/s/{sid}/restore", data=data, follow_redirects=True))
    assert "tento náhled už není k dispozici: zobrazte náhled znovu" in again
    assert "no longer available" not in again


def test_too_many_open_archives_in_the_page_language(app, admin, runner, monkeypatch):
    import guest_backup.ops.browse as browse

    name = verified_archive(admin, runner)
    monkeypatch.setattr(browse, "MAX_SESSIONS", 0)
    token = csrf_token_from(html(admin.get(f"{BASE}/?lang=cs")))
    page = html(admin.post(f"{BASE}/open", data={"csrf_token": token, "archive": name},
                           follow_redirects=True))
    assert "otevřených archivů je už 0: nejprve jeden zavřete" in page
    assert "open already" not in page


def test_the_audit_log_shows_actions_and_outcomes_in_words(app, admin, runner):
    verified_archive(admin, runner)
    page = html(admin.get("/admin/audit/?lang=cs"))
    cells = re.findall(r'<td class="col-(action|outcome)">\s*(.*?)\s*</td>', page, re.S)
    shown = {(column, text) for column, text in cells}
    assert ("action", "ověření") in shown and ("outcome", "v pořádku") in shown, shown
    assert ("action", "verify") not in shown and ("outcome", "ok") not in shown, shown


def test_without_labels_the_audit_log_shows_the_codes(app, admin, runner):
    from guest_registration.i18n import AUDIT_LABELS

    verified_archive(admin, runner)
    app.extensions.pop(AUDIT_LABELS)
    cells = re.findall(r'<td class="col-(action|outcome)">\s*(.*?)\s*</td>',
                       html(admin.get("/admin/audit/?lang=cs")), re.S)
    assert ("action", "verify") in cells and ("outcome", "ok") in cells, cells


def test_a_started_backup_is_asked_after_once_whatever_its_state(app, admin, monkeypatch):
    """A backup done before the page reloads still downloads: the page knows which job
    its button started (and its script polls once for it)."""
    import guest_backup.web.views as views

    monkeypatch.setattr(views, "start_job", lambda app, actor: {"id": "ab12cd"})
    token = csrf_token_from(html(admin.get("/admin/backup/")))
    resp = admin.post("/admin/backup/start", data={"csrf_token": token})
    assert resp.status_code == 302
    assert resp.headers["Location"].endswith("/admin/backup/?started=ab12cd#system-backup")
    page = html(admin.get("/admin/backup/?started=ab12cd"))
    assert 'data-started="ab12cd"' in page
    assert "if (seenRunning) { poll(); }" in page
