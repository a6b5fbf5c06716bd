"""Jobs go to their function's queue and only that queue's workers take them: on
one queue, the service user's worker took PITR backups (and failed them: pgBackRest
needs root) and a root worker took system backups (and refused them in the service
user's folder)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from guest_registration import create_app, hookimpl
from guest_registration.tasks import job_queue, queue_workers, task_queue
from tests.helpers import ROOT, make_config

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])

MARKERS = Path("/tmp") / "gr-queue-markers"


def write_default(text: str) -> str:
    (MARKERS / "default").write_text(text)
    return "written"


def write_special(text: str) -> str:
    (MARKERS / "special").write_text(text)
    return "written"


write_special.job_queue = "special"  # type: ignore[attr-defined]


class QueuesPlugin:
    @hookimpl
    def register_job_functions(self):
        return [write_default, write_special]


@pytest.fixture
def queued_app(tmp_path, database_url, redis_url):
    MARKERS.mkdir(exist_ok=True)
    for marker in MARKERS.iterdir():
        marker.unlink()
    app = create_app(make_config(tmp_path, database_url, REDIS_URL=redis_url),
                     instance_path=str(tmp_path / "instance"),
                     extra_plugins=[("queues", QueuesPlugin())])
    yield app
    with app.app_context():
        for name in ("default", "special"):
            task_queue(app, name).empty()
    for marker in MARKERS.iterdir():
        marker.unlink()


def _worker(app, *args: str):
    return app.test_cli_runner().invoke(args=["worker", "--burst", *args])


def test_a_worker_takes_only_the_jobs_of_its_queues(queued_app, backend):
    app = queued_app
    with app.app_context():
        for function in (write_default, write_special):
            task_queue(app, job_queue(function)).enqueue(function, function.__name__)
        special = task_queue(app, "special")
        assert special.name == app.config["REDIS_PREFIX"] + "jobs:special"
        assert task_queue(app).name == app.config["REDIS_PREFIX"] + "jobs"  # as before
    result = _worker(app)
    assert result.exit_code == 0, result.output
    assert (MARKERS / "default").read_text() == "write_default"
    assert not (MARKERS / "special").exists() and special.count == 1
    result = _worker(app, "--queue", "special")
    assert result.exit_code == 0, result.output
    assert (MARKERS / "special").read_text() == "write_special" and special.count == 0


def test_one_worker_may_take_several_queues(queued_app, backend):
    app = queued_app
    with app.app_context():
        for function in (write_default, write_special):
            task_queue(app, job_queue(function)).enqueue(function, "both")
    result = _worker(app, "--queue", "special", "--queue", "default")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in MARKERS.iterdir()) == ["default", "special"]


def test_a_queue_nobody_declared_is_refused(queued_app, backend):
    result = _worker(queued_app, "--queue", "pitrr")
    assert result.exit_code != 0
    assert "no queue named 'pitrr': the queues are default, pitr, special" in result.output


def test_pitr_backups_from_the_page_have_their_own_queue(queued_app, backend):
    from guest_backup.tasks import run_queued_backup, run_queued_pitr_backup

    assert job_queue(run_queued_pitr_backup) == "pitr"
    assert job_queue(run_queued_backup) == "default"


def test_a_page_can_tell_whether_a_worker_takes_a_queue(queued_app, backend):
    """The PITR page said "waiting for a worker" for ever when no worker took the
    pitr queue; it asks RQ's registry of live workers."""
    app = queued_app
    assert queue_workers(app, "pitr") == 0
    env = dict(os.environ, INSTANCE_PATH=app.instance_path)
    env.update({name: str(app.config[name]) for name in (
        "SECRET_KEY", "SECURITY_PASSWORD_SALT", "DATABASE_URL", "UPLOAD_FOLDER",
        "BACKUP_FOLDER", "REDIS_URL", "REDIS_PREFIX")})
    worker = subprocess.Popen([sys.executable, "manage.py", "worker", "--queue", "pitr"],
                              cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while queue_workers(app, "pitr") != 1 and time.monotonic() < deadline:
            assert worker.poll() is None, worker.stderr.read()
            time.sleep(0.2)
        assert queue_workers(app, "pitr") == 1
        assert queue_workers(app) == 0  # the default queue's workers are others
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    assert queue_workers(app, "pitr") == 0
