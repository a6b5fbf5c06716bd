"""Limits and locks across processes: EXPORT_MAX_CONCURRENT and the backup lock
hold for every process (file locks on one machine; Redis with REDIS_URL), the
rate limits are shared through Redis, and a backup started from the page runs
on ``manage.py worker`` when REDIS_URL is set.

Two apps in one test stand for two server processes: nothing in memory is
shared between them, as between two gunicorn workers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from guest_registration import create_app
from guest_registration.extensions import db
from guest_backup.wiring import backup_context
from guest_backup.ops.jobs import read_job
from guest_backup.ops.slots import LEASE
from tests.helpers import API, ROOT, csrf_token_from


def other_process(app, app_config, **changes):
    return create_app(dict(app_config, **changes), instance_path=app.instance_path)


def dispose(*apps):
    for a in apps:
        with a.app_context():
            db.session.remove()
            db.engine.dispose()


def _open_export(client, token):
    response = client.get(API, query_string={"year": 2025, "month": 3},
                          headers={"Authentication-Token": token}, buffered=False)
    return response


@pytest.mark.parametrize("backend", ["postgresql"])
@pytest.mark.parametrize("shared", ["files", "redis"])
def test_the_export_limit_holds_across_processes(request, app, app_config, auth, backend,
                                                 shared, tmp_path):
    changes = {"EXPORT_MAX_CONCURRENT": 2}
    if shared == "redis":
        changes["REDIS_URL"] = request.getfixturevalue("redis_url")
    app.config.update(changes)
    # with Redis the second process may even be on another machine: no shared folder
    instance = app.instance_path if shared == "files" else str(tmp_path / "elsewhere")
    other = create_app(dict(app_config, **changes), instance_path=instance)
    token = auth.token()
    one, two = app.test_client(), other.test_client()
    first = _open_export(one, token)
    second = _open_export(two, token)
    third = _open_export(one, token)
    fourth = _open_export(two, token)
    try:
        assert (first.status_code, second.status_code) == (200, 200)
        for refused in (third, fourth):
            assert refused.status_code == 429
            assert int(refused.headers["Retry-After"]) > 0
            assert "too many exports" in refused.get_json()["error"]
    finally:
        for r in (first, second, third, fourth):
            r.close()
    again = _open_export(two, token)  # the slots are free again once the exports end
    assert again.status_code == 200
    again.close()
    dispose(other)


def test_a_dead_processs_redis_slot_runs_out(app, redis_url):
    app.config["REDIS_URL"] = redis_url
    slots = backup_context(app).export_slots
    client = redis.Redis.from_url(redis_url)
    client.zadd(slots.key, {"dead-process": time.time() - LEASE - 1})
    client.zadd(slots.key, {"live-process": time.time()})
    held = slots.acquire(2)
    assert held is not None and slots.active() == 2
    assert slots.acquire(2) is None
    held.release()
    assert slots.active() == 1


def _wrong_login(app, address="203.0.113.5") -> int:
    c = app.test_client()
    page = c.get("/login", environ_base={"REMOTE_ADDR": address})
    return c.post("/login", environ_base={"REMOTE_ADDR": address}, data={
        "email": "nobody@example.com", "password": "wrong",
        "csrf_token": csrf_token_from(page.get_data(as_text=True))}).status_code


@pytest.mark.parametrize("shared", ["file", "redis"])
def test_rate_limits_are_shared_between_processes(request, app, app_config, shared):
    changes = {"LOGIN_LIMIT_PER_ADDRESS": "3 per minute"}
    if shared == "redis":
        changes["REDIS_URL"] = request.getfixturevalue("redis_url")
    one = other_process(app, app_config, **changes)
    two = other_process(app, app_config, **changes)
    assert [_wrong_login(one), _wrong_login(two), _wrong_login(one)] == [200, 200, 200]
    assert _wrong_login(two) == 429  # the fourth, though this process saw only one
    assert _wrong_login(one, "198.51.100.7") == 200  # another address has its own count
    if shared == "redis":
        assert one.config["RATELIMIT_STORAGE_URI"] == changes["REDIS_URL"]
        assert redis.Redis.from_url(changes["REDIS_URL"]).keys("*guest-registration:limits/*")
    else:
        store = Path(app.instance_path) / "ratelimits.sqlite"
        assert one.config["RATELIMIT_STORAGE_URI"] == f"gr-sqlite://{store}"
        assert store.stat().st_mode & 0o777 == 0o600
    dispose(one, two)


def test_the_backup_lock_lives_in_redis(app, app_config, runner, redis_url, tmp_path):
    app.config["REDIS_URL"] = redis_url
    other = create_app(dict(app_config, REDIS_URL=redis_url, BACKUP_FOLDER=str(tmp_path / "b2")),
                       instance_path=str(tmp_path / "elsewhere"))
    lock = backup_context(app).lock().acquire()
    try:
        result = other.test_cli_runner().invoke(args=["backup"])
        assert result.exit_code == 75, result.output
        assert "another backup is running" in result.output
    finally:
        lock.release()
    # a holder that died without releasing frees the lock when its expiry passes
    stale = backup_context(app).lock()
    stale.TTL = 1
    stale.acquire(renew=False)
    time.sleep(1.3)
    assert not backup_context(other).lock().taken_elsewhere()
    result = other.test_cli_runner().invoke(args=["backup"])
    assert result.exit_code == 0, result.output
    dispose(other)


def worker_env(app, redis_url: str) -> dict:
    env = {k: v for k, v in os.environ.items()}
    env.update(DATABASE_URL=app.config["DATABASE_URL"], INSTANCE_PATH=app.instance_path,
               UPLOAD_FOLDER=app.config["UPLOAD_FOLDER"], BACKUP_FOLDER=app.config["BACKUP_FOLDER"],
               SECRET_KEY=app.config["SECRET_KEY"], REDIS_URL=redis_url,
               SECURITY_PASSWORD_SALT=app.config["SECURITY_PASSWORD_SALT"])
    return env


def test_a_page_backup_is_queued_for_the_worker(app, client, auth, redis_url):
    app.config["REDIS_URL"] = redis_url
    auth.login()
    page = client.get("/admin/backup/").get_data(as_text=True)
    response = client.post("/admin/backup/start", data={"csrf_token": csrf_token_from(page)})
    assert response.status_code == 302
    job = client.get("/admin/backup/job").get_json()
    assert job["state"] == "queued"
    # a second click while it waits is refused
    client.post("/admin/backup/start", data={"csrf_token": csrf_token_from(page)})
    assert "already running" in client.get("/admin/backup/").get_data(as_text=True)
    assert not list(Path(app.config["BACKUP_FOLDER"]).glob("system_backup_*"))

    worker = subprocess.run([sys.executable, "manage.py", "worker", "--burst"], cwd=ROOT,
                            env=worker_env(app, redis_url), capture_output=True, text=True,
                            timeout=180)
    assert worker.returncode == 0, worker.stderr[-2000:]
    job = client.get("/admin/backup/job").get_json()
    assert job["state"] == "done", job
    archive = Path(app.config["BACKUP_FOLDER"]) / job["archive"]
    assert archive.is_file() and job["download_url"]
    assert not backup_context(app).lock().taken_elsewhere()  # released by the worker
    with app.app_context():
        from guest_registration.audit import recent

        entry = recent(db.engine, 5)
    assert any(e["action"] == "backup" and e["outcome"] == "ok" and e["via"] == "admin"
               for e in entry)


def test_a_queued_backup_nobody_runs_is_reported(app, redis_url):
    app.config["REDIS_URL"] = redis_url
    ctx = backup_context(app)
    client = redis.Redis.from_url(redis_url)
    client.set("guest-registration:backup-job", json.dumps(
        {"id": "z", "state": "queued", "stage": "waiting for a worker", "bytes": 0}))
    state = read_job(ctx)  # no lock held: the queued job's lock ran out
    assert state["state"] == "failed" and "manage.py worker" in state["error"]


def test_the_worker_needs_redis(runner):
    result = runner.invoke(args=["worker", "--burst"])
    assert result.exit_code != 0 and "REDIS_URL is not set" in result.output


def test_an_idle_worker_stops_listening_at_once_on_a_busy_machine(redis_url):
    """A stopping worker unsubscribes from RQ's command channel and ends the thread
    listening on it. On a busy machine that thread used to read the reply before the
    stop came, then wait a minute for a new subscription: SIGTERM took 60 s."""
    import threading

    from rq import Queue
    from rq.serializers import JSONSerializer

    from guest_registration.tasks import _worker_class

    connection = redis.Redis.from_url(redis_url)
    worker = _worker_class(frozenset())([Queue("q", connection=connection, serializer=JSONSerializer)],
                                        connection=connection, serializer=JSONSerializer)
    worker.subscribe()
    listening = worker.pubsub_thread
    deadline = time.monotonic() + 10
    while not worker.pubsub.subscribed and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # the thread is reading, as an idle worker's is
    sent = worker.pubsub.unsubscribe

    def slow_unsubscribe(*args):  # the busy machine: the stop comes after the reply is read
        result = sent(*args)
        time.sleep(0.5)
        return result

    worker.pubsub.unsubscribe = slow_unsubscribe
    started = time.monotonic()
    stopping = threading.Thread(target=worker.unsubscribe, daemon=True)
    stopping.start()
    stopping.join(10)
    took = time.monotonic() - started
    listening.join(60)  # so that a failure leaves no thread behind
    assert not stopping.is_alive() and took < 5, f"unsubscribing took {took:.1f} s"
    assert not listening.is_alive()


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_queued_restore_drill_runs_on_the_worker(app, runner, redis_url, backend):
    app.config["REDIS_URL"] = redis_url
    assert runner.invoke(args=["backup"]).exit_code == 0
    queued = runner.invoke(args=["restore-test", "--queue"])
    assert queued.exit_code == 0, queued.output
    assert "queued restore drill restore-test-" in queued.output
    with app.app_context():
        from guest_registration.audit import recent

        assert not recent(db.engine, 5, action="restore-test")  # nothing ran yet
    worker = subprocess.run([sys.executable, "manage.py", "worker", "--burst"], cwd=ROOT,
                            env=worker_env(app, redis_url), capture_output=True, text=True,
                            timeout=180)
    assert worker.returncode == 0, worker.stderr[-2000:]
    with app.app_context():
        drills = recent(db.engine, 5, action="restore-test")
    assert [(d["outcome"], d["via"]) for d in drills] == [("ok", "worker")], worker.stderr[-3000:]


def test_queueing_a_drill_needs_redis(runner):
    result = runner.invoke(args=["restore-test", "--queue"])
    assert result.exit_code == 1 and "REDIS_URL is not set" in result.output


def test_a_held_redis_lock_is_renewed_while_its_holder_lives(app, redis_url):
    """The lock outlives its expiry while the holder runs (renewed every TTL/3), and
    a second taker is refused all along; released, it is free at once."""
    from guest_backup.errors import BackupBusy

    app.config["REDIS_URL"] = redis_url
    holder = backup_context(app).lock()
    holder.TTL = 1
    holder.acquire()
    try:
        for _ in range(3):  # three times the expiry
            time.sleep(1.0)
            with pytest.raises(BackupBusy):
                backup_context(app).lock().acquire()
    finally:
        holder.release()
    assert not backup_context(app).lock().taken_elsewhere()
    backup_context(app).lock().acquire().release()
