"""``/metrics`` under ``manage.py serve`` (gunicorn, 2 workers) on PostgreSQL: each
scrape may reach either worker, and every one of them shows the same backup
values after a backup started from the page, the export counters of whichever
worker streamed it, and HTTP request counters that add up over both workers."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timezone

import pytest
import requests
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import ADMIN, ROOT, csrf_token_from, insert_bulk_guests
from tests.live_server import ARTIFACTS, pg_live_server

pytestmark = pytest.mark.live
TOKEN = "live-metrics-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
STALE = "counter_999999999.db"  # above any pid_max: a process that cannot be running
ROWS = 50


@pytest.fixture(scope="module")
def server(pg_server, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("live-metrics")
    folder = workdir / "instance" / "prometheus"
    folder.mkdir(parents=True)
    (folder / STALE).write_bytes(b"left by a server that died; not a metrics file")
    with pg_live_server(pg_server, "gr_live_metrics", workdir, admin=ADMIN, command="serve",
                        log_path=ARTIFACTS / "live-server-metrics.log",
                        extra_env={"METRICS_TOKEN": TOKEN}) as srv:
        srv.folder = folder
        insert_bulk_guests(srv.engine, ROWS, 2024, 2, "Metrics")
        yield srv


def scrape(server) -> dict[str, float]:
    """One scrape on a new connection (either worker may answer)."""
    response = requests.get(server.url("/metrics"), headers=BEARER, timeout=30)
    assert response.status_code == 200, response.text[:500]
    found = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            found[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return found


def requests_total(values: dict[str, float]) -> float:
    return sum(v for k, v in values.items() if k.startswith("guest_http_requests_total{"))


def counting_pids(server) -> set[str]:
    return {m.group(1) for p in server.folder.glob("counter_*.db")
            if (m := re.fullmatch(r"counter_(\d+)\.db", p.name))}


def test_serve_cleaned_the_folder_and_the_token_is_required(server):
    assert not (server.folder / STALE).exists()
    assert requests.get(server.url("/metrics"), timeout=10).status_code == 401
    assert requests.get(server.url("/metrics"), headers={"Authorization": "Bearer x"},
                        timeout=10).status_code == 403


def test_request_counters_of_both_workers_add_up(server):
    before = requests_total(scrape(server))
    sent = 0
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(40):  # until both workers have counted something
            statuses = list(pool.map(lambda _: requests.get(server.url("/login"),
                                                            timeout=30).status_code, range(16)))
            assert statuses == [200] * 16
            sent += 16
            if len(counting_pids(server)) >= 2 and sent >= 64:
                break
    assert len(counting_pids(server)) >= 2, "one worker answered every request"
    for _ in range(6):  # whichever worker answers, the total is the sum of both
        after = requests_total(scrape(server))
        assert after - before >= sent, (before, after, sent)


def _wait_for_backup(engine, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            row = conn.execute(sa.text(
                "SELECT id, outcome, finished_at, bytes FROM audit_log WHERE action = 'backup' "
                "AND outcome <> 'running' ORDER BY id DESC LIMIT 1")).mappings().first()
        if row is not None:
            return dict(row)
        time.sleep(0.3)
    raise AssertionError("the backup started from the page did not end")


def test_every_scrape_shows_a_backup_started_from_the_page(server):
    assert scrape(server)["guest_backup_last_success_timestamp_seconds"] == 0
    web = requests.Session()
    login = web.get(server.url("/login"), timeout=10)
    web.post(server.url("/login"), timeout=10, data={
        "email": ADMIN[0], "password": ADMIN[1], "csrf_token": csrf_token_from(login.text)})
    page = web.get(server.url("/admin/backup/"), timeout=10)
    assert page.status_code == 200
    click = web.post(server.url("/admin/backup/start"), timeout=10, allow_redirects=False,
                     data={"csrf_token": csrf_token_from(page.text)})
    assert click.status_code == 302
    entry = _wait_for_backup(server.engine)
    assert entry["outcome"] == "ok", entry
    ended = entry["finished_at"].replace(tzinfo=timezone.utc).timestamp()  # stored in UTC
    for _ in range(12):
        values = scrape(server)
        assert abs(values["guest_backup_last_success_timestamp_seconds"] - ended) < 0.01
        assert values["guest_backup_last_size_bytes"] == entry["bytes"]
        assert values["guest_backup_last_attempt_success"] == 1
        assert values['guest_backup_archives{storage="local"}'] == 1
        # counted by the worker that ran it, shown by both
        assert values['guest_backup_runs_total{kind="backup",outcome="ok"}'] == 1


def test_exports_and_failed_logins_count_in_every_scrape(server):
    token = server.auth_token(ADMIN[0])
    response = requests.get(server.url("/api/backup/guests"), timeout=60,
                            params={"year": 2024, "month": 2, "format": "json"},
                            headers={"Authentication-Token": token})
    assert response.status_code == 200 and response.headers["X-Export-Rows"] == str(ROWS)
    for _ in range(3):
        web = requests.Session()
        login = web.get(server.url("/login"), timeout=10)
        web.post(server.url("/login"), timeout=10, data={
            "email": ADMIN[0], "password": "not-the-password",
            "csrf_token": csrf_token_from(login.text)})
    for _ in range(8):
        values = scrape(server)
        assert values['guest_exports_total{action="export",format="json",outcome="ok"}'] == 1
        assert values['guest_export_rows_total{action="export",format="json"}'] == ROWS
        assert values["guest_export_slots_in_use"] == 0
        assert values['guest_login_failures_total{kind="login"}'] == 3


def test_a_backup_run_by_the_job_worker_counts_too(pg_server, redis_url, tmp_path):
    """With REDIS_URL the page's backup runs in ``manage.py worker``: its counters
    land in serve's folder, and every scrape shows them."""
    with pg_live_server(pg_server, "gr_live_metrics_worker", tmp_path, admin=ADMIN,
                        command="serve", log_path=ARTIFACTS / "live-server-metrics-worker.log",
                        extra_env={"METRICS_TOKEN": TOKEN, "REDIS_URL": redis_url}) as srv:
        with (ARTIFACTS / "live-metrics-worker.log").open("w") as log:
            worker = subprocess.Popen([sys.executable, "manage.py", "worker"], cwd=ROOT,
                                      env=srv.env, stdout=log, stderr=subprocess.STDOUT)
        try:
            web = requests.Session()
            login = web.get(srv.url("/login"), timeout=10)
            web.post(srv.url("/login"), timeout=10, data={
                "email": ADMIN[0], "password": ADMIN[1],
                "csrf_token": csrf_token_from(login.text)})
            page = web.get(srv.url("/admin/backup/"), timeout=10)
            click = web.post(srv.url("/admin/backup/start"), timeout=10, allow_redirects=False,
                             data={"csrf_token": csrf_token_from(page.text)})
            assert click.status_code == 302
            entry = _wait_for_backup(srv.engine)
            assert entry["outcome"] == "ok", entry
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # the job's counter is written as it ends
                if scrape(srv).get('guest_backup_runs_total{kind="backup",outcome="ok"}'):
                    break
                time.sleep(0.3)
            for _ in range(6):
                values = scrape(srv)
                assert values['guest_backup_runs_total{kind="backup",outcome="ok"}'] == 1
                assert values["guest_backup_last_size_bytes"] == entry["bytes"]
        finally:
            worker.terminate()
            worker.wait(timeout=30)
