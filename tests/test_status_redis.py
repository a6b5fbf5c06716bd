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


def test_no_part_of_a_password_holding_an_at_sign_is_shown(app, runner):
    """redis-py takes ``p@ss-word`` as the password of ``redis://:p@ss-word@host``;
    SQLAlchemy's URL parser split at the first ``@`` and showed ``ss-word``."""
    result = status(app, runner, f"redis://:p@ss-word@127.0.0.1:{free_port()}/0")
    assert "ss-word" not in result.output and "redis://***@127.0.0.1:" in result.output


def test_a_huge_duration_stops_start_up_in_one_line(tmp_path):
    """``PITR_MAX_WAL_DELAY=999999999999w`` gave an OverflowError traceback."""
    import os
    import subprocess
    import sys

    from tests.helpers import ROOT

    env = {**os.environ, "PITR_MAX_WAL_DELAY": "999999999999w",
           "INSTANCE_PATH": str(tmp_path / "instance"),
           "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    done = subprocess.run([sys.executable, "manage.py", "status"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "PITR_MAX_WAL_DELAY must be a duration" in done.stdout + done.stderr
