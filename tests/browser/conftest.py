"""Fixtures of the end-to-end browser tests: headless Chromium through Playwright
(``browser``), the real app as ``manage.py run`` on its own PostgreSQL database
(``server``, one per module; a module may override it), and browser tabs that
report what went wrong (``page``, ``admin_page``, ``problems``).

Skipped with the reason when Playwright or Chromium is missing (a failure with
``REQUIRE_BROWSER=1``), and when PostgreSQL is unreachable (a failure with
``REQUIRE_POSTGRES=1``). Every test in this directory is marked ``browser``
(``pytest -m "not browser"`` leaves them out).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from guest_registration.config import normalise_database_url
from tests.browser.helpers import NAV_TIMEOUT_MS, TIMEOUT_MS, log_in
from tests.helpers import ADMIN, USER
from tests.live_server import ARTIFACTS, browser_session, pg_live_server

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(items):
    """Mark every test collected from this directory ``browser``."""
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="module")
def browser():
    with browser_session() as b:
        yield b


@pytest.fixture(scope="module")
def server(browser, pg_server, tmp_path_factory):
    """The real app on its own PostgreSQL database, for this module.

    Asks for ``browser`` first so that a missing browser skips before any setup."""
    with pg_live_server(pg_server, "gr_browser", tmp_path_factory.mktemp("live"), admin=ADMIN,
                        user=USER, log_path=ARTIFACTS / "live-server.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def db_engine(server):
    engine = sa.create_engine(normalise_database_url(server.database_url))
    yield engine
    engine.dispose()


@pytest.fixture
def problems():
    """Browser-side errors of one test: JS exceptions, console errors, HTTP >= 400."""
    return []


def _open_page(browser, server, problems, storage_state=None):
    """A fresh browser context (no cookies, or ``storage_state``) with bounded waits.

    At teardown it prints what the server logged during the test and the
    browser errors: pytest shows that output only when the test failed.
    """
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    offset = server.log_offset()
    context = browser.new_context(viewport={"width": 1280, "height": 800},
                                  storage_state=storage_state)
    context.set_default_timeout(TIMEOUT_MS)
    context.set_default_navigation_timeout(NAV_TIMEOUT_MS)
    pg = context.new_page()
    pg.on("pageerror", lambda exc: problems.append(f"JS error on {pg.url}: {exc}"))
    # "Failed to load resource" console errors repeat what the response listener records
    pg.on("console", lambda msg: msg.type == "error"
          and not msg.text.startswith("Failed to load resource")
          and problems.append(f"console error on {pg.url}: {msg.text}"))
    pg.on("response", lambda resp: resp.status >= 400
          and problems.append(f"HTTP {resp.status} {resp.request.method} {resp.url}"))
    try:
        yield pg
    finally:
        context.close()
        print(f"--- server log during this test ({server.log_path}):")
        print(server.log_since(offset) or "(nothing)")
        print("--- browser problems:", *(problems or ["(none)"]), sep="\n")


@pytest.fixture
def page(browser, server, problems):
    """A logged-out browser tab."""
    yield from _open_page(browser, server, problems)


@pytest.fixture
def admin_state(browser, server):
    """Cookies of an admin logged in through the form, for one test: a logout in
    another test ends every session of that admin (the uniquifier rotates)."""
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    context.set_default_navigation_timeout(NAV_TIMEOUT_MS)
    try:
        pg = context.new_page()
        log_in(pg, server, *ADMIN)
        assert pg.url == server.url("/admin/"), pg.url
        return context.storage_state()
    finally:
        context.close()


@pytest.fixture
def admin_page(browser, server, problems, admin_state):
    """A browser tab of a logged-in admin (tests of the login itself use ``page``)."""
    yield from _open_page(browser, server, problems, storage_state=admin_state)
