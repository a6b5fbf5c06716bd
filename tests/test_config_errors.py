"""A setting that cannot be used stops a command with one line naming it, exit 1
(found by a docs review: a bad number in the environment was a 52-line traceback;
an app that could not start said so, then "No such command"), and
``DATABASE_SCHEMA_CHECK`` is read from the environment as the docs say."""

from __future__ import annotations

import pytest

from guest_registration.config import ConfigError, build_config
from tests.helpers import manage


@pytest.mark.parametrize("setting, value, said", [
    ("DATABASE_POOL_SIZE", "ten", "DATABASE_POOL_SIZE must be a whole number, got 'ten'"),
    ("DATABASE_SCHEMA_CHECK", "maybe", "DATABASE_SCHEMA_CHECK must be true or false"),
    ("BACKUP_KEEP_LOCAL", "maybe", "BACKUP_KEEP_LOCAL must be true or false"),
    ("INSTANCE_PATH", "/tmp", "INSTANCE_PATH /tmp is a shared folder"),
])
@pytest.mark.parametrize("command", ["status", "setup", "backup-list"])
def test_a_bad_setting_is_one_line_and_exit_1(tmp_path, setting, value, said, command):
    result = manage(command, env={setting: value}, tmp_path=tmp_path)
    _one_line(result, said)


def test_a_bad_metrics_allow_list_stops_the_web_app_in_one_line(tmp_path):
    result = manage("setup", env={"METRICS_ALLOW": "bogus!!"}, tmp_path=tmp_path)
    _one_line(result, "METRICS_ALLOW: 'bogus!!' is not an address or network")


def _one_line(result, said: str) -> None:
    assert result.returncode == 1, result.stderr
    assert said in result.stderr
    assert "Traceback" not in result.stderr and "No such command" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_the_schema_check_is_read_from_the_environment(tmp_path):
    assert build_config(str(tmp_path), environ={})["DATABASE_SCHEMA_CHECK"] is True
    for raw, value in (("false", False), ("0", False), ("yes", True)):
        config = build_config(str(tmp_path), environ={"DATABASE_SCHEMA_CHECK": raw})
        assert config["DATABASE_SCHEMA_CHECK"] is value
    with pytest.raises(ConfigError):
        build_config(str(tmp_path), environ={"DATABASE_SCHEMA_CHECK": "maybe"})


def test_the_upload_folder_is_made_private_and_a_shared_one_refused_at_start(tmp_path):
    """Only ``setup`` did it: the web app and every command took a sticky
    UPLOAD_FOLDER, and an existing 0777 one stayed 0777 (found by a docs review)."""
    import os
    import stat

    from guest_registration import create_app
    from guest_registration.config import SharedFolderError
    from tests.helpers import make_config

    uploads = tmp_path / "uploads"
    uploads.mkdir()
    uploads.chmod(0o777)
    config = make_config(tmp_path, f"sqlite:///{tmp_path / 'a.db'}", UPLOAD_FOLDER=str(uploads))
    create_app(config, instance_path=str(tmp_path / "instance"))
    assert stat.S_IMODE(os.stat(uploads).st_mode) & 0o066 == 0  # nobody else reads or writes
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    with pytest.raises(SharedFolderError):
        create_app(dict(config, UPLOAD_FOLDER=str(sticky)), instance_path=str(tmp_path / "i2"))
    assert stat.S_IMODE(os.stat(sticky).st_mode) == 0o1777
    result = manage("status", env={"UPLOAD_FOLDER": str(sticky)}, tmp_path=tmp_path)
    _one_line(result, f"UPLOAD_FOLDER {sticky} is a shared folder")
