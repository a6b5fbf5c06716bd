"""The Backup page in a real browser (Debian chromium through Playwright) against
the real app on PostgreSQL: a backup from the menu with progress and a real
download, the monthly export in every format, preview, delete, tampered names."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest

from guest_backup.archive.format import PHOTO_NAME_RE
from guest_backup.engines.postgresql import PostgresEngine
from guest_backup.archive.signing import TrustedKeys
from guest_backup.archive.verify import verify_archive
from tests.browser.helpers import TIMEOUT_MS, log_in, nav, no_problems, screenshot, slow_pg_dump
from tests.helpers import ADMIN, USER
from tests.live_server import ARTIFACTS, pg_live_server

BACKUP_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def server(browser, pg_server, tmp_path_factory):
    """The real app with a pg_dump that waits 2 s before dumping, so the page's
    progress display can be seen (the dump itself is the real pg_dump).

    Overrides the ``server`` of ``tests/browser/conftest.py`` for this module."""
    work = tmp_path_factory.mktemp("live-backup")
    with pg_live_server(pg_server, "gr_browser_backup", work, admin=ADMIN, user=USER,
                        log_path=ARTIFACTS / "live-server-backup.log",
                        extra_env={"PG_DUMP": slow_pg_dump(work)}) as srv:
        yield srv


def open_backup_page_from_menu(page, server):
    from playwright.sync_api import expect

    page.goto(server.url("/admin/"))
    nav(page).locator("a.dropdown-toggle", has_text="Backup").click()
    nav(page).get_by_role("link", name="System Backup").click()
    expect(page).to_have_url(re.compile(re.escape(server.url("/admin/backup/")) + "$"))
    expect(page.get_by_role("heading", name="System Backup")).to_be_visible()


def test_backup_from_the_menu_with_progress_and_download(page, server, problems, tmp_path):
    from playwright.sync_api import expect

    log_in(page, server, *ADMIN)
    open_backup_page_from_menu(page, server)
    with page.expect_download(timeout=BACKUP_TIMEOUT_MS) as download_info:
        page.get_by_role("button", name="Create system backup").click()
        status = page.locator("#backup-status")
        expect(status).to_contain_text("Backup running", timeout=TIMEOUT_MS)
        expect(page.get_by_role("button", name="Create system backup")).to_be_disabled()
        screenshot(page, "backup-running.png")
    download = download_info.value
    assert re.fullmatch(r"system_backup_\d{8}_\d{6}(_\d+)?\.zip", download.suggested_filename)
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    expect(page.locator("#backup-status")).to_contain_text("Backup finished")
    expect(page.locator("#backup-status")).to_contain_text(download.suggested_filename)
    # the archives and the activity refresh themselves, without a reload
    expect(page.locator(f'tr[data-archive="{download.suggested_filename}"]')).to_be_visible()
    expect(page.locator("#no-archives")).to_have_count(0)
    expect(page.locator("#recent-activity")).to_contain_text(download.suggested_filename)
    expect(page.locator("#recent-activity")).not_to_contain_text("running")

    # the archive is real: it verifies against the server's own key (the one the
    # page shows) and holds no guest photo
    key = server.manage("backup-key").strip().splitlines()[-1]
    expect(page.locator("#signing-key")).to_contain_text(key)
    report = verify_archive(saved, {"postgresql": PostgresEngine()}, TrustedKeys([key]))
    assert report.ok and report.signed_by == key, report.problems
    names = zipfile.ZipFile(saved).namelist()
    assert "database.sql" in names and "uploads/logo.png" in names
    assert not [n for n in names if PHOTO_NAME_RE.match(n.rsplit("/", 1)[-1])]

    # identical in content to `python manage.py backup`
    cli_path = Path(server.manage("backup").strip().splitlines()[-1])
    cli = zipfile.ZipFile(cli_path)
    assert sorted(cli.namelist()) == sorted(names)
    web_manifest = json.loads(zipfile.ZipFile(saved).read("manifest.json"))
    cli_manifest = json.loads(cli.read("manifest.json"))
    assert web_manifest.keys() == cli_manifest.keys()
    assert web_manifest["row_counts"]["guest"] == cli_manifest["row_counts"]["guest"]
    assert web_manifest["excluded_guest_photos"] == cli_manifest["excluded_guest_photos"] > 0

    # after a reload: the archive list, the finished state and the export form
    page.reload()
    expect(page.locator(f'tr[data-archive="{download.suggested_filename}"]')).to_be_visible()
    expect(page.locator("#backup-status")).to_contain_text("Last backup finished")
    expect(page.locator("#export-form")).to_be_visible()
    screenshot(page, "backup-page-after-backup.png")
    assert no_problems(problems, allowed=("favicon",)) == []


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_monthly_export_download_and_preview(page, server, problems, tmp_path, fmt):
    from playwright.sync_api import expect

    log_in(page, server, *ADMIN)
    page.goto(server.url("/admin/backup/"))
    form = page.locator("#export-form")
    now_year = form.locator("[name=year]").input_value()
    assert re.fullmatch(r"\d{4}", now_year)  # defaults to the current month
    form.locator("[name=year]").fill("2025")
    form.locator("[name=month]").select_option("6")
    form.locator("[name=format]").select_option(fmt)
    expect(page.locator("#curl-command")).to_contain_text(
        f"/api/backup/guests?year=2025&month=6&format={fmt}")
    with page.expect_download() as download_info:
        form.get_by_role("button", name="Download").click()
    download = download_info.value
    assert download.suggested_filename == f"guests_2025_06.{fmt}"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    api = page.request.get(server.url(f"/api/backup/guests?year=2025&month=6&format={fmt}"))
    assert api.status == 200
    assert saved.read_bytes() == api.body()
    rows = int(api.headers["x-export-rows"])
    assert rows > 0

    form.get_by_role("button", name="Preview").click()
    summary = page.locator("#preview-summary")
    expect(summary).to_contain_text(f"{rows} rows in 2025-06")
    first_line = api.body().decode().splitlines()[0]
    expect(page.locator("#preview-body")).to_contain_text(first_line[:60])
    assert no_problems(problems, allowed=("favicon",)) == []


def test_preview_shows_api_errors_plainly(page, server, problems):
    from playwright.sync_api import expect

    log_in(page, server, *ADMIN)
    page.goto(server.url("/admin/backup/"))
    page.locator("#export-form [name=year]").fill("1800")
    page.get_by_role("button", name="Preview").click()
    expect(page.locator("#preview-summary")).to_contain_text("Error 400: 'year' must be between 1900 and 9999")
    assert no_problems(problems, allowed=("favicon", "HTTP 400")) == []


def test_delete_an_archive_after_confirming(page, server, problems):
    from playwright.sync_api import expect

    name = Path(server.manage("backup").strip().splitlines()[-1]).name
    log_in(page, server, *ADMIN)
    page.goto(server.url("/admin/backup/"))
    row = page.locator(f'tr[data-archive="{name}"]')
    expect(row).to_be_visible()
    page.once("dialog", lambda dialog: dialog.dismiss())
    row.get_by_role("button", name="Delete").click()
    expect(row).to_be_visible()  # dismissed: nothing happened
    assert (server.backup_folder / name).exists()
    page.once("dialog", lambda dialog: dialog.accept())
    with page.expect_navigation():
        row.get_by_role("button", name="Delete").click()
    expect(page.locator(".alert", has_text=f"{name} was deleted")).to_be_visible()
    expect(page.locator(f'tr[data-archive="{name}"]')).to_have_count(0)
    assert not (server.backup_folder / name).exists()
    assert no_problems(problems, allowed=("favicon",)) == []


@pytest.mark.parametrize("name", ["..%2F..%2Fetc%2Fpasswd", "..%2Fbackups%2F.backup-job.json",
                                  ".backup.lock", "system_backup_20000101_000000.zip"])
def test_tampered_download_names_get_an_error(page, server, problems, name):
    log_in(page, server, *ADMIN)
    response = page.goto(server.url(f"/admin/backup/download/{name}"))
    assert response.status == 404
    assert "root:" not in page.content()
    assert "Page not found" in page.content()


def test_non_admin_is_refused_and_visitor_sent_to_login(page, server, problems):
    from playwright.sync_api import expect

    response = page.goto(server.url("/admin/backup/"))
    expect(page.locator("form[name=login_user_form]")).to_be_visible()
    assert "/login" in page.url and response.status == 200
    log_in(page, server, *USER)
    response = page.goto(server.url("/admin/backup/"))
    assert response.status == 403
    response = page.goto(server.url("/admin/backup/download/whatever.zip"))
    assert response.status == 403
    expect(page.get_by_role("button", name="Log out")).to_be_visible()


@pytest.mark.parametrize("width", [390, 1280])
@pytest.mark.parametrize("path", ["/admin/backup/", "/admin/audit/", "/admin/guest/"])
def test_wide_tables_fit_the_screen_without_hiding_columns(browser, server, problems, width,
                                                           path):
    """Phone and laptop widths: nothing spills sideways out of the page, and every
    column of every table is there (the table wraps or scrolls inside its card)."""
    from playwright.sync_api import expect

    server.manage("backup")  # so the archives table has a row
    context = browser.new_context(viewport={"width": width, "height": 844})
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        log_in(page, server, *ADMIN)
        page.goto(server.url(path))
        expect(page.locator("table.table").first).to_be_visible()
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"{path} is {overflow}px wider than a {width}px screen"
        hidden = page.evaluate("""() => [...document.querySelectorAll('table.table th')]
            .filter(th => getComputedStyle(th).display === 'none' || th.offsetWidth === 0)
            .map(th => th.textContent.trim())""")
        assert hidden == [], f"hidden columns on {path} at {width}px: {hidden}"
        unreachable = page.evaluate("""() => [...document.querySelectorAll('table.table')]
            .filter(t => t.getBoundingClientRect().width > window.innerWidth + 1)
            .filter(t => { for (let p = t.parentElement; p; p = p.parentElement) {
                const o = getComputedStyle(p).overflowX;
                if ((o === 'auto' || o === 'scroll') && p.clientWidth <= window.innerWidth)
                    return false; }
                return true; }).length""")
        assert unreachable == 0, f"a table on {path} is wider than the screen and cannot scroll"
        if path == "/admin/backup/":
            expect(page.get_by_role("button", name="Create system backup")).to_be_visible()
            expect(page.locator("#export-form [name=format]")).to_be_visible()
            # every archive's buttons are on screen, without scrolling the table sideways
            offscreen = page.evaluate("""() => [...document.querySelectorAll(
                '#archive-table .archive-actions .btn')].filter(b => {
                    const r = b.getBoundingClientRect();
                    return r.left < 0 || r.right > window.innerWidth; }).length""")
            assert offscreen == 0, f"{offscreen} archive buttons off-screen at {width}px"
        screenshot(page, f"narrow-{path.strip('/').replace('/', '-')}-{width}.png")
    finally:
        context.close()


def test_polling_stops_when_the_session_ends(page, server, problems):
    """Signed out (in another tab) while a backup ran: the job's address answered
    with the login page, and the page asked again every 3 s for ever, showing
    "Backup running" long after the backup had ended. It now stops and says why."""
    import time

    from playwright.sync_api import expect

    log_in(page, server, *ADMIN)
    page.goto(server.url("/admin/backup/"))
    asked: list[float] = []
    page.on("request", lambda r: "/admin/backup/job" in r.url and asked.append(time.monotonic()))
    page.get_by_role("button", name="Create system backup").click()
    expect(page.locator("#backup-status")).to_contain_text("Backup running")
    page.context.clear_cookies()  # the session ends (a logout elsewhere)
    expect(page.locator("#backup-status")).to_contain_text("You are no longer signed in")
    settled = len(asked)
    page.wait_for_timeout(7000)
    assert len(asked) == settled, f"{len(asked) - settled} more requests after stopping"
