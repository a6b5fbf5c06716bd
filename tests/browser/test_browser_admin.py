"""End to end in a real browser: the app runs as ``manage.py run`` on PostgreSQL
(prepared with ``setup``, ``demo-data`` and ``users create``) and headless
Chromium clicks through the login, the admin menu, logout, the 403 for a
non-admin and the public registration form.

The fixtures (``page``, ``admin_page``, ``server`` ...) and the skip policy
are in ``tests/browser/conftest.py``. Screenshots go to ``tests/artifacts/``
(git-ignored), the server's log to ``tests/artifacts/live-server.log``; a
failing test shows what the server logged during it and the browser errors it saw.
"""

from __future__ import annotations

import re
import uuid
from datetime import date, timedelta

import sqlalchemy as sa

from guest_registration.demo import tiny_png
from tests.browser.helpers import log_in, nav, no_problems, path_re, screenshot
from tests.helpers import ADMIN, USER

NEXT_ADMIN = r"\?next=(/|%2F)admin(/|%2F)$"  # Flask-Security may leave the path unquoted
PHOTO_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}\.png$")


def add_upcoming_trip(engine, title: str, max_guests: int = 3) -> int:
    """A trip that is open for registration whatever today's date is."""
    start = date.today() + timedelta(days=30)
    with engine.begin() as conn:
        return conn.execute(sa.text(
            "INSERT INTO trip (title, start_date, end_date, max_guests) "
            "VALUES (:t, :s, :e, :m) RETURNING id"),
            {"t": title, "s": start, "e": start + timedelta(days=5), "m": max_guests}).scalar_one()


# --------------------------------------------------------------------------- tests

def test_logged_out_visitor_is_sent_to_login(page, server, problems):
    from playwright.sync_api import expect

    resp = page.goto(server.url("/admin/"))
    assert resp.ok, resp.status
    expect(page).to_have_url(path_re(server, "/login", NEXT_ADMIN))
    form = page.locator("form[name=login_user_form]")
    expect(form.get_by_label("Email Address")).to_be_visible()
    expect(form.get_by_label("Password")).to_be_visible()
    expect(form.locator("[type=submit]")).to_be_visible()
    expect(nav(page).get_by_role("link", name="Trips", exact=True)).to_have_count(0)
    screenshot(page, "login.png")
    assert no_problems(problems) == []


def test_login_returns_to_the_page_asked_for(page, server, problems):
    from playwright.sync_api import expect

    page.goto(server.url("/admin/backup/"))
    expect(page).to_have_url(path_re(server, "/login", r"\?next=(/|%2F)admin(/|%2F)backup(/|%2F)$"))
    log_in(page, server, *ADMIN)
    expect(page).to_have_url(path_re(server, "/admin/backup/"))
    assert no_problems(problems) == []


def test_wrong_password_stays_on_login(page, server, problems):
    from playwright.sync_api import expect

    page.goto(server.url("/login"))
    form = page.locator("form[name=login_user_form]")
    form.get_by_label("Email Address").fill(ADMIN[0])
    form.get_by_label("Password").fill("not-the-password")
    form.locator("[type=submit]").click()
    expect(page.locator(".invalid-feedback, .alert-danger").first).to_be_visible()
    expect(page).to_have_url(path_re(server, "/login"))
    page.goto(server.url("/admin/"))
    expect(page).to_have_url(path_re(server, "/login", r"\?next="))
    assert no_problems(problems) == []


def test_admin_logs_in_and_clicks_through_the_menu(page, server, problems, db_engine):
    from playwright.sync_api import expect

    log_in(page, server, *ADMIN)
    expect(page).to_have_url(path_re(server, "/admin/"))
    menu = nav(page)
    for label in ("Trips", "Registrations", "Guests", "Users"):
        expect(menu.get_by_role("link", name=label, exact=True)).to_be_visible()
    expect(menu.get_by_text(ADMIN[0])).to_be_visible()
    expect(menu.get_by_role("button", name="Log out")).to_be_visible()
    with db_engine.connect() as conn:
        trips = conn.execute(sa.text("select count(*) from trip")).scalar_one()
    assert trips >= 4  # the demo data
    # the home page counts come from the database
    expect(page.locator("[data-count=trips]")).to_have_text(re.compile(r"^\s*\d+\s*$"))
    assert int(page.locator("[data-count=trips]").inner_text()) >= 4
    screenshot(page, "admin-home.png")

    system_backup = menu.get_by_role("link", name="System Backup")
    expect(system_backup).to_be_hidden()  # inside the closed dropdown
    menu.locator("a.dropdown-toggle", has_text="Backup").click()
    expect(system_backup).to_be_visible()
    expect(menu.get_by_role("link", name="Audit log")).to_be_visible()
    system_backup.click()
    expect(page).to_have_url(path_re(server, "/admin/backup/"))
    expect(page.get_by_role("heading", name="System Backup")).to_be_visible()
    # the page lists the installed export formats (the CSV and JSON plugins)
    expect(page.locator("[data-format=csv]").first).to_be_attached()
    expect(page.locator("[data-format=json]").first).to_be_attached()
    page.wait_for_load_state("networkidle")
    screenshot(page, "admin-backup.png")

    for label, path in (("Trips", "/admin/trip/"), ("Registrations", "/admin/registration/"),
                        ("Users", "/admin/user/")):
        menu.get_by_role("link", name=label, exact=True).click()
        expect(page).to_have_url(path_re(server, path))
        expect(page.locator("table.model-list tbody tr").first).to_be_visible()
    assert no_problems(problems) == []


def test_guests_list_shows_demo_data(admin_page, server, problems, db_engine):
    from playwright.sync_api import expect

    with db_engine.connect() as conn:
        total = conn.execute(sa.text("select count(*) from guest")).scalar_one()
        first = conn.execute(sa.text(
            "select first_name, last_name, document_number from guest order by id desc limit 1"
        )).one()
    assert total > 0
    page = admin_page
    page.goto(server.url("/admin/"))
    nav(page).get_by_role("link", name="Guests", exact=True).click()
    expect(page).to_have_url(path_re(server, "/admin/guest/"))
    rows = page.locator("table.model-list tbody tr")
    expect(rows.first).to_be_visible()
    assert rows.count() == min(total, 50)  # page_size 50
    # newest first (column_default_sort): the last guest is in the first row
    expect(rows.first).to_contain_text(first.document_number)
    expect(rows.first).to_contain_text(first.first_name)
    expect(rows.first).to_contain_text(first.last_name)
    expect(page.get_by_text(f"List ({total})")).to_be_visible()
    assert no_problems(problems) == []


def test_logout_button_logs_out(page, server, problems):
    from playwright.sync_api import expect

    log_in(page, server, *ADMIN)
    expect(page).to_have_url(path_re(server, "/admin/"))
    with page.expect_navigation():
        nav(page).get_by_role("button", name="Log out").click()
    expect(page).to_have_url(path_re(server, "/"))  # SECURITY_POST_LOGOUT_VIEW
    page.goto(server.url("/admin/"))
    expect(page).to_have_url(path_re(server, "/login", NEXT_ADMIN))
    expect(page.locator("form[name=login_user_form]")).to_be_visible()
    assert no_problems(problems) == []


def test_non_admin_user_gets_403(page, server, problems):
    from playwright.sync_api import expect

    log_in(page, server, *USER)
    resp = page.goto(server.url("/admin/"))
    assert resp.status == 403
    expect(page.locator("h1")).to_have_text("Error 403")
    expect(page.get_by_text("You do not have access to this page.")).to_be_visible()
    expect(nav(page).get_by_role("link", name="Trips", exact=True)).to_have_count(0)
    assert page.goto(server.url("/admin/guest/")).status == 403
    assert page.goto(server.url("/admin/backup/")).status == 403
    assert no_problems(problems, ("HTTP 403 GET",)) == []


def test_public_registration_with_photo(page, admin_page, server, problems, db_engine):
    from playwright.sync_api import expect

    tag = uuid.uuid4().hex[:8]
    title = f"Browser Test Trip {tag}"
    trip_id = add_upcoming_trip(db_engine, title)
    first, last, doc = "Zoë", f"Dvořák-{tag}", f"BT{tag.upper()}"
    email = f"browser-{tag}@example.com"
    png = tiny_png((10, 200, 90))

    page.goto(server.url("/"))
    page.get_by_role("link", name=re.compile(re.escape(title))).click()
    expect(page).to_have_url(path_re(server, f"/trips/{trip_id}/register"))
    expect(page.locator("h1")).to_have_text(title)
    form = page.locator("#registration-form")
    form.get_by_label("E-mail").fill(email)
    form.get_by_label("Language").select_option("cs")
    form.get_by_label("First name").fill(first)
    form.get_by_label("Last name").fill(last)
    form.get_by_label("Age category").select_option("adult")
    form.get_by_label("Document type").select_option("id_card")
    form.get_by_label("Document number").fill(doc)
    form.get_by_label("Document photo").set_input_files(
        {"name": "my passport.png", "mimeType": "image/png", "buffer": png})
    form.get_by_label(re.compile("I consent")).check()
    screenshot(page, "registration-form.png")
    with page.expect_navigation():
        form.get_by_role("button", name="Register").click()
    expect(page).to_have_url(path_re(server, f"/trips/{trip_id}/thanks"))
    expect(page.locator("h1")).to_have_text("Thank you!")
    expect(page.locator("main")).to_contain_text(title)

    with db_engine.connect() as conn:
        row = conn.execute(sa.text(
            "select g.id, g.first_name, g.last_name, g.age_category, g.document_type, "
            "g.document_photo, g.gdpr_consent, r.email, r.language, r.trip_id "
            "from guest g join registration r on r.id = g.registration_id "
            "where g.document_number = :doc"), {"doc": doc}).one()
    assert (row.first_name, row.last_name, row.age_category, row.document_type) == (
        first, last, "adult", "id_card")
    assert (row.email, row.language, row.trip_id, row.gdpr_consent) == (email, "cs", trip_id, True)
    assert PHOTO_RE.match(row.document_photo), row.document_photo
    assert (server.upload_folder / row.document_photo).read_bytes() == png

    # and an admin (another browser context) finds the guest, with the photo, in the Guests list
    admin_finds_the_guest(admin_page, server, row.id, (first, last, doc), png)
    assert no_problems(problems) == []


def admin_finds_the_guest(page, server, guest_id: int, names: tuple[str, str, str],
                          png: bytes) -> None:
    """An admin searches the Guests list for the document number: one row, the names,
    and the photo link serves the uploaded bytes."""
    from playwright.sync_api import expect

    first, last, doc = names
    page.goto(server.url("/admin/"))
    nav(page).get_by_role("link", name="Guests", exact=True).click()
    expect(page).to_have_url(path_re(server, "/admin/guest/"))
    page.locator("input[name=search]").fill(doc)
    page.locator("input[name=search]").press("Enter")
    rows = page.locator("table.model-list tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(first)
    expect(rows.first).to_contain_text(last)
    link = rows.first.get_by_role("link", name="view", exact=True)
    href = link.get_attribute("href")
    assert href.endswith(f"/admin/guest/photo/{guest_id}")
    photo = page.request.get(server.url(href))
    assert photo.status == 200
    assert photo.headers["content-type"] == "image/png"
    assert photo.body() == png


def test_deletes_ask_first_under_the_content_security_policy(admin_page, server, problems,
                                                              db_engine):
    """Flask-Admin's delete confirmations were inline onclick handlers, which the CSP
    refuses (a row would be deleted without asking); ours use data attributes."""
    from playwright.sync_api import expect

    page = admin_page
    first = add_upcoming_trip(db_engine, f"Delete me {uuid.uuid4().hex[:6]}")
    second = add_upcoming_trip(db_engine, f"Delete me too {uuid.uuid4().hex[:6]}")

    def exists(trip_id: int) -> bool:
        with db_engine.connect() as conn:
            return conn.execute(sa.text("select count(*) from trip where id = :i"),
                                {"i": trip_id}).scalar_one() == 1

    page.goto(server.url("/admin/trip/?sort=0&desc=1"), wait_until="load")  # scripts ready
    row = page.locator("table.model-list tbody tr", has=page.locator(
        f"input.action-checkbox[value='{first}']"))
    dialogs = []
    page.once("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    row.locator("form.icon button[title='Delete Record']").click()
    page.wait_for_timeout(300)
    assert dialogs == ["Are you sure you want to delete this record?"]
    assert exists(first)  # dismissed: nothing deleted
    page.once("dialog", lambda d: d.accept())
    row.locator("form.icon button[title='Delete Record']").click()
    expect(page.locator(".alert", has_text="successfully deleted")).to_be_visible()
    assert not exists(first)

    # "With selected" → Delete: the bulk action runs, after its own confirmation
    page.wait_for_load_state("load")
    page.locator(f"input.action-checkbox[value='{second}']").check()
    page.locator("a.dropdown-toggle", has_text="With selected").click()
    expect(page.locator("a[data-model-action=delete]")).to_be_visible()
    page.once("dialog", lambda d: d.accept())
    page.locator("a[data-model-action=delete]").click()
    expect(page.locator(".alert", has_text="successfully deleted")).to_be_visible()
    assert not exists(second)
    assert not [p for p in problems if "Content Security Policy" in p]
    assert no_problems(problems) == []


#: the height of a navbar's tallest entry plus its own vertical padding: one line
ONE_LINE_JS = """bar => {
  const style = getComputedStyle(bar);
  const leaves = bar.querySelectorAll('.navbar-brand, .nav-link, #language-picker button, '
                                      + '#logout-form > *');
  const tallest = Math.max(...Array.from(leaves, e => e.getBoundingClientRect().height));
  return tallest + parseFloat(style.paddingTop) + parseFloat(style.paddingBottom);
}"""


def test_admin_menu_is_one_line_at_1280_px(admin_page, server, problems):
    """Brand, entries, language picker, user and Log out: one line at 1280 px wide,
    in every language (it wrapped onto two lines)."""
    from playwright.sync_api import expect

    page = admin_page
    page.set_viewport_size({"width": 1280, "height": 800})
    for code, trips in (("en", "Trips"), ("cs", "Zájezdy"), ("sk", "Zájazdy"), ("de", "Reisen")):
        page.goto(server.url(f"/admin/guest/?lang={code}"))
        bar = page.locator("nav.navbar")
        expect(nav(page).get_by_role("link", name=trips, exact=True)).to_be_visible()
        expect(page.locator(".navbar-toggler")).to_be_hidden()  # expanded, not collapsed
        expect(nav(page).get_by_role("button", name=re.compile("Log out|Odhlásit|Odhlásiť|Abmelden"))
               ).to_be_visible()
        one_line = bar.evaluate(ONE_LINE_JS)
        height = bar.bounding_box()["height"]
        assert abs(height - one_line) < 1, (code, height, one_line)
    screenshot(page, "admin-menu-1280.png")
    assert no_problems(problems) == []


def test_public_pages_link_the_admin_panel_for_an_admin(admin_page, server, problems):
    from playwright.sync_api import expect

    page = admin_page
    page.goto(server.url("/"))
    link = page.locator("nav.navbar").get_by_role("link", name="Admin", exact=True)
    expect(link).to_be_visible()
    link.click()
    expect(page).to_have_url(path_re(server, "/admin/"))
    assert no_problems(problems) == []


def test_every_page_has_its_icon(page, admin_page, server, problems):
    """The pages link the site's icon, and ``/favicon.ico`` (asked for by browsers on
    their own) answers it: no 404 for an icon, on public or admin pages."""
    icons = []
    for tab in (page, admin_page):
        tab.on("response", lambda resp: "favicon" in resp.url and icons.append(resp))
    for tab, path in ((page, "/"), (page, "/login"), (admin_page, "/admin/guest/")):
        tab.goto(server.url(path))
        href = tab.locator("link[rel=icon]").get_attribute("href")
        assert href == "/static/favicon.svg", (path, href)
        answer = tab.request.get(server.url("/favicon.ico"))
        assert answer.status == 200, answer.status
        assert answer.headers["content-type"].startswith("image/svg+xml")
        assert answer.body().startswith(b"<svg")
    assert icons and all(resp.status == 200 for resp in icons), [(r.url, r.status) for r in icons]
    assert no_problems(problems) == []
