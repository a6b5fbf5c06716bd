"""``status`` and Redis: with ``REDIS_URL`` set, the backup lock, the export and
login limits and the queued jobs live there, so every backup, drill and pruning
fails while it cannot be reached. ``status`` said nothing of it (all ``[ok]``,
exit 0)."""

from __future__ import annotations

import pytest

from tests.live_server import free_port


@pytest.fixture
def backend():
    return "sqlite"


def status(app, runner, url: str):
    app.config["REDIS_URL"] = url
    app.extensions.pop("guest_redis", None)  # the client is built once, from the URL
    return runner.invoke(args=["status"])


def test_status_fails_while_redis_cannot_be_reached(app, runner):
    result = status(app, runner, f"redis://:S3cretPw@127.0.0.1:{free_port()}/0?password=Q2pw")
    assert result.exit_code == 1, result.output
    line = next(line for line in result.output.splitlines() if "] redis: " in line)
    assert line.startswith("[FAIL]") and "cannot be reached" in line, line
    assert "S3cretPw" not in result.output and "Q2pw" not in result.output


def test_status_names_a_reachable_redis(app, runner, redis_url):
    result = status(app, runner, redis_url)
    assert "redis: reachable at redis://" in result.output, result.output
