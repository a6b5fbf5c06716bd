"""The Restore-a-selection page serves a session's trip, registration, preview
and restore only once it is open: while the archive is still opening the erasure
ledger has not been re-applied to the scratch copy (a guest erased meanwhile would
be shown by name), and a session whose opening failed has no scratch copy (its
engine would create an empty SQLite file, or fail to connect: a 503). Both go to
the session page, which tells how the opening goes."""

from __future__ import annotations

import re
import threading
import time

import pytest

from guest_backup.ops.browse import get_session
from guest_backup.wiring import backup_context
from tests.helpers import csrf_token_from
from tests.test_browse import _close_sessions, live, scratch_exists  # noqa: F401 (autouse)
from tests.test_browse_page import BASE, admin, html, verified_archive  # noqa: F401 (fixture)


def start_opening(admin, name: str) -> str:
    token = csrf_token_from(html(admin.get(f"{BASE}/")))
    resp = admin.post(f"{BASE}/open", data={"csrf_token": token, "archive": name})
    assert resp.status_code == 302, resp.status_code
    return re.search(r"/s/([0-9a-f]{16})/", resp.headers["Location"]).group(1)


def wait_for(admin, sid: str, marker: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if marker in html(admin.get(f"{BASE}/s/{sid}/")):
            return
        time.sleep(0.2)
    raise AssertionError(f"the session never showed {marker}")


def session_of(app, sid: str):
    with app.app_context():
        return get_session(backup_context(), sid)


def assert_sent_to_the_session_page(admin, sid: str, state: str, *, hidden: str | None = None,
                                    ids: tuple[int, int] = (1, 1), check=None) -> None:
    """Registration, trip, preview and restore: a redirect to the session page
    (``hidden`` shown by none, ``check`` true after each)."""
    trip_id, registration_id = ids
    token = csrf_token_from(html(admin.get(f"{BASE}/")))
    for method, path, data in (
            ("get", f"registration/{registration_id}", None),
            ("get", f"trip/{trip_id}", None),
            ("post", "preview", {"csrf_token": token, "registration": str(registration_id)}),
            ("post", "restore", {"csrf_token": token, "token": "0" * 32})):
        resp = getattr(admin, method)(f"{BASE}/s/{sid}/{path}", data=data)
        assert hidden is None or hidden not in resp.get_data(as_text=True), path
        assert check is None or check(), path
        assert resp.status_code == 302, (path, resp.status_code)
        assert resp.headers["Location"].endswith(f"{BASE}/s/{sid}/"), path
        shown = html(admin.get(resp.headers["Location"]))
        assert f'data-state="{state}"' in shown, path
        assert hidden is None or hidden not in shown, path


def test_a_guest_erased_while_the_archive_opens_is_never_shown(app, admin, runner,
                                                               monkeypatch):
    import guest_backup.ops.browse_load as browse_load

    name = verified_archive(admin, runner)
    guest, document, reg, trip = live(  # document numbers are unique in the demo data
        app, "SELECT g.id, g.document_number, g.registration_id, r.trip_id FROM guest g "
             "JOIN registration r ON r.id = g.registration_id ORDER BY g.id")[0]
    assert live(app, "SELECT count(*) FROM guest WHERE document_number = :d",
                d=document) == [(1,)]
    loaded, release = threading.Event(), threading.Event()
    real = browse_load.add_search_indexes

    def held(engine):  # the archive is loaded; the search indexes wait
        loaded.set()
        release.wait(60)
        return real(engine)

    monkeypatch.setattr(browse_load, "add_search_indexes", held)
    sid = start_opening(admin, name)
    try:
        assert loaded.wait(60)
        result = runner.invoke(args=["erase", "--guest", str(guest), "--yes"])
        assert result.exit_code == 0, result.output
        assert session_of(app, sid).state == "opening"
        assert_sent_to_the_session_page(admin, sid, "opening", hidden=document,
                                        ids=(trip, reg))
    finally:
        release.set()
    wait_for(admin, sid, 'id="browse-session"')
    for path in (f"registration/{reg}", f"trip/{trip}"):
        page = html(admin.get(f"{BASE}/s/{sid}/{path}"))  # open: the ledger re-applied
        assert 'id="browse-compare-page"' in page and document not in page, path


def test_a_session_that_failed_to_open_is_not_served(app, admin, runner, monkeypatch):
    import guest_backup.ops.browse_load as browse_load

    name = verified_archive(admin, runner)

    def broken(engine):
        raise RuntimeError("the index step failed")

    monkeypatch.setattr(browse_load, "add_search_indexes", broken)
    sid = start_opening(admin, name)
    wait_for(admin, sid, 'data-state="failed"')
    session = session_of(app, sid)
    assert session.state == "failed" and not scratch_exists(app, session)
    assert_sent_to_the_session_page(admin, sid, "failed",  # no empty scratch copy made again
                                    check=lambda: not scratch_exists(app, session))
    token = csrf_token_from(html(admin.get(f"{BASE}/")))
    closed = admin.post(f"{BASE}/s/{sid}/close", data={"csrf_token": token})
    assert closed.status_code == 302 and session_of(app, sid) is None


@pytest.mark.parametrize("backend", ["sqlite"])
def test_an_open_session_is_still_served(app, admin, runner):
    from tests.test_browse_page import open_session

    sid = open_session(admin, verified_archive(admin, runner))
    reg, trip = live(app, "SELECT id, trip_id FROM registration ORDER BY id")[0]
    for path in (f"registration/{reg}", f"trip/{trip}"):
        assert 'id="browse-compare-page"' in html(admin.get(f"{BASE}/s/{sid}/{path}")), path
