"""Subject access after an erasure, and its output folder.

- An erased person is no longer in the database, but the archives made before
  the erasure still hold them until retention removes them (archives are never
  edited): the answer names the erasure (found in the erasure ledger by the keyed
  hash of the e-mail or document number) and those archives, from the erased
  records' creation on when it is known.
- The files are written 0600 into a 0700 folder: an existing folder others may
  read or enter is refused (exit 1, nothing written).
"""

from __future__ import annotations

import json
import os
import stat
from datetime import datetime
from pathlib import Path

import pytest

from guest_registration.extensions import db
from guest_registration.models import Guest, Registration, Trip
from tests.helpers import sealed
from tests.test_subject_access import people, run

ARCHIVES = ["system_backup_20241201_030000.zip", "system_backup_20250301_030000.zip",
            "system_backup_20251201_030000.zip"]
SINCE_JANUARY = ["system_backup_20251201_030000.zip", "system_backup_20250301_030000.zip"]


def names(data: dict) -> list[str]:
    return [a["name"] for a in data["archives"]]


def test_the_archives_made_before_an_erasure_are_listed(app, runner, tmp_path):
    people(app)
    sealed(app, Path(app.config["BACKUP_FOLDER"]), ARCHIVES)
    before, _, _, _ = run(runner, tmp_path, "--email", "jana.novak@example.org")
    assert names(before) == SINCE_JANUARY and not before.get("erasures")
    erased = runner.invoke(args=["erase", "--email", "jana.novak@example.org", "--yes"])
    assert erased.exit_code == 0, erased.output
    data, rows, output, _ = run(runner, tmp_path, "--email", " JANA.NOVAK@example.ORG")
    assert data["registrations"] == [] and rows == []
    assert names(data) == SINCE_JANUARY  # not the one of 2024: made before her first record
    # the erased records are still at their ids (anonymised), with their creation time
    (erasure,) = data["erasures"]
    assert (erasure["ledger_line"], erasure["records_since"]) == (1, "2025-01-10T09:00:00Z")
    assert f"erased at {erasure['erased_at']} (erasure ledger line 1)" in output
    assert "still hold them until retention removes them" in output
    assert "2 archive(s) may hold them" in output
    by_document, _, _, _ = run(runner, tmp_path, "--document", "ab 123456")
    assert [e["ledger_line"] for e in by_document["erasures"]] == [1]
    assert names(by_document) == SINCE_JANUARY  # and Karel's guest of that number: since June
    other, _, out, _ = run(runner, tmp_path, "--email", "jana.novak@example.com")
    assert other["erasures"] == [] and "erased at" not in out


def test_an_erasure_whose_records_are_gone_lists_every_older_archive(app, runner, tmp_path):
    people(app)
    sealed(app, Path(app.config["BACKUP_FOLDER"]), ARCHIVES)
    erased = runner.invoke(args=["erase", "--email", "jana.novak@example.org", "--yes"])
    assert erased.exit_code == 0, erased.output
    with app.app_context():  # deleted since (or a database restored without them)
        gone = [r.id for r in db.session.query(Registration).filter(
            Registration.email.like("erased-%"))]
        db.session.query(Guest).filter(Guest.registration_id.in_(gone)).delete()
        db.session.query(Registration).filter(Registration.id.in_(gone)).delete()
        db.session.commit()
        # the person registers again: what is in the database counts from its creation
        db.session.add(Registration(trip=Trip(title="Later", max_guests=2),
                                    email="jana.novak@example.org",
                                    created_at=datetime(2026, 1, 5)))
        db.session.commit()
    sealed(app, Path(app.config["BACKUP_FOLDER"]), ["system_backup_20260201_030000.zip"])
    data, _, _, _ = run(runner, tmp_path, "--email", "jana.novak@example.org")
    assert len(data["registrations"]) == 1
    assert names(data) == ["system_backup_20260201_030000.zip"] + SINCE_JANUARY + [
        "system_backup_20241201_030000.zip"]
    assert [e["records_since"] for e in data["erasures"]] == [None]


def test_a_broken_ledger_is_a_warning_not_a_silent_empty_list(app, runner, tmp_path):
    people(app)
    assert runner.invoke(args=["erase", "--email", "jana.novak@example.org", "--yes"]).exit_code == 0
    ledger = Path(app.instance_path) / "erasure-ledger.jsonl"
    ledger.write_bytes(ledger.read_bytes().replace(b'"seq":1', b'"seq":2'))
    result = runner.invoke(args=["subject-access", "--email", "jana.novak@example.org",
                                 "--output", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "WARNING the erasure ledger in the instance folder" in result.output
    assert "the archives made before an erasure of this person are not listed" in result.output


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o711, 0o701, 0o770])
def test_an_existing_folder_others_may_enter_is_refused(app, runner, tmp_path, mode):
    people(app)
    out = tmp_path / "shared"
    out.mkdir()
    os.chmod(out, mode)
    result = runner.invoke(args=["subject-access", "--email", "jana.novak@example.org",
                                 "--output", str(out)])
    assert result.exit_code == 1, result.output
    assert f"the folder {out} already exists and is not private (mode {mode:04o}, not 0700)" \
        in result.output
    assert "Traceback" not in result.output
    assert list(out.iterdir()) == [] and stat.S_IMODE(out.stat().st_mode) == mode
    os.chmod(out, 0o700)  # made private: taken
    ok = runner.invoke(args=["subject-access", "--email", "jana.novak@example.org",
                             "--output", str(out)])
    assert ok.exit_code == 0, ok.output
    assert sorted(stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()) == [0o600, 0o600]


def test_a_new_folder_is_0700_whatever_the_umask(app, runner, tmp_path):
    people(app)
    old = os.umask(0o277)  # mkdir alone would make it 0500
    try:
        out = tmp_path / "access"
        result = runner.invoke(args=["subject-access", "--document", "P1", "--output", str(out)])
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    data = json.loads(next(out.glob("*.json")).read_text())
    assert [g["first_name"] for r in data["registrations"] for g in r["guests"]] == ["Petr"]
    file = tmp_path / "a-file"
    file.write_text("")
    refused = runner.invoke(args=["subject-access", "--document", "P1", "--output", str(file)])
    assert refused.exit_code != 0 and "Traceback" not in refused.output
