"""Found by a docs review: BACKUP_COMPRESSLEVEL outside 1-9 (10: a 42-line traceback
and "the backup failed (ValueError)"; 0: database.sql stored unpacked) and
``backup-list`` saying "no archives" of a folder full of archives it does not
recognise (health and the drill counted them)."""

from __future__ import annotations

from pathlib import Path

import pytest



@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("level", [0, 10, -1])
def test_a_compression_level_outside_1_to_9_is_refused_in_one_line(app, runner, level):
    app.config["BACKUP_COMPRESSLEVEL"] = level
    result = runner.invoke(args=["backup"])
    assert result.exit_code == 1, result.output
    assert f"BACKUP_COMPRESSLEVEL must be 1 to 9, not {level}" in result.output
    assert not list(Path(app.config["BACKUP_FOLDER"]).glob("system_backup_*"))


@pytest.mark.parametrize("backend", ["sqlite"])
def test_backup_list_names_the_files_it_does_not_recognise(app, runner):
    folder = Path(app.config["BACKUP_FOLDER"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "system_backup_20250101_000000.zip").write_bytes(b"not an archive of ours")
    result = runner.invoke(args=["backup-list"])
    assert result.exit_code == 0
    assert "no archives in" in result.output
    assert "local: 1 file(s) named like archives are not recognised" in result.output
