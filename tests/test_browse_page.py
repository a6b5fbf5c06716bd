"""The Restore-a-selection page through the test client (the real browser walks
it in tests/browser/test_browser_selective_restore.py): only verified archives,
admin-only, CSRF on every POST, and the whole way from opening an archive to the
rows back, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
import time

import pytest

from tests.helpers import USER, csrf_token_from, make_backup
from tests.test_browse import _close_sessions, audit, live  # noqa: F401 (autouse fixture)

BASE = "/admin/backup/browse"


@pytest.fixture
def admin(client, auth, runner):
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    auth.login()
    return client


def html(resp) -> str:
    assert resp.status_code == 200, resp.status_code
    return resp.get_data(as_text=True)


def verified_archive(admin, runner) -> str:
    name = make_backup(runner).name
    token = csrf_token_from(html(admin.get("/admin/backup/")))
    admin.post(f"/admin/backup/verify/{name}", data={"csrf_token": token})
    return name


def open_session(admin, name: str) -> str:
    """Open ``name`` through the page and wait for the thread to load it; the id."""
    token = csrf_token_from(html(admin.get(f"{BASE}/")))
    resp = admin.post(f"{BASE}/open", data={"csrf_token": token, "archive": name})
    assert resp.status_code == 302, resp.status_code
    sid = re.search(r"/s/([0-9a-f]{16})/", resp.headers["Location"]).group(1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        page = html(admin.get(f"{BASE}/s/{sid}/"))
        if 'id="browse-session"' in page:
            return sid
        assert 'data-state="opening"' in page, page
        time.sleep(0.2)
    raise AssertionError("the archive did not open")


def test_only_verified_archives_are_offered_and_opened(admin, runner):
    name = make_backup(runner).name
    page = html(admin.get(f"{BASE}/"))
    assert name not in page and 'id="browse-no-archives"' in page
    token = csrf_token_from(page)
    resp = admin.post(f"{BASE}/open", data={"csrf_token": token, "archive": name},
                      follow_redirects=True)
    assert "Only an archive that passed verification" in html(resp)
    assert "/s/" not in resp.request.path
    for hostile in ("../../etc/passwd", "x" * 5000, ""):
        resp = admin.post(f"{BASE}/open", data={"csrf_token": token, "archive": hostile},
                          follow_redirects=True)
        assert "Only an archive that passed verification" in html(resp)


def test_non_admin_and_missing_csrf_are_refused(client, auth, admin, runner):
    name = verified_archive(admin, runner)
    sid = open_session(admin, name)
    assert admin.post(f"{BASE}/open", data={"archive": name}).status_code == 400
    assert admin.post(f"{BASE}/s/{sid}/preview", data={"trip": "1"}).status_code == 400
    assert admin.post(f"{BASE}/s/{sid}/restore", data={"token": "0" * 32}).status_code == 400
    assert admin.post(f"{BASE}/s/{sid}/close").status_code == 400
    assert admin.get(f"{BASE}/s/{'0' * 16}/").status_code == 404
    assert admin.get(f"{BASE}/s/..%2f..%2fetc/").status_code == 404
    auth.logout()
    auth.login(*USER)
    for url in (f"{BASE}/", f"{BASE}/s/{sid}/", f"{BASE}/s/{sid}/trip/1",
                f"{BASE}/s/{sid}/registration/1"):
        assert client.get(url).status_code == 403, url
    assert client.post(f"{BASE}/open", data={"archive": name}).status_code in (400, 403)
    auth.logout()
    assert client.get(f"{BASE}/s/{sid}/").status_code in (302, 401, 403)


def test_bad_search_input_is_a_message(admin, runner):
    sid = open_session(admin, verified_archive(admin, runner))
    for query in ("trip=abc", "from=2025-13-45", "after=-1", "n=99999999999999999999",
                  "trip=2147483648", "after=99999999999"):
        page = html(admin.get(f"{BASE}/s/{sid}/?{query}"))
        assert "Give numbers for the trip" in page, query
    page = html(admin.get(f"{BASE}/s/{sid}/?q=%25&trip=&from=&to="))
    assert 'id="browse-nothing"' in page  # "%" is a plain character
    for path in ("trip/2147483648", "registration/99999999999999999999", "trip/999999"):
        assert admin.get(f"{BASE}/s/{sid}/{path}").status_code == 404, path
    token = csrf_token_from(page)
    for bad in ({"trip": "2147483648"}, {"registration": "x"}, {}):
        resp = admin.post(f"{BASE}/s/{sid}/preview", data={"csrf_token": token, **bad},
                          follow_redirects=True)
        assert ("not an id" in html(resp) or "Choose a trip" in html(resp)), bad


def test_search_compare_preview_restore(app, admin, runner):
    sid = open_session(admin, verified_archive(admin, runner))
    trip_id = live(app, "SELECT min(trip_id) FROM registration")[0][0]
    before = live(app, "SELECT g.id, g.first_name, g.last_name, g.document_number, r.id, "
                       "r.email FROM guest g JOIN registration r ON r.id = g.registration_id "
                       "WHERE r.trip_id = :t ORDER BY g.id", t=trip_id)
    live(app, "DELETE FROM guest WHERE registration_id IN (SELECT id FROM registration "
              "WHERE trip_id = :t)", t=trip_id)
    live(app, "DELETE FROM registration WHERE trip_id = :t", t=trip_id)
    other = live(app, "SELECT max(id) FROM trip")[0][0]
    live(app, "INSERT INTO registration (trip_id, email) VALUES (:t, 'after@example.com')",
         t=other)
    page = html(admin.get(f"{BASE}/s/{sid}/?q={before[0][2]}&trip={trip_id}"))
    assert f'data-guest="{before[0][0]}"' in page and 'data-status="archive_only"' in page
    page = html(admin.get(f"{BASE}/s/{sid}/?q={before[0][2]}&trip={trip_id}&compare=1"))
    assert 'data-status="archive_only"' in page
    page = html(admin.get(f"{BASE}/s/{sid}/trip/{trip_id}"))
    regs = len({r[4] for r in before})
    assert re.search(r'data-table="registration">.*?data-kind="archive_only">(\d+)<', page,
                     re.S).group(1) == str(regs)
    token = csrf_token_from(page)
    preview = html(admin.post(f"{BASE}/s/{sid}/preview",
                              data={"csrf_token": token, "trip": str(trip_id)}))
    assert 'id="browse-preview-page"' in preview
    plan_token = re.search(r'name="token" value="([0-9a-f]{32})"', preview).group(1)
    counts = re.search(r'data-action="insert">.*?</tr>', preview, re.S).group(0)
    assert f'data-table="registration">{regs}<' in counts
    assert f'data-table="guest">{len(before)}<' in counts
    result = html(admin.post(f"{BASE}/s/{sid}/restore",
                             data={"csrf_token": token, "token": plan_token}))
    assert 'id="browse-result"' in result and "See the registrations" in result
    after = live(app, "SELECT g.id, g.first_name, g.last_name, g.document_number, r.id, "
                      "r.email FROM guest g JOIN registration r ON r.id = g.registration_id "
                      "WHERE r.trip_id = :t ORDER BY g.id", t=trip_id)
    assert after == before
    assert live(app, "SELECT count(*) FROM registration "
                     "WHERE email = 'after@example.com'") == [(1,)]
    again = admin.post(f"{BASE}/s/{sid}/restore", data={"csrf_token": token, "token": plan_token},
                       follow_redirects=True)
    assert "no longer available" in html(again)
    assert any(e["action"] == "restore-select" and e["outcome"] == "ok" for e in audit(app))


def test_overwrite_one_changed_guest_and_erased_guests_left_out(app, admin, runner):
    sid = open_session(admin, verified_archive(admin, runner))
    reg, first, second = live(app, "SELECT registration_id, min(id), max(id) FROM guest "
                                   "GROUP BY registration_id HAVING count(*) >= 2 "
                                   "ORDER BY registration_id LIMIT 1")[0]
    names = dict(live(app, "SELECT id, first_name FROM guest WHERE id IN (:a, :b)",
                      a=first, b=second))
    live(app, "UPDATE guest SET first_name = 'Today' WHERE id IN (:a, :b)", a=first, b=second)
    page = html(admin.get(f"{BASE}/s/{sid}/registration/{reg}"))
    assert page.count('name="overwrite_guest"') == 2
    erased_reg, erased = live(app, "SELECT registration_id, max(id) FROM guest WHERE "
                                   "registration_id <> :r GROUP BY registration_id "
                                   "ORDER BY registration_id LIMIT 1", r=reg)[0]
    erased_name = live(app, "SELECT last_name FROM guest WHERE id = :g", g=erased)[0][0]
    result = runner.invoke(args=["erase", "--guest", str(erased), "--yes"])
    assert result.exit_code == 0, result.output
    shown = html(admin.get(f"{BASE}/s/{sid}/registration/{erased_reg}"))  # erased since opening
    row = re.search(rf"<tr><td>{erased}</td>.*?</tr>", shown).group(0)
    assert "[erased]" in row and erased_name not in row
    token = csrf_token_from(page)
    preview = html(admin.post(f"{BASE}/s/{sid}/preview", data={
        "csrf_token": token, "registration": [str(reg), str(erased_reg)],
        "overwrite_guest": str(first)}))
    overwrite = re.search(r'id="plan-overwrite".*?</table>', preview, re.S).group(0)
    assert f'data-id="{first}"' in overwrite and f'data-id="{second}"' not in overwrite
    left = re.search(r'id="plan-leave".*?</table>', preview, re.S).group(0)
    assert f'data-id="{second}" data-reason="changed"' in left
    erased_part = re.search(r'id="plan-erased".*?</table>', preview, re.S).group(0)
    assert f'data-id="{erased}"' in erased_part and "never restored" in erased_part
    plan_token = re.search(r'name="token" value="([0-9a-f]{32})"', preview).group(1)
    html(admin.post(f"{BASE}/s/{sid}/restore", data={"csrf_token": token, "token": plan_token}))
    now = dict(live(app, "SELECT id, first_name FROM guest WHERE id IN (:a, :b)",
                    a=first, b=second))
    assert now == {first: names[first], second: "Today"}
    assert live(app, "SELECT first_name FROM guest WHERE id = :g", g=erased) == [("[erased]",)]


def test_an_erasure_after_the_preview_stops_the_restore(app, admin, runner):
    """The kept plan carries the erasure ledger's last line; an erasure recorded
    after the preview makes the restore refuse it with nothing written."""
    sid = open_session(admin, verified_archive(admin, runner))
    reg = live(app, "SELECT min(id) FROM registration")[0][0]
    other = live(app, "SELECT min(g.id) FROM guest g WHERE g.registration_id <> :r", r=reg)[0][0]
    live(app, "DELETE FROM guest WHERE registration_id = :r", r=reg)
    live(app, "DELETE FROM registration WHERE id = :r", r=reg)
    token = csrf_token_from(html(admin.get(f"{BASE}/s/{sid}/")))
    preview = html(admin.post(f"{BASE}/s/{sid}/preview",
                              data={"csrf_token": token, "registration": str(reg)}))
    plan_token = re.search(r'name="token" value="([0-9a-f]{32})"', preview).group(1)
    assert runner.invoke(args=["erase", "--guest", str(other), "--yes"]).exit_code == 0

    result = html(admin.post(f"{BASE}/s/{sid}/restore", data={"csrf_token": token,
                                                              "token": plan_token},
                             follow_redirects=True))
    assert "an erasure was recorded since the preview" in result
    assert live(app, "SELECT count(*) FROM registration WHERE id = :r", r=reg) == [(0,)]
    assert any(e["action"] == "restore-select" and e["outcome"] == "failed" for e in audit(app))


def test_a_copy_the_ledger_could_not_be_applied_to_is_not_shown(app, admin, runner,
                                                                 monkeypatch):
    """Before, the page said so and showed the copy all the same, which may hold a
    guest erased since it was opened."""
    import guest_backup.web.browse as browse_view
    from guest_backup.errors import BackupError

    sid = open_session(admin, verified_archive(admin, runner))

    def broken(session):
        raise BackupError("the erasure ledger is broken")

    monkeypatch.setattr(browse_view, "refresh_erasures", broken)
    for path in (f"{BASE}/s/{sid}/", f"{BASE}/s/{sid}/?q=Nov"):
        resp = admin.get(path)
        assert resp.status_code == 302 and resp.headers["Location"].endswith(f"{BASE}/")
        assert 'id="browse-session"' not in resp.get_data(as_text=True)
    page = html(admin.get(f"{BASE}/"))
    assert "The erasure ledger could not be applied" in page
