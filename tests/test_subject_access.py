"""Subject access (GDPR Art. 15, issue 22): ``subject-access --email | --document
--output DIR`` writes every registration and guest of one person, and nothing of
anyone else, as JSON and CSV (0600), with the archives that may hold them."""

from __future__ import annotations

import csv
import json
import stat
from datetime import datetime
from pathlib import Path

from guest_registration.extensions import db
from guest_registration.models import AuditEntry, Guest, Registration, Trip
from tests.helpers import sealed

JANUARY, JUNE = datetime(2025, 1, 10, 9, 0), datetime(2025, 6, 1, 9, 0)
OTHERS = ["jana.novak@example.com", "xjana.novak@example.org", "Eva", "Svobodová",
          "AB 123 457", "Karel", "karel@example.net", "Novakova", "ab123 456"]


def people(app) -> dict:
    """Jana: two registrations (her address written two ways), her son Petr in the
    first; Eva with a similar address and document; Karel registered himself and
    Jana (her document number typed with other spaces and case)."""
    with app.app_context():
        trip = Trip(title="Lake Trip", max_guests=9)
        first = Registration(trip=trip, email="Jana.Novak@example.org", created_at=JANUARY)
        second = Registration(trip=trip, email=" jana.novak@EXAMPLE.org", created_at=JUNE)
        eva_reg = Registration(trip=trip, email="jana.novak@example.com", created_at=JUNE)
        eva2 = Registration(trip=trip, email="xjana.novak@example.org", created_at=JUNE)
        karel_reg = Registration(trip=trip, email="karel@example.net", created_at=JUNE)
        rows = [trip, first, second, eva_reg, eva2, karel_reg]
        jana = dict(first_name="Jana", last_name="Nováková", age_category="adult",
                    document_type="passport", document_number="AB 123 456", gdpr_consent=True)
        rows += [Guest(registration=first, created_at=JANUARY, **jana),
                 Guest(registration=first, first_name="Petr", last_name="Novák",
                       age_category="child", document_type="id_card", document_number="P1",
                       created_at=JANUARY),
                 Guest(registration=second, created_at=JUNE, **jana),
                 Guest(registration=eva_reg, first_name="Eva", last_name="Svobodová",
                       age_category="adult", document_type="passport",
                       document_number="AB 123 457"),
                 Guest(registration=eva2, first_name="Eva", last_name="Svobodová",
                       age_category="adult", document_type="passport", document_number="E2"),
                 Guest(registration=karel_reg, first_name="Karel", last_name="Dvořák",
                       age_category="adult", document_type="passport", document_number="K1"),
                 Guest(registration=karel_reg, first_name="Jana", last_name="Novakova",
                       age_category="adult", document_type="passport",
                       document_number="ab123 456")]
        db.session.add_all(rows)
        db.session.commit()
        return {"first": first.id, "second": second.id, "karel": karel_reg.id}


def run(runner, tmp_path, *args) -> tuple[dict, list[dict], str, list[Path]]:
    out = tmp_path / "access"
    result = runner.invoke(args=["subject-access", *args, "--output", str(out)])
    assert result.exit_code == 0, result.output
    files = sorted(out.iterdir())
    assert [p.suffix for p in files] == [".csv", ".json"]
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
        assert result.output.strip().splitlines()[-2:] == [str(files[1]), str(files[0])]
    data = json.loads(files[1].read_text())
    with open(files[0], newline="") as fh:
        rows = list(csv.DictReader(fh))
    for p in files:
        p.unlink()
    return data, rows, result.output, files


def test_subject_access_by_email(app, runner, tmp_path):
    ids = people(app)
    folder = Path(app.config["BACKUP_FOLDER"])
    sealed(app, folder, ["system_backup_20241201_030000.zip", "system_backup_20250301_030000.zip",
                         "system_backup_20251201_030000.zip"])
    data, rows, output, files = run(runner, tmp_path, "--email", "  JANA.NOVAK@example.ORG ")
    assert [r["id"] for r in data["registrations"]] == [ids["first"], ids["second"]]
    guests = [(g["first_name"], g["document_number"]) for r in data["registrations"]
              for g in r["guests"]]
    assert guests == [("Jana", "AB 123 456"), ("Petr", "P1"), ("Jana", "AB 123 456")]
    first = data["registrations"][0]
    assert first["trip"]["title"] == "Lake Trip" and first["created_at"] == "2025-01-10T09:00:00"
    assert first["guests"][0]["gdpr_consent"] is True
    assert data["request"] == {"email": "  JANA.NOVAK@example.ORG "}
    assert [(a["name"], a["storage"]) for a in data["archives"]] == [
        ("system_backup_20251201_030000.zip", "local"),
        ("system_backup_20250301_030000.zip", "local")]  # not the one made before her
    assert "2 archive(s) may hold them" in output
    assert [(r["registration_id"], r["guest_first_name"]) for r in rows] == [
        (str(ids["first"]), "Jana"), (str(ids["first"]), "Petr"), (str(ids["second"]), "Jana")]
    everything = json.dumps(data, ensure_ascii=False) + json.dumps(rows, ensure_ascii=False)
    for other in OTHERS:
        assert other not in everything, other
    with app.app_context():
        (audit,) = db.session.query(AuditEntry).filter_by(action="subject-access").all()
        assert (audit.outcome, audit.target, audit.via) == ("ok", "2 registrations, 3 guests",
                                                            "cli")
        text = repr({c.name: getattr(audit, c.name) for c in AuditEntry.__table__.columns})
    for personal in ("jana", "Nováková", "AB 123 456", str(tmp_path)):
        assert personal.lower() not in text.lower(), personal


def test_subject_access_by_document_number(app, runner, tmp_path):
    ids = people(app)
    data, rows, output, _ = run(runner, tmp_path, "--document", "ab 123456")
    assert [r["id"] for r in data["registrations"]] == [ids["first"], ids["second"],
                                                         ids["karel"]]
    names = [(g["first_name"], g["document_number"]) for r in data["registrations"]
             for g in r["guests"]]
    assert names == [("Jana", "AB 123 456"), ("Jana", "AB 123 456"), ("Jana", "ab123 456")]
    everything = json.dumps(data, ensure_ascii=False) + json.dumps(rows, ensure_ascii=False)
    for other in ("Petr", "P1", "Eva", "Karel", "Dvořák", "K1"):
        assert other not in everything, other
    assert data["archives"] == [] and "0 archive(s)" in output
    assert len(rows) == 3


def test_nobody_found_still_answers_and_options_are_checked(app, runner, tmp_path):
    people(app)
    data, rows, output, _ = run(runner, tmp_path, "--email", "nobody@example.org")
    assert data["registrations"] == [] and rows == []
    assert "0 registration(s), 0 guest(s)" in output
    both = runner.invoke(args=["subject-access", "--email", "a@b.c", "--document", "X",
                               "--output", str(tmp_path / "x")])
    assert both.exit_code == 2 and "exactly one of --email, --document" in both.output
