"""The pages in a Czech browser (Playwright, ``locale="cs-CZ"`` sends
``Accept-Language: cs-CZ``): the login page, the Backup page with its progress,
confirmation and preview texts written by its script, and the language picker
keeping a choice across pages. Screenshots in ``tests/artifacts/``."""

from __future__ import annotations

import re

import pytest

from tests.browser.helpers import NAV_TIMEOUT_MS, TIMEOUT_MS, no_problems, screenshot, slow_pg_dump
from tests.helpers import ADMIN, USER
from tests.live_server import ARTIFACTS, pg_live_server

BACKUP_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def server(browser, pg_server, tmp_path_factory):
    """The real app with a pg_dump that waits 2 s, so the progress text shows.

    Overrides the ``server`` of ``tests/browser/conftest.py`` for this module."""
    work = tmp_path_factory.mktemp("live-i18n")
    with pg_live_server(pg_server, "gr_browser_i18n", work, admin=ADMIN, user=USER,
                        log_path=ARTIFACTS / "live-server-i18n.log",
                        extra_env={"PG_DUMP": slow_pg_dump(work)}) as srv:
        yield srv


@pytest.fixture
def czech_page(browser, server, problems):
    """A logged-out tab of a browser set to Czech."""
    context = browser.new_context(locale="cs-CZ", viewport={"width": 1280, "height": 800})
    context.set_default_timeout(TIMEOUT_MS)
    context.set_default_navigation_timeout(NAV_TIMEOUT_MS)
    page = context.new_page()
    page.on("pageerror", lambda exc: problems.append(f"JS error on {page.url}: {exc}"))
    page.on("response", lambda resp: resp.status >= 400  # the site's icon included
            and problems.append(f"HTTP {resp.status} {resp.request.method} {resp.url}"))
    try:
        yield page
    finally:
        context.close()


def test_backup_page_in_czech_with_progress_and_confirmation(czech_page, server, problems):
    from playwright.sync_api import expect

    page = czech_page
    page.goto(server.url("/admin/backup/"))  # anonymous: to the Czech login page
    form = page.locator("form[name=login_user_form]")
    expect(form.get_by_label("E-mailová adresa")).to_be_visible()
    form.get_by_label("E-mailová adresa").fill(ADMIN[0])
    form.get_by_label("Heslo").fill(ADMIN[1])
    with page.expect_navigation():
        form.get_by_role("button", name="Přihlásit se").click()
    expect(page).to_have_url(re.compile(re.escape(server.url("/admin/backup/")) + "$"))
    expect(page.get_by_role("heading", name="Záloha systému")).to_be_visible()
    expect(page.locator("a.dropdown-toggle", has_text="Záloha")).to_be_visible()

    with page.expect_download(timeout=BACKUP_TIMEOUT_MS) as download_info:
        page.get_by_role("button", name="Vytvořit zálohu systému").click()
        status = page.locator("#backup-status")
        expect(status).to_contain_text(re.compile(r"Záloha probíhá: \w+"))
        expect(status).not_to_contain_text("Backup running")
        screenshot(page, "backup-cs-running.png")
    name = download_info.value.suggested_filename
    status = page.locator("#backup-status")
    expect(status).to_contain_text("Záloha dokončena")
    expect(status).to_contain_text("Stahování začalo.")
    expect(status).to_contain_text(re.compile(r"\(\d+(,\d)? (B|KiB|MiB)\)"))
    row = page.locator(f'tr[data-archive="{name}"]')
    expect(row).to_be_visible()
    headers = page.locator("#archive-table thead th")
    expect(headers).to_have_text(["Název", "Datum (UTC)", "Velikost", "Kde", "Ověřeno", "Akce"])
    expect(row.get_by_role("link", name="Stáhnout")).to_be_visible()
    for button in ("Ověřit", "Smazat"):
        expect(row.get_by_role("button", name=button)).to_be_visible()

    # the delete confirmation comes from the page's Czech texts; dismissed, nothing goes
    messages = []
    page.once("dialog", lambda dialog: (messages.append(dialog.message), dialog.dismiss()))
    row.get_by_role("button", name="Smazat").click()
    expect(row).to_be_visible()
    assert messages == [f"Smazat {name}? Tuto akci nelze vrátit."]

    page.locator("#export-form").get_by_role("button", name="Náhled").click()
    expect(page.locator("#preview-summary")).to_contain_text(re.compile(r"Počet řádků v \d{4}-\d\d: \d+"))
    expect(page.locator("#recent-activity")).to_contain_text("záloha")
    screenshot(page, "backup-cs.png")
    assert no_problems(problems) == []


def test_the_picker_switches_language_and_keeps_it(czech_page, server, problems):
    from playwright.sync_api import expect

    page = czech_page
    page.goto(server.url("/"))
    expect(page.locator("h1")).to_have_text("Registrace na zájezd")  # from Accept-Language
    page.locator("#language-picker").get_by_role("button", name="Deutsch").click()
    expect(page).to_have_url(server.url("/"))
    expect(page.locator("h1")).to_have_text("Für eine Reise anmelden")
    page.goto(server.url("/login"))
    expect(page.locator("form[name=login_user_form]").get_by_label("E-Mail-Adresse")).to_be_visible()
    page.locator("#language-picker").get_by_role("button", name="Slovenčina").click()
    expect(page).to_have_url(server.url("/login"))
    expect(page.locator("form[name=login_user_form]").get_by_label("Heslo")).to_be_visible()
    expect(page.get_by_role("button", name="Prihlásiť sa")).to_be_visible()
    page.goto(server.url("/"))
    expect(page.locator("h1")).to_have_text("Registrácia na zájazd")
    screenshot(page, "picker-sk.png")
    assert no_problems(problems) == []
