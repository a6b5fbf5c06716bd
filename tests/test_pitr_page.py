"""PITR backups started from the page (issue 24), on a REAL throwaway cluster: the form
(CSRF, admin only, the type checked), the job under the PITR lock in a thread of
the web process (embedded) or queued in Redis for ``manage.py worker``, its state
polled, the new backup in ``pgbackrest info`` and on the page, the audit entry,
and a failure shown as one line."""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
import time

import redis

from guest_backup.ops.jobs import PITR, read_job
from guest_backup.physical.owner import Owner
from guest_backup.wiring import backup_context
from guest_registration.extensions import db
from tests.helpers import ADMIN, ROOT, csrf_token_from, login_from
from tests.live_server import APP_ENV
from tests.test_pitr import cluster, make_app, set_up  # noqa: F401 (the fixture)


def _admin(app):
    client = app.test_client()
    login_from(client, *ADMIN)
    return client


def _click(client, kind: str, token: str | None = None):
    page = client.get("/admin/pitr/").get_data(as_text=True)
    data = {"type": kind, "csrf_token": token if token is not None else csrf_token_from(page)}
    return client.post("/admin/pitr/backup", data=data, follow_redirects=True)


def _wait(client, timeout: float = 180) -> dict:
    deadline, job = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        job = client.get("/admin/pitr/job").get_json()
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.25)
    raise AssertionError(f"the PITR job did not end in time: {job}")


def _hold_pgbackrest_lock(c) -> int:
    """pgBackRest's own backup lock of the stanza, held by this process (a descriptor)."""
    path = c.base / "pgbackrest" / "lock" / "guest-registration-backup.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    owner = c.data.stat()
    os.chown(path, owner.st_uid, owner.st_gid)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def _audited(c) -> list[list[str]]:
    return c.sql("SELECT action, outcome, actor, via, target FROM audit_log "
                 "WHERE action = 'pitr-backup' ORDER BY id", "guests")


def test_a_backup_from_the_page_in_a_thread(cluster, tmp_path, monkeypatch):
    c = cluster
    app = make_app(c, tmp_path)
    set_up(c, app)
    anonymous = app.test_client().post("/admin/pitr/backup", data={"type": "full"})
    assert anonymous.status_code in (302, 403) and read_job(backup_context(app), PITR) is None
    client = _admin(app)
    page = client.get("/admin/pitr/").get_data(as_text=True)
    assert 'id="pitr-backup-form"' in page and 'name="type"' in page
    assert client.post("/admin/pitr/backup", data={"type": "full"}).status_code == 400  # CSRF
    assert "Choose a backup type" in _click(client, "everything").get_data(as_text=True)
    lock = PITR.lock(backup_context(app))
    lock.acquire()
    try:  # a job holds the PITR lock: the click is refused at once, nothing starts
        busy = _click(client, "full").get_data(as_text=True)
        assert "A PITR backup is already running; wait for it to finish." in busy
    finally:
        lock.release()
    monkeypatch.setattr(Owner, "can_act", lambda self: False)  # a web server as the app's user
    refused = _click(client, "full").get_data(as_text=True)
    assert "The PITR backup could not start: pgBackRest must run as postgres" in refused
    monkeypatch.undo()
    assert read_job(backup_context(app), PITR) is None

    started = time.monotonic()
    shown = _click(client, "full").get_data(as_text=True)
    assert "PITR backup started." in shown and 'data-state="running"' in shown
    job = _wait(client)
    took = time.monotonic() - started
    assert job["state"] == "done", job
    print(f"page-started full backup: {took:.1f} s from the click to done "
          f"(pgBackRest: {job['seconds']} s, {job['size']} bytes of cluster)")
    info = c.pgbackrest_info()
    assert [(b["label"], b["type"]) for b in info["backup"]] == [(job["label"], "full")]
    page = client.get("/admin/pitr/").get_data(as_text=True)
    assert f'data-label="{job["label"]}" data-type="full"' in page
    assert f"Last PITR backup: {job['label']} (full)" in page
    assert _audited(c) == [["pitr-backup", "ok", ADMIN[0], "admin", job["label"]]]

    held = _hold_pgbackrest_lock(c)  # as a backup of the timer's would
    try:
        _click(client, "diff")
        busy = _wait(client)
    finally:
        os.close(held)
    assert busy["state"] == "failed" and busy["error"] == (
        "another pgBackRest backup of stanza guest-registration is running (wait for it to "
        "finish)"), busy

    app.config["PITR_STANZA"] = "no-such-stanza"  # pgBackRest fails: one line, no stderr
    _click(client, "incr")
    failed = _wait(client)
    assert failed["state"] == "failed" and failed["error"].startswith("pgBackRest backup ")
    assert "\n" not in failed["error"] and "HINT" not in failed["error"], failed
    page = client.get("/admin/pitr/").get_data(as_text=True)
    assert "Last PITR backup failed: pgBackRest backup " in page
    assert _audited(c)[-1][:2] == ["pitr-backup", "failed"]
    with app.app_context():
        db.engine.dispose()


def _worker_env(c, app, redis_url: str) -> dict[str, str]:
    """The app's settings for ``manage.py worker`` in a process of its own."""
    env = {k: v for k, v in os.environ.items() if k not in APP_ENV}
    env.update({name: str(app.config[name]) for name in (
        "SECRET_KEY", "SECURITY_PASSWORD_SALT", "UPLOAD_FOLDER", "BACKUP_FOLDER",
        "PITR_PG_DATA", "PITR_PG_PORT", "PITR_PG_SOCKET", "PITR_FOLDER")})
    env.update({"DATABASE_URL": c.url("guests"), "INSTANCE_PATH": app.instance_path,
                "REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1"})
    return env


def test_a_backup_from_the_page_on_an_rq_worker(cluster, tmp_path, redis_url):
    c = cluster
    app = make_app(c, tmp_path, REDIS_URL=redis_url)
    set_up(c, app)
    client = _admin(app)
    shown = _click(client, "full").get_data(as_text=True)
    assert "PITR backup started." in shown
    # nobody takes the pitr queue yet: the page says whom to start, not "waiting"
    assert "no worker takes PITR backups: start “manage.py worker --queue pitr” as root" in shown
    assert client.get("/admin/pitr/job").get_json()["no_worker"] is True
    store = redis.Redis.from_url(redis_url)
    queued = json.loads(store.get(app.config["REDIS_PREFIX"] + "pitr-job"))
    assert queued["state"] == "queued" and queued["type"] == "full"
    assert "already running" in _click(client, "diff").get_data(as_text=True)

    # the service user's worker (the default queue) leaves it to the PITR worker
    service = subprocess.run([sys.executable, "manage.py", "worker", "--burst"], cwd=ROOT,
                             env=_worker_env(c, app, redis_url), capture_output=True,
                             text=True, timeout=300)
    assert service.returncode == 0, service.stderr[-3000:]
    assert client.get("/admin/pitr/job").get_json()["state"] == "queued"
    started = time.monotonic()
    worker = subprocess.run([sys.executable, "manage.py", "worker", "--burst", "--queue", "pitr"],
                            cwd=ROOT, env=_worker_env(c, app, redis_url), capture_output=True,
                            text=True, timeout=300)
    job = client.get("/admin/pitr/job").get_json()
    print(f"queued full backup on the worker: {time.monotonic() - started:.1f} s")
    assert job["state"] == "done", (job, worker.stderr[-3000:])
    assert re.search(rf"worker\] PITR full backup {queued['id']} started", worker.stderr)
    assert f"PITR backup {queued['id']} ended: done, {job['label']}" in worker.stderr
    info = c.pgbackrest_info()
    assert [b["label"] for b in info["backup"]] == [job["label"]]
    page = client.get("/admin/pitr/").get_data(as_text=True)
    assert f'data-label="{job["label"]}" data-type="full"' in page
    assert _audited(c) == [["pitr-backup", "ok", ADMIN[0], "admin", job["label"]]]
    with app.app_context():
        db.engine.dispose()
