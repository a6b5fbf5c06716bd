"""Helpers shared by the browser tests and their fixtures (plain functions and
constants; the fixtures are in ``tests/browser/conftest.py``)."""

from __future__ import annotations

import re

from tests.live_server import ARTIFACTS

TIMEOUT_MS = 10_000      # every locator wait and expect()
NAV_TIMEOUT_MS = 20_000  # every navigation


def path_re(server, path: str, query: str = "") -> re.Pattern:
    """The URL of ``path`` on the server, exactly, with an optional query regex."""
    return re.compile("^" + re.escape(server.url(path)) + (query or "$"))


def log_in(page, server, email: str, password: str) -> None:
    """Log in through the form the way a person does: fill in, click the button."""
    from playwright.sync_api import expect

    if "/login" not in page.url:
        page.goto(server.url("/login"))
    form = page.locator("form[name=login_user_form]")
    expect(form).to_be_visible()
    form.get_by_label("Email Address").fill(email)
    form.get_by_label("Password").fill(password)
    with page.expect_navigation():
        form.locator("[type=submit]").click()
    expect(page.locator("form[name=login_user_form]")).to_have_count(0)


def nav(page):
    return page.locator("#admin-navbar-collapse")


def no_problems(problems: list[str], allowed: tuple[str, ...] = ()) -> list[str]:
    return [p for p in problems if not any(a in p for a in allowed)]


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def slow_pg_dump(folder) -> str:
    """A ``pg_dump`` that waits 2 s before dumping (the real one then runs), so a
    page's backup progress can be seen; returns its path for ``PG_DUMP``."""
    import shutil
    from pathlib import Path

    slow = Path(folder) / "slow_pg_dump"
    slow.write_text('#!/bin/sh\ncase "$1" in --version) ;; *) sleep 2;; esac\n'
                    f'exec {shutil.which("pg_dump")} "$@"\n')
    slow.chmod(0o755)
    return str(slow)
