"""Legal retention (issue 22): GUEST_RETENTION_YEARS counted from the end of the
stay; ``retention-enforce [--dry-run]`` erases older registrations through the
erasure ledger and prunes older archives from every storage, whatever the backup
retention rules keep; health reports both until it has run."""

from __future__ import annotations

import json
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from guest_registration.extensions import db
from guest_registration.models import AuditEntry, Guest, Registration, Trip
from guest_backup.archive.format import name_time
from guest_backup.ops.erasure import ERASED
from guest_backup.ops.ledger import ErasureLedger
from guest_backup.ops.retention import Policy, plan, years_before
from tests.helpers import sealed, table_contents

TODAY = datetime.now(timezone.utc).date()  # set again when each test starts (below)


@pytest.fixture(autouse=True)
def _today():
    """The day each test runs on, taken when it starts: taken when the module was
    imported, a suite that ran past midnight counted the stays from the day before
    while the app counted from the new day (a stay that ended exactly 6 years ago
    became overdue). Within a minute of midnight, wait for the new day first."""
    global TODAY
    now = datetime.now(timezone.utc)
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(),
                                timezone.utc)
    if midnight - now < timedelta(minutes=1):
        time.sleep((midnight - now).total_seconds() + 0.5)
    TODAY = datetime.now(timezone.utc).date()


def ago(years: int, days: int = 0) -> date:
    return years_before(datetime.combine(TODAY, datetime.min.time()), years).date() \
        - timedelta(days=days)


def archive_name(years: int, days: int = 0) -> str:
    return f"system_backup_{ago(years, days):%Y%m%d}_030000.zip"


def stays(app) -> dict[str, int]:
    """One registration (two guests, one with a photo) per stay; returns their ids."""
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    trips = {f"ended {k}y": dict(start_date=ago(k, 40), end_date=ago(k, -30)) for k in range(1, 9)}
    trips.update({
        "ended 6y and a day": dict(start_date=ago(6, 10), end_date=ago(6, 1)),
        "ends exactly 6y ago": dict(start_date=ago(6, 10), end_date=ago(6)),
        "started 7y, no end": dict(start_date=ago(7)),
        "started 8y, ended 2y": dict(start_date=ago(8), end_date=ago(2)),
        "no dates, made 7y ago": dict(created=now - timedelta(days=7 * 366)),
        "no dates, made 5y ago": dict(created=now - timedelta(days=5 * 365)),
    })
    ids = {}
    with app.app_context():
        for n, (label, spec) in enumerate(trips.items()):
            created = spec.pop("created", None)
            trip = Trip(title=label, max_guests=5, **spec)
            reg = Registration(trip=trip, email=f"guest{n}@example.org",
                               **({"created_at": created} if created else {}))
            photo = f"00000000-0000-4000-8000-{n:012d}.png"
            db.session.add_all([trip, reg, Guest(registration=reg, first_name=f"First{n}",
                                                 last_name="Last", age_category="adult",
                                                 document_type="passport",
                                                 document_number=f"DOC{n}",
                                                 document_photo=photo),
                                Guest(registration=reg, first_name=f"Child{n}", last_name="Last",
                                      age_category="child", document_type="id_card",
                                      document_number=f"KID{n}")])
            db.session.commit()
            folder = Path(app.config["UPLOAD_FOLDER"])
            folder.mkdir(parents=True, exist_ok=True)
            (folder / photo).write_bytes(b"photo")
            ids[label] = reg.id
    return ids


EXPIRED = {"ended 7y", "ended 8y", "ended 6y and a day", "started 7y, no end",
           "no dates, made 7y ago"}


def erased(app, registration_id: int) -> bool:
    with app.app_context():
        reg = db.session.get(Registration, registration_id)
        names = {(g.first_name, g.document_number, g.document_photo) for g in reg.guests}
        if reg.email == f"erased-{reg.id}@invalid":
            assert names == {(ERASED, ERASED, None)}
            assert {g.age_category for g in reg.guests} == {"adult", "child"}
            return True
        assert ERASED not in {n for n, _, _ in names}
        return False


def health(runner) -> dict[str, dict]:
    result = runner.invoke(args=["backup-health"])
    return {p["id"]: p for p in json.loads(result.output)["problem_ids"]}


def test_retention_enforce_erases_and_prunes_what_is_past_the_horizon(app, runner):
    app.config["GUEST_RETENTION_YEARS"] = 6
    ids = stays(app)
    folder = Path(app.config["BACKUP_FOLDER"])
    old = [archive_name(7), archive_name(6, 2)]
    young = [archive_name(5), archive_name(0, 1), archive_name(6, -2)]
    sealed(app, folder, old + young)
    app.config.update(BACKUP_KEEP=100)  # the backup rules keep everything: the law wins

    problems = health(runner)
    assert problems["overdue_records"]["params"] == {"count": 5, "limit": 6}
    assert problems["overdue_archives"]["params"] == {"storage": "local", "count": 2,
                                                      "limit": 6}
    assert "5 registrations past the legal retention of 6 years" in \
        problems["overdue_records"]["text"]

    before = table_contents(app.config["DATABASE_URL"])
    dry = runner.invoke(args=["retention-enforce", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert f"would erase 5 registration(s) with 10 guest(s) and 5 photo(s): stays that ended " \
           f"before {ago(6)} (6 years)" in dry.output
    assert "would remove 2 of 5 archive(s) from local" in dry.output
    assert table_contents(app.config["DATABASE_URL"]) == before
    assert all((folder / name).exists() for name in old + young)

    done = runner.invoke(args=["retention-enforce"])
    assert done.exit_code == 0, done.output
    assert "erased 5 registration(s) with 10 guest(s) and 5 photo(s)" in done.output
    for label, registration_id in ids.items():
        assert erased(app, registration_id) == (label in EXPIRED), label
    uploads = {p.name for p in Path(app.config["UPLOAD_FOLDER"]).iterdir()}
    assert len(uploads) == len(ids) - len(EXPIRED)
    assert not any((folder / name).exists() for name in old)
    assert all((folder / name).exists() for name in young)
    (entry,) = list(ErasureLedger.in_folder(app.instance_path).entries())
    assert entry["kind"] == "retention" and len(entry["registration_ids"]) == 5
    assert sorted(entry["registration_ids"]) == sorted(ids[label] for label in EXPIRED)
    with app.app_context():
        (audit,) = db.session.query(AuditEntry).filter_by(action="erase").all()
        assert (audit.target, audit.rows) == ("5 registrations", 15)
        assert "legal retention" in audit.message and "First" not in repr(audit.__dict__)

    problems = health(runner)
    assert "overdue_records" not in problems and "overdue_archives" not in problems
    again = runner.invoke(args=["retention-enforce"])
    assert "erased 0 registration(s)" in again.output
    assert len(list(ErasureLedger.in_folder(app.instance_path).entries())) == 1


def test_retention_off_and_batches(app, runner, monkeypatch):
    app.config["GUEST_RETENTION_YEARS"] = 0
    ids = stays(app)
    off = runner.invoke(args=["retention-enforce"])
    assert off.exit_code == 0 and "retention is off" in off.output
    assert "overdue_records" not in health(runner)
    assert not any(erased(app, i) for i in ids.values())

    import guest_backup.ops.rights as rights

    monkeypatch.setattr(rights, "BATCH", 2)  # three erasures of 2, 2 and 1 registrations
    app.config["GUEST_RETENTION_YEARS"] = 6
    assert runner.invoke(args=["retention-enforce"]).exit_code == 0
    entries = list(ErasureLedger.in_folder(app.instance_path).entries())
    assert [len(e["registration_ids"]) for e in entries] == [2, 2, 1]
    assert sum(erased(app, i) for i in ids.values()) == 5


def test_the_horizon_overrides_every_backup_rule():
    names = [f"system_backup_{2026 - k}0601_030000.zip" for k in range(10)]
    dated = [(n, name_time(n)) for n in names]
    horizon = datetime(2020, 12, 4, tzinfo=timezone.utc)
    decisions = {d.name: d for d in plan(dated, Policy(last=100, horizon=horizon))}
    assert {n for n, d in decisions.items() if not d.keep} == set(names[6:])  # 2020-06-01 and older
    assert decisions[names[9]].describe() == "remove (past the legal retention)"
    everything_old = plan(dated[6:], Policy(monthly=12, horizon=horizon))
    assert not any(d.keep for d in everything_old)  # not even the newest
    assert all(d.keep for d in plan(dated, Policy()))
