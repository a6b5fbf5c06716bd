"""``manage.py restore-select`` (issue 23): the preview (text and JSON), a dry run
changing nothing, the confirmation, the restore and its audit entries, usage
errors; and on PostgreSQL, against the real server, a trip of thousands of
registrations restored while a request loop and sign-ups keep going."""

from __future__ import annotations

import http.client
import json
import os
import re
import threading
import time

import click
import pytest
import sqlalchemy as sa

from guest_registration import demo
from guest_registration.extensions import db
from guest_registration.models import Guest, Registration, Trip
from guest_backup.ops.browse import sessions
from guest_backup.wiring import backup_context
from tests.helpers import ADMIN, make_backup
from tests.live_server import ARTIFACTS, pg_live_server


@pytest.fixture
def lost_trip(app, runner):
    """Demo data archived, then one trip's registrations deleted: (archive, trip id,
    registrations lost, guests lost)."""
    with app.app_context():
        demo.load(app)
        trip = db.session.query(Trip.id).filter_by(title="Alps Ski Week").scalar()
        regs = [r.id for r in db.session.query(Registration.id).filter_by(trip_id=trip)]
        guests = db.session.query(Guest).filter(Guest.registration_id.in_(regs)).count()
    archive = make_backup(runner)
    with app.app_context():
        db.session.query(Guest).filter(Guest.registration_id.in_(regs)).delete()
        db.session.query(Registration).filter(Registration.id.in_(regs)).delete()
        db.session.commit()
    return archive, trip, len(regs), guests


def counts(app) -> tuple[int, int]:
    with app.app_context():
        return db.session.query(Registration).count(), db.session.query(Guest).count()


def contents(app) -> str:
    with app.app_context():
        return repr([sorted(tuple(r) for r in db.session.execute(sa.select(m.__table__)))
                     for m in (Trip, Registration, Guest)])


def test_dry_run_preview_then_restore(app, runner, lost_trip):
    archive, trip, regs, guests = lost_trip
    before = contents(app)

    dry = runner.invoke(args=["restore-select", str(archive), "--trip", str(trip), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert len(re.findall(r"^INSERT +registration \d+", dry.output, re.M)) == regs
    assert len(re.findall(r"^INSERT +guest \d+", dry.output, re.M)) == guests
    assert "dry run: nothing was changed" in dry.output
    as_json = runner.invoke(args=["restore-select", str(archive), "--trip", str(trip),
                                  "--dry-run", "--json"], catch_exceptions=False)
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.stdout)
    assert data["counts"]["insert"] == {"trip": 0, "registration": regs, "guest": guests}
    assert data["applied"] is False and data["selection"]["trip_ids"] == [trip]
    declined = runner.invoke(args=["restore-select", str(archive), "--trip", str(trip)],
                             input="n\n")
    assert declined.exit_code == 1 and "Aborted" in declined.output
    assert contents(app) == before  # the dry runs and the refusal changed nothing

    done = runner.invoke(args=["restore-select", str(archive), "--trip", str(trip)],
                         input="y\n")
    assert done.exit_code == 0, done.output
    assert f"restored {regs + guests} rows" in done.output
    with app.app_context():
        assert db.session.query(Registration).filter_by(trip_id=trip).count() == regs
    audit = backup_context(app).audit.recent(db_engine(app), action="restore-select")
    assert [(e["outcome"], e["via"], e["target"]) for e in audit] == [("ok", "cli",
                                                                       archive.name)]
    again = runner.invoke(args=["restore-select", str(archive), "--trip", str(trip), "--yes"])
    assert again.exit_code == 0 and "nothing to restore" in again.output, again.output


def test_a_change_while_confirming_stops_the_restore(app, runner, lost_trip, monkeypatch):
    archive, trip, _, _ = lost_trip

    def meanwhile(*args, **kwargs):  # someone edits the trip while the operator reads
        with app.app_context():
            db.session.get(Trip, trip).title = "Renamed meanwhile"
            db.session.commit()
        return True

    monkeypatch.setattr(click, "confirm", meanwhile)
    before = counts(app)
    result = runner.invoke(args=["restore-select", str(archive), "--trip", str(trip)])
    assert result.exit_code == 1, result.output
    assert f"trip {trip} changed since the preview: nothing was restored" in result.output
    assert counts(app) == before
    audit = backup_context(app).audit.recent(db_engine(app), action="restore-select")
    assert [(e["outcome"], e["target"]) for e in audit] == [("failed", archive.name)]
    assert "changed since the preview" in audit[0]["message"]


def lose_registration(app, reg: int) -> None:
    """A registration and its guests deleted from the live database."""
    with app.app_context():
        db.session.query(Guest).filter_by(registration_id=reg).delete()
        db.session.query(Registration).filter_by(id=reg).delete()
        db.session.commit()


def test_an_erased_registration_stays_out(app, runner):
    with app.app_context():
        demo.load(app)
        reg = db.session.query(Registration.id).order_by(Registration.id).first()[0]
        guests = sorted(g.id for g in db.session.query(Guest.id).filter_by(registration_id=reg))
    archive = make_backup(runner)
    erased = runner.invoke(args=["erase", "--registration", str(reg), "--yes"])
    assert erased.exit_code == 0, erased.output
    lose_registration(app, reg)  # and then deleted by mistake

    dry = runner.invoke(args=["restore-select", str(archive), "--registration", str(reg),
                              "--dry-run", "--json"], catch_exceptions=False)

    data = json.loads(dry.stdout)
    assert [(s["table"], s["id"], s["reason"]) for s in data["erased"]] == \
        [("registration", reg, "erased")] + [("guest", g, "registration-erased") for g in guests]
    assert not data["insert"] and "@" not in json.dumps(data["erased"])
    done = runner.invoke(args=["restore-select", str(archive), "--registration", str(reg),
                               "--yes"])
    assert done.exit_code == 0 and "nothing to restore" in done.output, done.output
    with app.app_context():
        assert db.session.get(Registration, reg) is None


def opened_copy(app, runner):
    """Demo data archived, and the archive's copy opened (kept open) by a dry run of
    its first guest's registration: (registration, that guest, the archive)."""
    with app.app_context():
        demo.load(app)
        reg, first = db.session.query(Guest.registration_id, Guest.id).order_by(Guest.id).first()
    archive = make_backup(runner)
    opened = runner.invoke(args=["restore-select", str(archive), "--registration", str(reg),
                                 "--dry-run", "--keep-open"])
    assert opened.exit_code == 0 and "ERASED" not in opened.output, opened.output
    return reg, first, archive


def test_an_erasure_after_the_archive_was_opened_is_applied(app, runner):
    """The scratch copy, opened before the erasure, still holds the guest: the
    ledger's later entry finds it."""
    reg, first, archive = opened_copy(app, runner)
    erased = runner.invoke(args=["erase", "--guest", str(first), "--yes"])
    assert erased.exit_code == 0, erased.output
    lose_registration(app, reg)

    dry = runner.invoke(args=["restore-select", str(archive), "--registration", str(reg),
                              "--dry-run", "--json"], catch_exceptions=False)

    data = json.loads(dry.stdout)
    assert (data["erased"][0]["id"], data["erased"][0]["reason"]) == (first, "erased")
    assert first not in [s["id"] for s in data["insert"] if s["table"] == "guest"]
    with app.app_context():  # --keep-open left it: a PostgreSQL scratch database would stay
        kept = sessions(backup_context())
        assert len(kept) == 1
        for session in kept:
            session.close()
        assert sessions(backup_context()) == []


def db_engine(app):
    with app.app_context():
        return db.engine


@pytest.mark.parametrize("backend", ["sqlite"])
def test_usage_errors(app, runner, lost_trip):
    archive, trip, _, _ = lost_trip
    for args, message in ((["--yes"], "choose a trip"),
                          (["--trip", str(trip), "--registration", "1"], "not both")):
        result = runner.invoke(args=["restore-select", str(archive), *args])
        assert result.exit_code == 2 and message in result.output, result.output
    unknown = runner.invoke(args=["restore-select", str(archive), "--trip", "999999", "--yes"])
    assert unknown.exit_code == 1 and "trip 999999 is not in the archive" in unknown.output
    missing = runner.invoke(args=["restore-select", "/nonexistent/x.zip", "--trip", "1"])
    assert missing.exit_code == 1 and "Traceback" not in missing.output


#: in the trip restored under load, two guests each (more for a measurement)
REGISTRATIONS = int(os.environ.get("SELECT_LOAD_REGISTRATIONS", "2000"))


def _big_trip(engine) -> int:
    with engine.begin() as conn:
        trip = conn.execute(sa.text(
            "INSERT INTO trip (title, start_date, end_date, max_guests) VALUES "
            "('Big Trip', current_date + 40, current_date + 45, 9) RETURNING id")).scalar()
        conn.execute(sa.text(
            "INSERT INTO registration (trip_id, email, language, status, created_at) "
            "SELECT :t, 'big' || i || '@example.com', 'en', 'approved', "
            "now() - interval '1 day' + i * interval '1 second' "
            "FROM generate_series(1, :n) AS i"), {"t": trip, "n": REGISTRATIONS})
        conn.execute(sa.text(
            "INSERT INTO guest (registration_id, first_name, last_name, age_category, "
            "document_type, document_number, gdpr_consent, created_at) "
            "SELECT r.id, 'Big' || k, 'Guest' || r.id, 'adult', 'passport', 'B' || r.id || k, "
            "true, r.created_at FROM registration r, generate_series(1, 2) AS k "
            "WHERE r.trip_id = :t"), {"t": trip})
    return trip


def _table_rows(engine, trip: int) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(
            "SELECT r.*, g.* FROM registration r JOIN guest g ON g.registration_id = r.id "
            "WHERE r.trip_id = :t ORDER BY g.id"), {"t": trip})]


def _loop(srv, trip: int, stop: threading.Event, seen: dict) -> None:
    """GET the public pages over and over; every status and exception counted."""
    paths = ["/", f"/trips/{trip}/register", "/login"]
    while not stop.is_set():
        for path in paths:
            started = time.monotonic()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
                conn.request("GET", path)
                status = conn.getresponse().status
                conn.close()
            except Exception as exc:  # counted, the test fails on it
                status = type(exc).__name__
            seen["requests"] += 1
            seen["slowest"] = max(seen["slowest"], time.monotonic() - started)
            if status != 200:
                seen["errors"].append((path, status))


def _signups(srv, trip: int, stop: threading.Event, seen: dict) -> None:
    """Sign-ups for the trip being restored, as the site writes them (row inserts
    referencing the trip): never blocked for long by the restore's row locks."""
    while not stop.is_set():
        started = time.monotonic()
        with srv.engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO registration (trip_id, email) VALUES "
                                 "(:t, 'during@example.com')"), {"t": trip})
        seen["signups"] += 1
        seen["slowest_signup"] = max(seen["slowest_signup"], time.monotonic() - started)
        time.sleep(0.05)


@pytest.mark.live
def test_a_big_trip_comes_back_while_the_site_serves(pg_server, tmp_path):
    with pg_live_server(pg_server, "gr_select_live", tmp_path, admin=ADMIN,
                        log_path=ARTIFACTS / "live-server-select.log") as srv:
        trip = _big_trip(srv.engine)
        before = _table_rows(srv.engine, trip)
        archive = srv.manage("backup").strip().splitlines()[-1]
        with srv.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM guest WHERE registration_id IN "
                                 "(SELECT id FROM registration WHERE trip_id = :t)"), {"t": trip})
            conn.execute(sa.text("DELETE FROM registration WHERE trip_id = :t"), {"t": trip})
        seen = {"requests": 0, "errors": [], "slowest": 0.0, "signups": 0,
                "slowest_signup": 0.0}
        stop = threading.Event()
        workers = [threading.Thread(target=_loop, args=(srv, trip, stop, seen)),
                   threading.Thread(target=_signups, args=(srv, trip, stop, seen))]
        for worker in workers:
            worker.start()
        try:
            time.sleep(1)
            output = srv.manage("restore-select", archive, "--trip", str(trip), "--yes",
                                timeout=600)
            time.sleep(1)
        finally:
            stop.set()
            for worker in workers:
                worker.join(timeout=60)
        seconds = float(re.search(r"in ([\d.]+) s", output).group(1))
        print(f"restore-select of {REGISTRATIONS} registrations, {2 * REGISTRATIONS} guests: "
              f"apply {seconds:.2f} s; {seen['requests']} requests, {len(seen['errors'])} "
              f"errors, slowest {seen['slowest']:.2f} s; {seen['signups']} sign-ups, slowest "
              f"{seen['slowest_signup']:.2f} s")
        assert f"restored {3 * REGISTRATIONS} rows" in output, output
        assert not seen["errors"] and seen["requests"] > 20, seen
        assert seen["signups"] > 5 and seen["slowest_signup"] < 5, seen
        assert _table_rows(srv.engine, trip) == before  # every field of every row


def test_a_ledger_line_older_than_the_open_copy_is_applied_too(app, runner, monkeypatch):
    """A line that reaches the ledger after the copy was opened but carries an
    older time (merged in from another storage's copy, a clock behind): the page
    and ``browse`` re-apply the grown ledger to the copy; ``restore-select`` only
    looked at lines from the copy's opening on, and brought the guest back."""
    import guest_backup.ops.ledger as ledger_module
    from guest_backup.archive.manifest import format_time
    from datetime import datetime, timedelta, timezone

    reg, first, archive = opened_copy(app, runner)
    earlier = format_time(datetime.now(timezone.utc) - timedelta(hours=1))
    monkeypatch.setattr(ledger_module, "now_text", lambda: earlier)
    erased = runner.invoke(args=["erase", "--guest", str(first), "--yes"])
    assert erased.exit_code == 0, erased.output
    monkeypatch.undo()
    lose_registration(app, reg)

    dry = runner.invoke(args=["restore-select", str(archive), "--registration", str(reg),
                              "--dry-run", "--json"], catch_exceptions=False)

    data = json.loads(dry.stdout)
    assert first not in [s["id"] for s in data["insert"] if s["table"] == "guest"]
    assert (first, "erased") in [(s["id"], s["reason"]) for s in data["erased"]]
    with app.app_context():
        for session in sessions(backup_context()):
            session.close()
