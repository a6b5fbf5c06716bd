"""``guest_backup.files.write_private``: the one way a small private file is
replaced whole, and what its users (job state, notification states, browse
sessions, a listing's kept verdicts) leave behind when a write fails."""

from __future__ import annotations

import os
import stat

import pytest

from guest_backup import files
from guest_backup.files import write_private


def test_a_file_is_replaced_whole_and_private_whatever_the_umask(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old")
    os.chmod(target, 0o644)
    old_umask = os.umask(0)
    try:
        write_private(target, b"new", sync=True)
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    target.write_text("old")

    def full(*args):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(files.os, "replace", full)
    with pytest.raises(OSError):
        write_private(target, b"new")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def _users(folder):
    from guest_backup.ops.browse_registry import Registry
    from guest_backup.ops.jobs import FileState
    from guest_backup.ops.notify_state import FileStates

    folder.mkdir(parents=True, exist_ok=True)

    def browse():
        with Registry(folder).edit() as entries:
            entries["a"] = {"id": "a"}
    return [lambda: FileState(folder).write({"state": "running"}),
            lambda: FileStates(folder).set("backup", "failed"), browse]


def test_no_user_leaves_a_temporary_file_when_a_write_fails(tmp_path, monkeypatch):
    """Before, the job state, the notification states and the browse registry
    each wrote their own temporary file and left it behind when the rename (or
    the write: a full disk) failed."""
    def full(*args):
        raise OSError(28, "No space left on device")
    for i, write in enumerate(_users(tmp_path / "instance")):
        monkeypatch.setattr(os, "replace", full)
        with pytest.raises(OSError):
            write()
        monkeypatch.undo()
    left = [p.name for p in (tmp_path / "instance").rglob("*")
            if p.is_file() and not p.name.endswith(".lock")]
    assert left == []
