"""A setting that names a shared folder (sticky, as ``/tmp``) for one of the app's
own folders is refused in one line, and the folder keeps its mode and content:
``setup`` made it private (0711 for UPLOAD_FOLDER and the instance folder, 0700
for BACKUP_FOLDER), which run as root takes ``/tmp`` from every other user. And
``setup --admin-email`` without a password says so in one line, not a traceback."""

from __future__ import annotations

import stat

import pytest

from tests.helpers import manage


@pytest.fixture
def shared(tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o1777)
    return folder


@pytest.mark.parametrize("setting", ["UPLOAD_FOLDER", "BACKUP_FOLDER", "INSTANCE_PATH"])
def test_setup_refuses_a_shared_folder_and_leaves_it_as_it_is(tmp_path, shared, setting):
    out = manage("setup", env={setting: str(shared)}, tmp_path=tmp_path)
    assert out.returncode != 0, out.stdout
    assert f"{setting} {shared} is a shared folder (sticky, as /tmp)" in out.stderr
    assert f"give {setting} a folder of its own" in out.stderr
    assert "Traceback" not in out.stderr
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert list(shared.iterdir()) == []


def test_every_command_refuses_a_shared_instance_folder(tmp_path, shared):
    out = manage("backup-list", env={"INSTANCE_PATH": str(shared)}, tmp_path=tmp_path)
    assert out.returncode != 0
    assert f"the app cannot start: INSTANCE_PATH {shared} is a shared folder" in out.stderr
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777 and list(shared.iterdir()) == []


def test_a_private_folder_of_the_apps_own_is_still_made_private(tmp_path):
    """Not sticky, though everyone may write to it (a wrong umask): made private, as
    before."""
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    uploads.chmod(0o777)
    out = manage("setup", env={"UPLOAD_FOLDER": str(uploads)}, tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr[-800:]
    assert stat.S_IMODE(uploads.stat().st_mode) == 0o711


def test_setup_without_the_admin_password_says_so_in_one_line(tmp_path):
    out = manage("setup", "--admin-email", "boss@example.com", env={"ADMIN_PASSWORD": ""},
                 tmp_path=tmp_path)
    assert out.returncode == 1
    assert out.stderr.strip() == ("Error: --admin-password (or ADMIN_PASSWORD) is required with "
                                  "--admin-email")
