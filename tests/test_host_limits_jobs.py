"""Smaller holes, closed: the per-account login limit holds against Unicode
variants of the address; re-authentication (``/verify``) is limited like login;
with the rate-limit store (Redis) down, limited endpoints answer 503 with
Retry-After instead of 500; background jobs are JSON in Redis and the worker runs
only declared job functions."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest

from guest_registration import create_app, hookimpl
from guest_registration.tasks import task_queue
from tests.helpers import ADMIN, csrf_token_from, login_from, make_config
from tests.live_server import free_port

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])

MARKER = Path("/tmp") / "gr-job-marker"




def test_a_unicode_variant_of_a_locked_account_is_refused_too(app, client):
    host = ADMIN[0].split("@")[1]
    variant = ADMIN[0].split("@")[0] + "@" + host.replace("e", "\uff45", 1)  # fullwidth ｅ
    statuses = [login_from(client, ADMIN[0] if i % 2 else variant, "wrong-guess",
                       address=f"10.3.0.{i}").status_code for i in range(1, 16)]
    assert 429 in statuses and statuses.index(429) <= 10, statuses
    # the variant is the same account: refused from a fresh address too
    assert login_from(client, variant, "wrong-again", address="10.3.1.1").status_code == 429
    assert login_from(client, ADMIN[0].upper(), "wrong-again", address="10.3.1.2").status_code == 429


def test_reauthentication_guesses_are_limited(app, client):
    assert login_from(client, ADMIN[0], ADMIN[1]).status_code == 302
    statuses = []
    for i in range(15):
        page = client.get("/verify", environ_overrides={"REMOTE_ADDR": f"10.4.0.{i + 1}"})
        token = csrf_token_from(page.get_data(as_text=True))
        statuses.append(client.post("/verify", data={"password": "wrong", "csrf_token": token},
                                    environ_overrides={"REMOTE_ADDR": f"10.4.0.{i + 1}"}
                                    ).status_code)
    assert 429 in statuses and statuses.index(429) <= 10, statuses


def test_login_answers_503_when_the_limit_store_is_down(app, app_config, tmp_path):
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    down = create_app(dict(app_config, REDIS_URL=dead), instance_path=str(tmp_path / "down"))
    client = down.test_client()
    page = client.get("/login")
    response = client.post("/login", data={"email": ADMIN[0], "password": "x",
                                           "csrf_token": csrf_token_from(page.get_data(True))})
    assert response.status_code == 503 and int(response.headers["Retry-After"]) > 0
    assert "Traceback" not in response.get_data(as_text=True)


def write_marker(text: str) -> str:
    MARKER.write_text(text)
    return "written"


class JobsPlugin:
    @hookimpl
    def register_job_functions(self):
        return [write_marker]


def test_jobs_are_json_and_the_worker_runs_only_declared_functions(tmp_path, database_url,
                                                                 redis_url):
    MARKER.unlink(missing_ok=True)
    app = create_app(make_config(tmp_path, database_url, REDIS_URL=redis_url),
                     instance_path=str(tmp_path / "instance"),
                     extra_plugins=[("jobs", JobsPlugin())])
    with app.app_context():
        queue = task_queue(app)
        good = queue.enqueue(write_marker, "declared")
        planted = queue.enqueue("os.system", f"touch {MARKER}.planted")
        raw = queue.connection.hget(f"rq:job:{good.id}", "data")
        assert json.loads(zlib.decompress(raw))[0] == "tests.test_host_limits_jobs.write_marker"
    result = app.test_cli_runner().invoke(args=["worker", "--burst"])
    assert result.exit_code == 0, result.output
    assert MARKER.read_text() == "declared"
    assert not Path(f"{MARKER}.planted").exists()
    with app.app_context():
        planted.refresh()
        assert planted.get_status() == "failed"
        assert "is not a declared job function" in (planted.latest_result().exc_string or "")
    MARKER.unlink(missing_ok=True)
