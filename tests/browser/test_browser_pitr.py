"""The PITR page's backup form in a real browser, on a REAL throwaway cluster: the
click starts a full backup in the web server (``manage.py run`` as root), the
page follows the job by polling and shows the new backup in its table without a
reload. pgBackRest waits 3 s before its backup here, so the running state is seen."""

from __future__ import annotations

from guest_registration.extensions import db
from tests.browser.helpers import log_in, no_problems, screenshot
from tests.helpers import ADMIN
from tests.live_server import ARTIFACTS, live_server
from tests.test_pitr import cluster, make_app, set_up  # noqa: F401 (the fixture)

BACKUP_TIMEOUT_MS = 120_000


def slow_pgbackrest(folder) -> str:
    """A ``pgbackrest`` that sleeps 3 s before a backup (the real one then runs), in a
    folder ``postgres`` may enter; its path for ``PITR_PGBACKREST``."""
    import shutil

    slow = folder / "slow-pgbackrest"
    slow.write_text('#!/bin/sh\nfor last; do :; done\n[ "$last" = backup ] && sleep 3\n'
                    f'exec {shutil.which("pgbackrest")} "$@"\n')
    slow.chmod(0o755)
    return str(slow)


def test_a_pitr_backup_from_the_page_is_followed_to_the_end(browser, cluster, problems,
                                                            tmp_path):
    from playwright.sync_api import expect

    c = cluster
    app = make_app(c, tmp_path)  # the tables, the admin, and PITR set up in two runs
    set_up(c, app)
    with app.app_context():
        db.engine.dispose()
    env = {"PITR_PG_DATA": str(c.data), "PITR_PG_PORT": str(c.port),
           "PITR_PG_SOCKET": str(c.sock), "PITR_FOLDER": str(c.base / "pgbackrest"),
           "PITR_PGBACKREST": slow_pgbackrest(c.base),
           "SECURITY_PASSWORD_SALT": app.config["SECURITY_PASSWORD_SALT"]}  # the admin's hash
    with live_server(c.url("guests"), c.base, admin=ADMIN, demo_data=False, extra_env=env,
                     log_path=ARTIFACTS / "live-server-pitr.log") as server:
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        page.on("pageerror", lambda exc: problems.append(f"JS error: {exc}"))
        try:
            log_in(page, server, *ADMIN)
            page.goto(server.url("/admin/pitr/"))
            expect(page.locator("#pitr-no-backups")).to_be_visible()
            page.select_option("#pitr-backup-type", "full")
            page.get_by_role("button", name="Start PITR backup").click()
            status = page.locator("#pitr-job")
            expect(status).to_contain_text("full backup running")
            expect(status).to_contain_text("Last PITR backup:", timeout=BACKUP_TIMEOUT_MS)
            label = c.pgbackrest_info()["backup"][0]["label"]
            expect(status).to_contain_text(f"{label} (full)")
            # the table comes from the page's own refresh after the job, not a reload
            expect(page.locator(f'tr[data-label="{label}"][data-type="full"]')).to_be_visible()
            expect(page.locator("#pitr-no-backups")).to_have_count(0)
            expect(page.locator("#pitr-backup-start")).to_be_enabled()
            expect(page.locator("#pitr-restore-command")).not_to_contain_text("YYYY")
            screenshot(page, "pitr-backup-finished.png")
        finally:
            context.close()
    assert no_problems(problems) == []
