"""SIGTERM (``systemctl stop``, ``kill``, a timeout) ends a command as Ctrl-C does.
By default it ended the process where it stood: a backup's audit entry stayed
``running`` and its partial archive stayed until the next backup."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.helpers import ROOT
from tests.test_faults import manage_env


def _audited(app, action: str) -> list[str]:
    engine = sa.create_engine(app.config["DATABASE_URL"])
    try:
        with engine.connect() as conn:
            return [r[0] for r in conn.execute(sa.text(
                "SELECT outcome FROM audit_log WHERE action = :a ORDER BY id"), {"a": action})]
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_backup_sent_sigterm_is_aborted_and_leaves_nothing(app, backend, tmp_path):
    slow = tmp_path / "slow_pg_dump"
    slow.write_text("#!/bin/sh\n"
                    f'case "$1" in --version) exec {shutil.which("pg_dump")} --version;; esac\n'
                    "head -c 300000 /dev/urandom | base64\nexec sleep 60\n")
    slow.chmod(0o755)
    folder = Path(app.config["BACKUP_FOLDER"])
    proc = subprocess.Popen([sys.executable, "manage.py", "backup"], cwd=ROOT,
                            env=manage_env(app, PG_DUMP=str(slow)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not list(folder.glob(".system_backup_*.partial")):
            assert time.monotonic() < deadline, "the backup never started writing"
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)  # the command's process only, as `kill PID`
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, (out, err)
    assert "Aborted" in err and "Traceback" not in err, err
    assert not list(folder.glob(".system_backup_*")), list(folder.iterdir())
    assert _audited(app, "backup") == ["aborted"]
