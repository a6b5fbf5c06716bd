"""A file planted where an archive is written, in a shared ``file://`` folder or an
``--output`` folder, is never written through or into (found by review: the
partial file's name was predictable and opened with ``O_TRUNC``, so a link planted
there had the archive written over the service's own file, its target, and the
link renamed to the archive's name; a planted 0666 file became the archive, its
planter's and readable by all; the backup said ``copied to file://…``)."""

from __future__ import annotations

import os
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.helpers import make_backup

VICTIM_TEXT = b"the service's own file: never overwritten"


def plant(folder: Path, victim: Path, base: str = "system_backup_{:%Y%m%d_%H%M%S}.zip") -> int:
    """Links to ``victim`` and files of another user at every partial name the
    next 2 minutes could have (the names written before the fix)."""
    now, planted = datetime.now(timezone.utc), 0
    for second in range(120):
        name = base.format(now + timedelta(seconds=second))
        os.symlink(victim, folder / f".{name}.partial")
        os.symlink(victim, folder / f".{name}.partial.sig")
        planted += 2
    return planted


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_link_planted_in_a_shared_remote_folder_is_not_written_through(app, runner, tmp_path):
    share = tmp_path / "share"
    share.mkdir(mode=0o777)
    share.chmod(0o777)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(VICTIM_TEXT)
    plant(share, victim)
    app.config["BACKUP_REMOTE_URL"] = f"file://{share}"
    archive = make_backup(runner)
    assert victim.read_bytes() == VICTIM_TEXT
    remote = share / archive.name
    assert remote.is_file() and not remote.is_symlink()
    info = remote.stat()
    assert info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) == 0o600
    assert remote.read_bytes() == archive.read_bytes()
    seal = share / (archive.name + ".sig")
    assert seal.is_file() and not seal.is_symlink()
    listed = runner.invoke(args=["backup-list"]).output
    line = next(line for line in listed.splitlines() if archive.name in line)
    assert "remote" in line, listed


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_link_planted_beside_an_output_file_is_not_written_through(app, runner, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_bytes(VICTIM_TEXT)
    os.symlink(victim, out / ".nightly.zip.partial")
    os.symlink(victim, out / ".nightly.zip.partial.sig")
    result = runner.invoke(args=["backup", "--output", str(out / "nightly.zip")])
    assert result.exit_code == 0, result.output
    assert victim.read_bytes() == VICTIM_TEXT
    made = out / "nightly.zip"
    assert made.is_file() and not made.is_symlink()
    assert runner.invoke(args=["verify", str(made)]).exit_code == 0
