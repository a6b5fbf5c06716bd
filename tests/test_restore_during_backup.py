"""A ``restore --replace`` started while a backup holds its tables: the restore
locked the audit trail, then waited for the backup's tables; the backup then
waited for the audit trail to write its entry. PostgreSQL could not see the loop
(it closes inside the backup's process): both commands hung, and every audited
action of the site queued behind them. The restore now waits BACKUP_LOCK_WAIT at
most for the old schema's locks, and says why it gave up."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT, make_backup
from tests.test_faults import manage_env


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_restore_during_a_backup_gives_up_and_the_backup_ends(app, runner, tmp_path,
                                                                backend):
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    archive = make_backup(runner)
    slow = tmp_path / "slow_pg_dump"  # the backup holds its tables while pg_dump starts
    slow.write_text(f"#!/bin/sh\nsleep 8\nexec {shutil.which('pg_dump')} \"$@\"\n")
    slow.chmod(0o755)
    backup = subprocess.Popen([sys.executable, "manage.py", "backup"], cwd=ROOT,
                              env=manage_env(app, PG_DUMP=str(slow), BACKUP_LOCK_WAIT="3"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    time.sleep(2)
    restore = subprocess.Popen([sys.executable, "manage.py", "restore", str(archive),
                                "--replace", "--yes"], cwd=ROOT,
                               env=manage_env(app, BACKUP_LOCK_WAIT="3"),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while backup.poll() is None or restore.poll() is None:
            assert time.monotonic() < deadline, (
                f"after 60 s: backup {'running' if backup.poll() is None else 'ended'}, "
                f"restore {'running' if restore.poll() is None else 'ended'}")
            time.sleep(0.3)
    finally:
        for proc in (backup, restore):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    said = restore.stdout.read()
    assert backup.returncode == 0, backup.stdout.read()
    assert restore.returncode == 1, said  # it came while the backup held its tables
    assert "stayed locked by another session" in said, said
    assert "nothing was restored" in said and "Traceback" not in said, said
