"""Uploads whose names an archive cannot carry are left out, named in the log, and
the archive made verifies (found by review: a name with a backslash, valid on
Linux, went into an archive that ``backup`` reported made and every ``verify``,
restore and drill refused, while retention pruned older archives that restore; a
name that is not UTF-8 failed every backup with a UnicodeEncodeError)."""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

import pytest

from tests.helpers import make_backup


@pytest.mark.parametrize("backend", ["sqlite"])
def test_odd_upload_names_are_left_out_and_the_archive_verifies(app, runner, caplog):
    uploads = Path(app.config["UPLOAD_FOLDER"])
    (uploads / "docs").mkdir(parents=True, exist_ok=True)
    (uploads / "docs" / "scan\\2025.txt").write_text("backslash")
    os.makedirs(os.fsencode(uploads / "docs"), exist_ok=True)
    with open(os.path.join(os.fsencode(uploads / "docs"), b"Rechnung_M\xfcller.pdf"), "wb") as fh:
        fh.write(b"latin-1 name")
    (uploads / "docs" / "kept – ünïcode.txt").write_text("kept")
    with caplog.at_level(logging.WARNING):
        archive = make_backup(runner)
    names = zipfile.ZipFile(archive).namelist()
    assert "uploads/docs/kept – ünïcode.txt" in names
    assert not [n for n in names if "scan" in n or "Rechnung" in n]
    assert "2 upload(s) left out of the archive" in caplog.text
    assert "scan\\\\2025.txt" in caplog.text or "scan\\2025.txt" in caplog.text
    verified = runner.invoke(args=["verify", str(archive)])
    assert verified.exit_code == 0, verified.output
    drill = runner.invoke(args=["restore-test"])
    assert drill.exit_code == 0, drill.output
