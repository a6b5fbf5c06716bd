"""With REDIS_URL, a backup started from the page is queued for ``manage.py
worker``: the page follows the queued job to its end and lists the archive,
without a reload; the worker logs one line when the job starts and one when it ends."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.browser.helpers import TIMEOUT_MS, log_in, no_problems, screenshot, slow_pg_dump
from tests.helpers import ADMIN, ROOT
from tests.live_server import ARTIFACTS, pg_live_server

BACKUP_TIMEOUT_MS = 90_000


def test_a_queued_backup_is_followed_to_the_end_without_a_reload(browser, pg_server, redis_url,
                                                                 problems, tmp_path):
    from playwright.sync_api import expect

    log_path = ARTIFACTS / "browser-queued-worker.log"
    with pg_live_server(pg_server, "gr_browser_queued", tmp_path, admin=ADMIN,
                        log_path=ARTIFACTS / "live-server-queued.log",
                        extra_env={"REDIS_URL": redis_url,
                                   "PG_DUMP": slow_pg_dump(tmp_path)}) as server:
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("pageerror", lambda exc: problems.append(f"JS error: {exc}"))
        worker = None
        try:
            log_in(page, server, *ADMIN)
            page.goto(server.url("/admin/backup/"))
            page.get_by_role("button", name="Create system backup").click()
            status = page.locator("#backup-status")
            # no worker yet: the job waits in the queue, and the page says so
            expect(status).to_contain_text("waiting for a worker")
            with log_path.open("w") as log:
                worker = subprocess.Popen([sys.executable, "manage.py", "worker"], cwd=ROOT,
                                          env=server.env, stdout=log, stderr=subprocess.STDOUT)
            # the page was loaded once: everything below comes from its polling
            expect(status).to_contain_text("Backup finished", timeout=BACKUP_TIMEOUT_MS)
            name = re.search(r"system_backup_\d{8}_\d{6}(?:_\d+)?\.zip",
                             status.inner_text()).group(0)
            expect(page.locator(f'tr[data-archive="{name}"]')).to_be_visible()
            expect(page.locator("#no-archives")).to_have_count(0)
            screenshot(page, "queued-backup-finished.png")
        finally:
            context.close()
            if worker is not None:
                try:
                    worker.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
    lines = [line for line in log_path.read_text().splitlines()
             if line.startswith("[guest-registration worker] backup ")]
    assert len(lines) == 2, lines
    assert lines[0].endswith(f"started (by {ADMIN[0]})"), lines
    assert re.search(rf"ended: done, {name}$", lines[1]), lines
    assert no_problems(problems, allowed=("favicon",)) == []
