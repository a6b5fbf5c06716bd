"""Retention, health, metrics and notifications against what is known about the
archives: a damaged archive neither displaces a good one nor passes as healthy, a
pruning stopped half-way says what it did, new problems are told, an --output copy
is not the storages' backup, and Object Lock's holds are named."""
from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from tests.helpers import make_backup, sealed
from tests.live_server import free_port
from tests.test_metrics import metrics_config, scrape  # noqa: F401
from tests.test_notify import notified_config, receiver  # noqa: F401
from tests.test_remote import s3  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
TODAY = datetime.now(timezone.utc).date()


def named(day) -> str:
    return f"system_backup_{day:%Y%m%d}_030000.zip"


def zips(folder) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir() if p.name.endswith(".zip"))


@pytest.fixture
def backend():
    return "sqlite"


def corrupt(path: Path) -> bytes:
    """One bit flipped (bit rot): same size, the seal still valid; the old bytes."""
    before = path.read_bytes()
    data = bytearray(before)
    data[len(data) // 3] ^= 1
    path.write_bytes(bytes(data))
    return before


def no_remote_there(monkeypatch, app) -> None:
    for key, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
                       "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    app.config["BACKUP_REMOTE_URL"] = "s3://bucket/site"


def health_of(runner) -> tuple[int, dict]:
    result = runner.invoke(args=["backup-health"])
    return result.exit_code, json.loads(result.output)


# -- 1. retention and an archive known to be damaged ------------------------------------

def test_retention_keeps_the_good_archive_over_one_known_damaged(app, runner):
    good = make_backup(runner)
    time.sleep(1.1)
    damaged = make_backup(runner)
    corrupt(damaged)
    assert runner.invoke(args=["verify", str(damaged)]).exit_code != 0
    app.config["BACKUP_KEEP"] = 1
    result = runner.invoke(args=["backup-prune"])
    assert result.exit_code == 0, result.output
    assert good.exists() and damaged.exists(), result.output
    assert f"{good.name}  keep (last 1)" in result.output
    assert f"{damaged.name}  keep (failed verification on " in result.output
    assert "not counted" in result.output


def test_plan_counts_no_damaged_archive_but_the_legal_horizon_still_removes_it():
    from guest_backup.ops.retention import Policy, plan

    day = lambda n: datetime(2026, 6, 10 - n, 3, tzinfo=timezone.utc)  # noqa: E731
    archives = [(f"a{n}", day(n)) for n in range(4)]
    bad = {"a0": "failed verification on X (verify); not counted",
           "a3": "failed verification on Y (verify); not counted"}
    decisions = {d.name: d for d in plan(archives, Policy(last=2), damaged=bad)}
    assert [n for n, d in decisions.items() if not d.keep] == []  # a1, a2 kept: last 1, 2
    assert decisions["a1"].reasons == ["last 1"] and decisions["a2"].reasons == ["last 2"]
    assert decisions["a0"].reasons == [bad["a0"]]
    assert list(decisions) == ["a0", "a1", "a2", "a3"]  # newest first, as before
    past = plan(archives, Policy(last=2, horizon=day(2)), damaged=bad)
    assert [d.name for d in past if not d.keep] == ["a3"]


# -- 2. a pruning stopped by an unreachable remote ------------------------------------

def test_a_pruning_stopped_by_the_remote_says_what_it_removed(notified_config, receiver,
                                                             request, monkeypatch):
    app = request.getfixturevalue("app")
    runner = app.test_cli_runner()
    folder = app.config["BACKUP_FOLDER"]
    sealed(app, Path(folder), [named(TODAY - timedelta(days=i)) for i in range(4)])
    no_remote_there(monkeypatch, app)
    app.config["BACKUP_KEEP"] = 1
    result = runner.invoke(args=["backup-prune"])
    assert zips(folder) == [named(TODAY)] and result.exit_code == 1, result.output
    assert "removed 3 of 4 archive(s) from local" in result.output, result.output
    assert "remote" in result.output and "could not be reached" in result.output
    text = receiver.messages[-1]["message"]
    assert "Old archives are kept" not in text
    assert "removed 3 of 4 archive(s) from local" in text and "remote" in text, text
    from guest_backup.wiring import backup_context
    from guest_registration.extensions import db

    with app.app_context():
        entries = backup_context(app).audit.recent(db.engine, 5, action="prune")
    assert [(e["outcome"], e["message"].split(":")[0]) for e in entries[:2]] == [
        ("failed", "remote"), ("ok", "local")]


# -- 3. new problems while health is degraded ---------------------------------------

def test_a_new_problem_while_degraded_is_told(notified_config, receiver, request):
    app = request.getfixturevalue("app")
    runner = app.test_cli_runner()
    path = make_backup(runner)
    runner.invoke(args=["notify-check"])
    assert receiver.titles == ["Backup health degraded"]  # no drill yet
    runner.invoke(args=["notify-check"])
    assert len(receiver.messages) == 1  # nothing new
    path.unlink()
    Path(f"{path}.sig").unlink()  # every archive gone
    assert runner.invoke(args=["notify-check"]).output.strip() == "unhealthy"
    assert len(receiver.messages) == 2, receiver.titles
    assert "no archive yet" in receiver.messages[-1]["message"]
    runner.invoke(args=["notify-check"])
    make_backup(runner)  # the archive is back, the drill still missing: not news
    runner.invoke(args=["notify-check"])
    assert len(receiver.messages) == 2, receiver.titles


# -- 4. health and the newest archive failing its check --------------------------------

def test_health_is_unhealthy_when_the_newest_archive_failed_verification(app, runner):
    make_backup(runner)
    assert runner.invoke(args=["restore-test"]).exit_code == 0
    time.sleep(1.1)
    newest = make_backup(runner)
    intact = corrupt(newest)
    assert runner.invoke(args=["verify", str(newest)]).exit_code != 0
    code, report = health_of(runner)
    assert code == 1 and [p["id"] for p in report["problem_ids"]] == ["newest_failed_check"]
    assert newest.name in report["problems"][0] and "verify" in report["problems"][0]
    newest.write_bytes(intact)  # a copy put back; verified again
    assert runner.invoke(args=["verify", str(newest)]).exit_code == 0
    assert health_of(runner)[0] == 0


# -- 5. an old upload failure once the remote is off ---------------------------------

def test_an_upload_failure_is_forgotten_once_the_remote_is_off(app, runner, monkeypatch):
    no_remote_there(monkeypatch, app)
    assert runner.invoke(args=["backup"]).exit_code == 1
    code, report = health_of(runner)
    assert "upload_failed" in [p["id"] for p in report["problem_ids"]]
    app.config["BACKUP_REMOTE_URL"] = ""
    time.sleep(1.1)
    make_backup(runner)
    assert runner.invoke(args=["restore-test"]).exit_code == 0
    code, report = health_of(runner)
    assert code == 0, report["problems"]


# -- 6. an --output copy and the metrics ----------------------------------------

def test_an_output_copy_is_not_the_last_backup_of_the_storages(metrics_config, request,
                                                               tmp_path):
    app = request.getfixturevalue("app")
    runner = app.test_cli_runner()
    old = datetime.now(timezone.utc) - timedelta(days=3)
    sealed(app, Path(app.config["BACKUP_FOLDER"]), [f"system_backup_{old:%Y%m%d_%H%M%S}.zip"])
    assert runner.invoke(args=["backup", "--output", str(tmp_path)]).exit_code == 0
    values = scrape(app.test_client())
    assert values["guest_backup_last_success_timestamp_seconds"] == 0  # none in the storages
    assert values["guest_backup_last_attempt_timestamp_seconds"] == 0
    make_backup(runner)
    values = scrape(app.test_client())
    assert time.time() - values["guest_backup_last_success_timestamp_seconds"] < 600


def test_an_alert_watches_each_storages_newest_archive():
    alerts = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    rules = {r["alert"]: r for g in alerts["groups"] for r in g["rules"]}
    expr = rules["GuestBackupNewestArchiveTooOld"]["expr"]
    assert "guest_backup_newest_archive_timestamp_seconds" in expr and "26 * 3600" in expr


# -- 7. legal retention and Object Lock ---------------------------------------------

def test_retention_enforce_names_archives_past_retention_it_cannot_remove(app, s3, runner,  # noqa: F811
                                                                         tmp_path):
    s3.create_bucket(Bucket="locked", ObjectLockEnabledForBucket=True)
    old = named(TODAY - timedelta(days=7 * 366))
    sealed(app, tmp_path, [old])
    until = datetime.now(timezone.utc) + timedelta(days=30)
    for f in (old, old + ".sig"):
        s3.put_object(Bucket="locked", Key=f"site/{f}", Body=(tmp_path / f).read_bytes(),
                      ObjectLockMode="COMPLIANCE", ObjectLockRetainUntilDate=until)
    app.config["BACKUP_REMOTE_URL"] = "s3://locked/site"
    result = runner.invoke(args=["retention-enforce"])
    assert result.exit_code == 0, result.output
    warning = f"WARNING remote: {old} is past the legal retention but kept: Object Lock"
    assert warning in result.output and f"until {until:%Y-%m-%d}" in result.output, \
        result.output
    code, report = health_of(runner)
    held = [p for p in report["problem_ids"] if p["id"] == "overdue_archives_held"]
    assert held and f"until {until:%Y-%m-%d}" in held[0]["text"], report["problems"]
    assert "overdue_archives" not in [p["id"] for p in report["problem_ids"]]


@pytest.mark.parametrize("setting", ["BACKUP_KEEP", "BACKUP_KEEP_DAILY", "BACKUP_KEEP_WEEKLY",
                                     "BACKUP_KEEP_MONTHLY"])
def test_a_negative_keep_stops_start_up_instead_of_deleting_archives(setting, tmp_path,
                                                                     database_url):
    """-1 (restic's "unlimited") kept only the newest archive: every rule at -1
    removed all the others, after every backup."""
    import os
    import subprocess
    import sys

    from tests.helpers import ROOT

    env = dict(os.environ, **{setting: "-1"}, INSTANCE_PATH=str(tmp_path / "instance"),
               DATABASE_URL=database_url)
    result = subprocess.run([sys.executable, "manage.py", "backup-prune", "--dry-run"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip() == (f"Error: the app cannot start: {setting} must be a whole "
                                     f"number of at least 0, not -1"), result.stderr
