"""With REDIS_URL, a backup started from the page runs on ``manage.py worker``:
the web server (``manage.py serve``, gunicorn) is stopped right after the click
and the backup still finishes, verified, with its progress in Redis."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import redis
import requests

from tests.helpers import ADMIN, ROOT, csrf_token_from
from tests.live_server import ARTIFACTS, pg_live_server

pytestmark = pytest.mark.live


def test_a_page_backup_finishes_after_the_web_server_stops(pg_server, redis_url, tmp_path):
    log_path = ARTIFACTS / "live-worker.log"
    with pg_live_server(pg_server, "gr_live_worker", tmp_path, admin=ADMIN, command="serve",
                        log_path=ARTIFACTS / "live-server-worker.log",
                        extra_env={"REDIS_URL": redis_url}) as server:
        with log_path.open("w") as log:
            worker = subprocess.Popen([sys.executable, "manage.py", "worker"], cwd=ROOT,
                                      env=server.env, stdout=log, stderr=subprocess.STDOUT)
        try:
            web = requests.Session()
            login = web.get(server.url("/login"), timeout=10)
            web.post(server.url("/login"), timeout=10, data={
                "email": ADMIN[0], "password": ADMIN[1],
                "csrf_token": csrf_token_from(login.text)})
            page = web.get(server.url("/admin/backup/"), timeout=10)
            assert page.status_code == 200 and "System Backup" in page.text
            click = web.post(server.url("/admin/backup/start"), timeout=10,
                             data={"csrf_token": csrf_token_from(page.text)},
                             allow_redirects=False)
            assert click.status_code == 302
            server.process.terminate()  # the web server goes away right after the click
            server.process.wait(timeout=30)
            with pytest.raises(requests.ConnectionError):
                requests.get(server.url("/"), timeout=5)

            store = redis.Redis.from_url(redis_url)
            deadline, job = time.monotonic() + 120, {}
            stages = set()
            while time.monotonic() < deadline:
                job = json.loads(store.get("guest-registration:backup-job") or "{}")
                stages.add(job.get("state"))
                if job.get("state") in ("done", "failed"):
                    break
                time.sleep(0.2)
            assert job.get("state") == "done", (job, log_path.read_text()[-3000:])
            archive = server.backup_folder / job["archive"]
            assert archive.is_file() and job["bytes"] == archive.stat().st_size
            assert worker.poll() is None  # the worker goes on waiting for the next job
            verified = server.manage("verify", str(archive))
            assert verified.startswith("OK ") or "\nOK " in verified, verified
        finally:
            worker.terminate()
            worker.wait(timeout=30)
