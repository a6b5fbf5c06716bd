"""Restore a selection in a real browser (Debian chromium through Playwright)
against the real app on PostgreSQL: a trip's registrations are deleted after the
archive and a registration is added elsewhere; the admin opens the archive from
the Backup page, searches a name, compares the trip with today, previews,
restores, and sees the registrations back in the admin list, while a request
loop keeps getting answers."""

from __future__ import annotations

import re
import threading
import urllib.request

import pytest
import sqlalchemy as sa

from tests.browser.helpers import no_problems, screenshot
from tests.helpers import ADMIN, USER
from tests.live_server import ARTIFACTS, pg_live_server

OPEN_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def server(browser, pg_server, tmp_path_factory):
    """The real app on a database of its own (overrides conftest's ``server``)."""
    with pg_live_server(pg_server, "gr_browser_select", tmp_path_factory.mktemp("live-select"),
                        admin=ADMIN, user=USER,
                        log_path=ARTIFACTS / "live-server-select.log") as srv:
        yield srv


def rows(engine, sql: str, **params) -> list[tuple]:
    with engine.begin() as conn:
        result = conn.execute(sa.text(sql), params)
        return [tuple(r) for r in result] if result.returns_rows else []


def lose_a_trip(engine) -> tuple[int, list[tuple]]:
    """Delete one trip's registrations and guests, add a registration elsewhere;
    the trip's id and its rows as they were."""
    trip_id = rows(engine, "SELECT trip_id FROM registration GROUP BY trip_id "
                           "ORDER BY count(*) DESC LIMIT 1")[0][0]
    before = rows(engine, "SELECT g.id, g.first_name, g.last_name, g.document_number, r.id, "
                          "r.email, r.status FROM guest g JOIN registration r "
                          "ON r.id = g.registration_id WHERE r.trip_id = :t ORDER BY g.id",
                  t=trip_id)
    rows(engine, "DELETE FROM guest WHERE registration_id IN (SELECT id FROM registration "
                 "WHERE trip_id = :t)", t=trip_id)
    rows(engine, "DELETE FROM registration WHERE trip_id = :t", t=trip_id)
    other = rows(engine, "SELECT min(id) FROM trip WHERE id <> :t", t=trip_id)[0][0]
    rows(engine, "INSERT INTO registration (trip_id, email) VALUES (:t, 'tuesday@example.com')",
         t=other)
    return trip_id, before


class RequestLoop(threading.Thread):
    """GET / again and again until stopped; every status (or error) it saw."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.seen, self.stop = url, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=10) as resp:
                    self.seen.append(resp.status)
            except Exception as exc:  # noqa: BLE001 - recorded, asserted below
                self.seen.append(repr(exc))


def test_open_search_compare_preview_restore(admin_page, server, db_engine, problems):
    from playwright.sync_api import expect

    page = admin_page
    archive = server.manage("backup").strip().splitlines()[-1]
    name = archive.rsplit("/", 1)[-1]
    assert "OK " in server.manage("verify", archive)
    trip_id, before = lose_a_trip(db_engine)
    guest_last_name, emails = before[0][2], sorted({r[5] for r in before})

    page.goto(server.url("/admin/backup/"))
    page.locator("#restore-selection-link").click()
    page.locator(f'tr[data-archive="{name}"]').get_by_role("button", name="Open").click()
    expect(page.locator("#browse-session")).to_be_visible(timeout=OPEN_TIMEOUT_MS)
    expect(page.locator("#browse-archive")).to_have_text(name)
    scratch = "guest_browse_" + page.locator("#browse-session").get_attribute("data-session")
    assert rows(db_engine, "SELECT 1 FROM pg_database WHERE datname = :n", n=scratch)

    page.locator("#browse-q").fill(guest_last_name)
    page.locator("#browse-trip").select_option(str(trip_id))
    page.locator("#browse-search-go").click()
    lost = page.locator(f'tr[data-guest="{before[0][0]}"]')
    expect(lost).to_have_attribute("data-status", "archive_only")
    expect(lost).to_contain_text("deleted since")
    screenshot(page, "selective-restore-search.png")

    lost.get_by_role("link").nth(1).click()  # the trip: compare it with today
    counts = page.locator('#browse-counts tr[data-table="registration"]')
    expect(counts.locator('[data-kind="archive_only"]')).to_have_text(
        str(len({r[4] for r in before})))
    expect(page.locator('#browse-counts tr[data-table="guest"] [data-kind="archive_only"]')
           ).to_have_text(str(len(before)))
    page.locator("#browse-preview").click()

    inserted = page.locator('#plan-counts tr[data-action="insert"]')
    expect(inserted.locator('[data-table="registration"]')).to_have_text(
        str(len({r[4] for r in before})))
    expect(inserted.locator('[data-table="guest"]')).to_have_text(str(len(before)))
    screenshot(page, "selective-restore-preview.png")
    loop = RequestLoop(server.url("/"))
    loop.start()
    try:
        page.locator("#browse-restore").click()
        expect(page.locator("#browse-result")).to_be_visible(timeout=OPEN_TIMEOUT_MS)
    finally:
        loop.stop.set()
        loop.join(timeout=15)
    assert loop.seen and set(loop.seen) == {200}, loop.seen

    page.locator("#browse-registrations-link").click()
    expect(page).to_have_url(re.compile(r"/admin/registration/"))
    for email in emails[:5]:
        expect(page.locator("table.model-list")).to_contain_text(email)
    after = rows(db_engine, "SELECT g.id, g.first_name, g.last_name, g.document_number, r.id, "
                            "r.email, r.status FROM guest g JOIN registration r "
                            "ON r.id = g.registration_id WHERE r.trip_id = :t ORDER BY g.id",
                 t=trip_id)
    assert after == before
    assert rows(db_engine, "SELECT count(*) FROM registration "
                           "WHERE email = 'tuesday@example.com'") == [(1,)]

    page.goto(server.url("/admin/backup/browse/"))
    page.locator("#browse-sessions").get_by_role("button", name="Close").click()
    expect(page.locator("#browse-sessions")).to_have_count(0)
    assert not rows(db_engine, "SELECT 1 FROM pg_database WHERE datname = :n", n=scratch)
    assert no_problems(problems) == []
