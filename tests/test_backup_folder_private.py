"""BACKUP_FOLDER is made private (0700) by every backup, not only by ``setup``: a
new or changed folder is created 0700 whatever the umask, a shared (sticky) one
such as ``/tmp`` is refused, and a lock file another user planted there (or a
link in its place) is refused in plain words, not taken for a running backup
(exit 75, a skipped run, every night)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from guest_backup.errors import BackupBusy, BackupError
from guest_backup.ops.locks import LOCK_NAME, BackupLock
from tests.helpers import missing

sqlite = pytest.mark.parametrize("backend", ["sqlite"])
NOT_OURS = "is not a regular file of this user"


@pytest.fixture
def sticky(tmp_path) -> Path:
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o1777)
    return folder


@sqlite
def test_a_new_backup_folder_is_created_private(app, runner, tmp_path):
    folder = tmp_path / "elsewhere" / "backups"
    app.config["BACKUP_FOLDER"] = str(folder)
    old = os.umask(0o022)
    try:
        result = runner.invoke(args=["backup"])
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


@sqlite
def test_an_existing_open_backup_folder_is_made_private(app, runner, tmp_path):
    folder = tmp_path / "open"
    folder.mkdir()
    folder.chmod(0o777)
    app.config["BACKUP_FOLDER"] = str(folder)
    result = runner.invoke(args=["backup"])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


@sqlite
@pytest.mark.parametrize("command", [["backup"], ["backup-prune", "--dry-run"]])
def test_a_shared_backup_folder_is_refused(app, runner, sticky, command):
    app.config["BACKUP_FOLDER"] = str(sticky)
    result = runner.invoke(args=command)
    assert result.exit_code == 1, result.output
    assert f"BACKUP_FOLDER {sticky} is a shared folder (sticky, as /tmp)" in result.output
    assert "Traceback" not in result.output
    assert stat.S_IMODE(sticky.stat().st_mode) == 0o1777
    assert list(sticky.iterdir()) == []


def test_the_lock_refuses_a_shared_folder(sticky):
    with pytest.raises(BackupError, match="is a shared folder") as caught:
        BackupLock(sticky).acquire()
    assert not isinstance(caught.value, BackupBusy)
    assert list(sticky.iterdir()) == []


def test_a_link_in_place_of_the_lock_file_is_refused(tmp_path):
    folder = tmp_path / "backups"
    folder.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    (folder / LOCK_NAME).symlink_to(victim)
    with pytest.raises(BackupError, match=NOT_OURS) as caught:
        BackupLock(folder).acquire()
    assert not isinstance(caught.value, BackupBusy)
    assert not victim.exists()


@sqlite
def test_a_lock_file_of_another_user_is_refused_not_busy(app, runner, tmp_path):
    """Planted while the folder was open (before this fix made it private), and
    held by its owner: before, every backup exited 75 ("another backup is running")."""
    if os.geteuid() != 0:
        missing("REQUIRE_PGBACKREST", "giving a file to another user needs root (as PITR does)")
    folder = tmp_path / "planted"
    folder.mkdir()
    lock = folder / LOCK_NAME
    lock.write_bytes(b"")
    os.chown(lock, 65534, 65534)
    app.config["BACKUP_FOLDER"] = str(folder)
    result = runner.invoke(args=["backup"])
    assert result.exit_code == 1, result.output
    assert f"the lock file {lock} {NOT_OURS}" in result.output
    assert "another backup is running" not in result.output
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_a_held_lock_of_our_own_is_still_busy(tmp_path):
    with BackupLock(tmp_path / "backups"):
        with pytest.raises(BackupBusy):
            BackupLock(tmp_path / "backups").acquire()
    assert stat.S_IMODE((tmp_path / "backups").stat().st_mode) == 0o700


@sqlite
def test_with_the_lock_in_redis_pruning_and_drills_make_the_folder_private_too(
        app, runner, redis_url, tmp_path):
    """With REDIS_URL the lock is in Redis: only a backup made BACKUP_FOLDER
    private, ``backup-prune`` and ``restore-test`` used an open or shared one."""
    app.config["REDIS_URL"] = redis_url
    folder = tmp_path / "open"
    folder.mkdir()
    folder.chmod(0o755)
    app.config["BACKUP_FOLDER"] = str(folder)
    result = runner.invoke(args=["backup-prune", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    app.config["BACKUP_FOLDER"] = str(shared)
    for command in (["backup-prune"], ["restore-test"]):
        result = runner.invoke(args=command)
        assert result.exit_code == 1, (command, result.output)
        assert f"BACKUP_FOLDER {shared} is a shared folder" in result.output
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
