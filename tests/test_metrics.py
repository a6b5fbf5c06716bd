"""``/metrics``: off without a token or allow-list, 401/403/200 by bearer token,
the allow-list (behind a trusted proxy too), the backup values after a CLI
backup, exports and rows by format, export slots, requests by endpoint name,
failed logins; serve's multiprocess folder; the sample alerts and dashboard
name only real metrics."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from guest_registration import create_app
from guest_registration import metrics as host_metrics
from guest_registration import metrics_folder
from guest_registration.extensions import db
from guest_registration.models import Guest, Registration, Trip
from tests.helpers import ADMIN, API, ROOT, csrf_token_from, make_config

TOKEN = "metrics-test-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
#: every metric docs/monitoring.md lists (as exposed: counters end in _total)
DOCUMENTED = [
    "guest_backup_last_success_timestamp_seconds", "guest_backup_last_attempt_timestamp_seconds",
    "guest_backup_last_attempt_success", "guest_backup_last_duration_seconds",
    "guest_backup_last_size_bytes", "guest_backup_archives",
    "guest_backup_newest_archive_timestamp_seconds", "guest_backup_storage_up",
    "guest_backup_last_drill_timestamp_seconds", "guest_backup_last_drill_success",
    "guest_backup_metrics_ok", "guest_backup_runs_total", "guest_backup_pruned_archives_total",
    "guest_exports_total", "guest_export_rows_total", "guest_export_slots_in_use",
    "guest_http_requests_total", "guest_http_request_duration_seconds",
    "guest_login_failures_total",
]
#: what a scrape shows from the start, before anything was counted
ALWAYS = [name for name in DOCUMENTED if name.startswith("guest_backup_")
          and not name.endswith("_total")] + ["guest_http_requests_total"]


def samples(text: str) -> dict[str, float]:
    """``name{label="value",…}`` (labels sorted) → value, of a scrape's text."""
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            found[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return found


def scrape(client) -> dict[str, float]:
    response = client.get("/metrics", headers=BEARER)
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    return samples(response.get_data(as_text=True))


@pytest.fixture
def metrics_config(app_config):
    app_config["METRICS_TOKEN"] = TOKEN
    return app_config


@pytest.mark.parametrize("backend", ["sqlite"])
def test_metrics_are_off_without_a_token_or_an_allow_list(client, backend):
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", headers=BEARER).status_code == 404


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_bearer_token(metrics_config, backend, request):
    client = request.getfixturevalue("client")
    missing = client.get("/metrics")
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/metrics", headers={"Authorization": "Basic " + TOKEN}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert client.get("/metrics", headers={"Authorization": "Bearer " + TOKEN[:-1]}
                      ).status_code == 403
    right = client.get("/metrics", headers=BEARER)
    assert right.status_code == 200
    assert right.mimetype == "text/plain" and right.headers["Cache-Control"] == "no-store"
    text = right.get_data(as_text=True)
    for name in ALWAYS:
        assert f"\n{name}" in text, name
    assert TOKEN not in text


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_allow_list(app_config, backend, request):
    app_config["METRICS_ALLOW"] = "10.0.0.0/8, 192.168.1.7"
    client = request.getfixturevalue("client")
    assert client.get("/metrics").status_code == 403  # 127.0.0.1 is not on it
    assert client.get("/metrics", headers=BEARER).status_code == 403  # no token is set
    for address in ("10.1.2.3", "192.168.1.7"):
        assert client.get("/metrics", environ_base={"REMOTE_ADDR": address}).status_code == 200
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "192.168.1.8"}).status_code == 403
    # without TRUSTED_PROXIES anyone could send X-Forwarded-For: it does not count
    assert client.get("/metrics", headers={"X-Forwarded-For": "10.1.2.3"}).status_code == 403


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_allow_list_behind_a_trusted_proxy_and_with_a_token(app_config, backend, request):
    app_config.update(METRICS_ALLOW="10.0.0.0/8", METRICS_TOKEN=TOKEN, TRUSTED_PROXIES=1)
    client = request.getfixturevalue("client")
    forwarded = client.get("/metrics", headers={"X-Forwarded-For": "10.9.9.9"})
    assert forwarded.status_code == 200  # the client's address, as the proxy says
    outside = {"X-Forwarded-For": "203.0.113.5"}
    assert client.get("/metrics", headers=outside).status_code == 401  # then the token
    assert client.get("/metrics", headers={**outside, **BEARER}).status_code == 200


def test_a_wrong_allow_list_entry_stops_start_up(tmp_path):
    config = make_config(tmp_path, f"sqlite:///{tmp_path / 'x.db'}", METRICS_ALLOW="10.0.0.0/8, nope")
    with pytest.raises(ValueError, match="METRICS_ALLOW: 'nope'"):
        create_app(config, instance_path=str(tmp_path / "instance"))


@pytest.mark.parametrize("backend", ["sqlite"])
def test_nothing_is_counted_where_no_scrape_reads_it(app_config, backend, monkeypatch, tmp_path):
    """A web app with metrics off, and a command (the command-line app) without
    PROMETHEUS_MULTIPROC_DIR, count nothing: their counts could never be scraped.
    The web app with a token counts in memory; a command counts into the folder."""
    made = []

    def define(client):
        made.append(client.__name__)
        return SimpleNamespace(client=client)

    monkeypatch.delenv(host_metrics.MULTIPROC_ENV, raising=False)
    web_off = create_app(app_config)
    command = create_app({**app_config, "METRICS_TOKEN": TOKEN}, web=False)
    web_on = create_app({**app_config, "METRICS_TOKEN": TOKEN})
    for app in (web_off, command):
        with app.app_context():
            assert host_metrics.metric(define) is None
    assert made == []
    with web_on.app_context():
        assert host_metrics.metric(define) is not None
    assert made == ["prometheus_client"]
    monkeypatch.setenv(host_metrics.MULTIPROC_ENV, str(tmp_path))
    with command.app_context():
        assert host_metrics.metric(define) is not None  # the one made, shared
    assert made == ["prometheus_client"]


def test_a_cli_backup_shows_in_the_scrape(metrics_config, request, tmp_path):
    app = request.getfixturevalue("app")
    client = app.test_client()
    before = scrape(client)
    assert before["guest_backup_last_success_timestamp_seconds"] == 0
    assert before['guest_backup_archives{storage="local"}'] == 0
    runs = 'guest_backup_runs_total{kind="backup",outcome="ok"}'
    started = time.time()
    result = app.test_cli_runner().invoke(args=["backup"])
    assert result.exit_code == 0, result.output
    archive = Path(result.output.strip().splitlines()[-1])
    after = scrape(client)
    assert started - 1 <= after["guest_backup_last_success_timestamp_seconds"] <= time.time() + 1
    assert after["guest_backup_last_size_bytes"] == archive.stat().st_size
    assert after["guest_backup_last_attempt_success"] == 1
    assert after["guest_backup_last_duration_seconds"] >= 0
    assert after['guest_backup_archives{storage="local"}'] == 1
    assert after['guest_backup_storage_up{storage="local"}'] == 1
    assert after["guest_backup_metrics_ok"] == 1
    assert after[runs] == before.get(runs, 0) + 1

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    app.config["BACKUP_FOLDER"] = str(blocker / "backups")
    assert app.test_cli_runner().invoke(args=["backup"]).exit_code == 1
    failed = scrape(client)
    assert failed["guest_backup_last_attempt_success"] == 0
    assert failed["guest_backup_last_attempt_timestamp_seconds"] >= \
        after["guest_backup_last_success_timestamp_seconds"]
    assert failed["guest_backup_last_success_timestamp_seconds"] == \
        after["guest_backup_last_success_timestamp_seconds"]


@pytest.fixture
def june_guests(app):
    with app.app_context():
        reg = Registration(trip=Trip(title="Metrics trip", max_guests=9),
                           email="family@example.com", language="en", status="approved")
        db.session.add(reg)
        for i in range(3):
            db.session.add(Guest(registration=reg, first_name=f"G{i}", last_name="Test",
                                 age_category="adult", document_type="passport",
                                 document_number=f"P{i}", gdpr_consent=True,
                                 created_at=datetime(2025, 6, 10 + i)))
        db.session.commit()
    return 3


@pytest.mark.parametrize("backend", ["sqlite"])
def test_exports_rows_and_slots_by_format(metrics_config, backend, request, auth):
    request.getfixturevalue("june_guests")
    client = request.getfixturevalue("client")
    token = auth.token()
    ok = 'guest_exports_total{action="export",format="%s",outcome="ok"}'
    rows = 'guest_export_rows_total{action="export",format="%s"}'
    before = scrape(client)
    for fmt in ("csv", "json", "json"):
        response = client.get(API, query_string={"year": 2025, "month": 6, "format": fmt},
                              headers={"Authentication-Token": token}, buffered=True)
        assert response.status_code == 200 and response.headers["X-Export-Rows"] == "3"
    after = scrape(client)
    assert after[ok % "csv"] == before.get(ok % "csv", 0) + 1
    assert after[ok % "json"] == before.get(ok % "json", 0) + 2
    assert after[rows % "json"] == before.get(rows % "json", 0) + 6
    assert after["guest_export_slots_in_use"] == before["guest_export_slots_in_use"]

    streaming = client.get(API, query_string={"year": 2025, "month": 6},
                           headers={"Authentication-Token": token})
    assert scrape(client)["guest_export_slots_in_use"] == before["guest_export_slots_in_use"] + 1
    streaming.close()  # the client went away: the slot is free again
    assert scrape(client)["guest_export_slots_in_use"] == before["guest_export_slots_in_use"]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_requests_by_endpoint_name_and_failed_logins(metrics_config, backend, request):
    client = request.getfixturevalue("client")
    failures = 'guest_login_failures_total{kind="login"}'
    unknown = 'guest_http_requests_total{handler="none",method="GET",status="404"}'
    before = scrape(client)
    for _ in range(2):
        page = client.get("/login")
        client.post("/login", data={"email": ADMIN[0], "password": "wrong-password",
                                    "csrf_token": csrf_token_from(page.get_data(as_text=True))})
    page = client.get("/login")
    good = client.post("/login", data={"email": ADMIN[0], "password": ADMIN[1],
                                       "csrf_token": csrf_token_from(page.get_data(as_text=True))})
    assert good.status_code == 302
    assert client.get("/no/such/page/4711").status_code == 404
    after = scrape(client)
    assert after[failures] == before.get(failures, 0) + 2  # the right password is no failure
    assert after[unknown] == before.get(unknown, 0) + 1
    posts = [k for k in after if k.startswith("guest_http_requests_total{handler=\"security.login\","
                                              "method=\"POST\"")]
    assert sum(after[k] - before.get(k, 0) for k in posts) == 3
    assert not any("4711" in key for key in after)  # endpoint names, never raw paths


def test_serve_prepares_the_folder_and_marks_dead_workers(tmp_path, monkeypatch):
    monkeypatch.setenv(host_metrics.MULTIPROC_ENV, "placeholder")
    monkeypatch.delenv(host_metrics.MULTIPROC_ENV)  # restored (unset) after the test
    child = subprocess.Popen(["true"])
    child.wait()
    folder = tmp_path / "instance" / "prometheus"
    app = create_app(make_config(tmp_path, f"sqlite:///{tmp_path / 'x.db'}"),
                     instance_path=str(tmp_path / "instance"))
    assert app.config["PROMETHEUS_MULTIPROC_DIR"] == str(folder)
    assert metrics_folder.prepare_folder(app) is None and not folder.exists()  # metrics off

    app.config["METRICS_TOKEN"] = TOKEN
    folder.mkdir(parents=True)
    mine, gone = os.getpid(), child.pid
    for name in (f"counter_{gone}.db", f"gauge_livesum_{gone}.db", f"counter_{mine}.db",
                 f"gauge_livesum_{mine}.db", "notes.txt"):
        (folder / name).write_bytes(b"")
    assert metrics_folder.prepare_folder(app) == str(folder)
    assert os.environ[host_metrics.MULTIPROC_ENV] == str(folder)
    assert sorted(p.name for p in folder.iterdir()) == [
        f"counter_{mine}.db", f"gauge_livesum_{mine}.db", "notes.txt"]
    assert folder.stat().st_mode & 0o777 == 0o700
    metrics_folder.child_exit(None, SimpleNamespace(pid=mine))  # a live gauge stops counting
    assert sorted(p.name for p in folder.iterdir()) == [f"counter_{mine}.db", "notes.txt"]


def test_alerts_and_dashboard_name_only_documented_metrics():
    alerts = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    rules = [rule for group in alerts["groups"] for rule in group["rules"]]
    names = {rule["alert"] for rule in rules}
    assert {"GuestBackupTooOld", "GuestBackupFailed", "GuestRestoreDrillTooOld",
            "GuestHttp5xxRate"} <= names
    dashboard = json.loads((ROOT / "deploy/grafana/dashboard.json").read_text())
    exprs = [rule["expr"] for rule in rules] + [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(exprs) > 15
    docs = (ROOT / "docs/monitoring.md").read_text()
    for name in DOCUMENTED:
        assert f"`{name}`" in docs, name
    for expr in exprs:
        for used in re.findall(r"\bguest_[a-z0-9_]+", expr):
            base = re.sub(r"_(bucket|count|sum)$", "", used)
            assert base in DOCUMENTED, (used, expr)
    too_old = next(rule for rule in rules if rule["alert"] == "GuestBackupTooOld")
    assert "26 * 3600" in too_old["expr"]
