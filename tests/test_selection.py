"""Selective restore (issue 23) on SQLite and PostgreSQL: the demo data archived,
rows deleted, changed and added live, then trips or registrations brought back:
exactly the lost rows, later rows kept, overwrite only where chosen, collisions
remapped as previewed, erased guests left out, dry runs and live changes."""

from __future__ import annotations

import hashlib

import pytest
import sqlalchemy as sa

from guest_registration import demo
from guest_registration.extensions import db
from guest_registration.models import Guest, Registration, Trip
from guest_backup.ops.selection import (Selection, SelectionChanged, SelectionError,
                                        apply_plan, photo_check, plan_selection,
                                        restore_selection)
from guest_backup.wiring import backup_context
from tests.helpers import make_backup, restore_target

TABLES = ("trip", "registration", "guest")


@pytest.fixture
def demo_app(app):
    with app.app_context():
        demo.load(app)
    return app


def snapshot(engine) -> dict[str, dict[int, dict]]:
    """Every row of the three tables, ``{table: {id: {column: value}}}``."""
    meta = sa.MetaData()
    meta.reflect(engine, only=TABLES)
    with engine.connect() as conn:
        return {name: {r.id: dict(r._mapping) for r in conn.execute(sa.select(meta.tables[name]))}
                for name in TABLES}


def checksum(engine) -> str:
    return hashlib.sha256(repr(sorted(
        (t, sorted(rows.items())) for t, rows in snapshot(engine).items())).encode()).hexdigest()


def live(app):
    with app.app_context():
        return db.engine


def source_of(app, runner, request, backend, tmp_path, archive):
    """The archive restored into a scratch database (the path ``browse`` opens
    it by: verified, upgraded, the erasure ledger re-applied); its engine."""
    target = restore_target(request, backend, tmp_path)
    result = runner.invoke(args=["restore", str(archive), "--database-url", target,
                                 "--uploads", str(tmp_path / "scratch-uploads"), "--yes"])
    assert result.exit_code == 0, result.output
    engine = sa.create_engine(target)
    request.addfinalizer(engine.dispose)
    return engine


def restore(app, source, archive, dry_run=False, **selection):
    with app.app_context():
        return restore_selection(backup_context(app), db.engine, source, Selection(**selection),
                                 archive=archive.name, actor="tester", via="cli",
                                 dry_run=dry_run)


def two_guests(rows: dict) -> tuple[int, int, int]:
    """The first registration with two guests or more: its id and its first two guests'."""
    guests: dict[int, list[int]] = {}
    for gid in sorted(rows["guest"]):
        guests.setdefault(rows["guest"][gid]["registration_id"], []).append(gid)
    reg = min(r for r, ids in guests.items() if len(ids) >= 2)
    return reg, guests[reg][0], guests[reg][1]


def trip_named(app, title: str) -> int:
    with app.app_context():
        return db.session.query(Trip.id).filter_by(title=title).scalar()


def delete_registrations(app, ids) -> None:
    with app.app_context():
        db.session.query(Guest).filter(Guest.registration_id.in_(ids)).delete()
        db.session.query(Registration).filter(Registration.id.in_(ids)).delete()
        db.session.commit()


def add_registration(app, trip_id: int, email: str, guests=("New", "Guest"), **ids) -> int:
    with app.app_context():
        reg = Registration(trip_id=trip_id, email=email, language="en", id=ids.get("id"))
        db.session.add(reg)
        db.session.flush()
        for i, name in enumerate(guests):
            db.session.add(Guest(registration_id=reg.id, first_name=name, last_name="Later",
                                 age_category="adult", document_type="passport",
                                 document_number=f"N{i}", gdpr_consent=True,
                                 id=ids.get("guest_id") if i == 0 else None))
        db.session.commit()
        return reg.id


def lost_trip(app, runner, request, backend, tmp_path):
    """The Alps trip archived, then its registrations deleted live: the trip's id,
    the registrations' ids, the archive and its scratch copy's engine."""
    trip = trip_named(app, "Alps Ski Week")
    archive = make_backup(runner)
    regs = [i for i, r in snapshot(live(app))["registration"].items() if r["trip_id"] == trip]
    delete_registrations(app, regs)
    return trip, regs, archive, source_of(app, runner, request, backend, tmp_path, archive)


def test_a_trip_comes_back_exactly_and_later_rows_stay(demo_app, runner, request, backend,
                                                       tmp_path):
    app = demo_app
    trip = trip_named(app, "Prague Christmas Markets")
    before = snapshot(live(app))
    lost_regs = {i: r for i, r in before["registration"].items() if r["trip_id"] == trip}
    lost_guests = {i: g for i, g in before["guest"].items() if g["registration_id"] in lost_regs}
    assert len(lost_regs) >= 3 and lost_guests
    archive = make_backup(runner)
    delete_registrations(app, list(lost_regs))
    other = trip_named(app, "Alps Ski Week")
    added = [add_registration(app, other, f"later{i}@example.com") for i in range(3)]
    today = snapshot(live(app))
    source = source_of(app, runner, request, backend, tmp_path, archive)

    result = restore(app, source, archive, trip_ids=(trip,))

    counts = result.plan.counts()
    assert counts["insert"] == {"trip": 0, "registration": len(lost_regs),
                                "guest": len(lost_guests)}
    assert counts["leave"]["trip"] == 1 and not result.plan.mapping()["registration"]
    after = snapshot(live(app))
    assert {i: after["registration"][i] for i in lost_regs} == lost_regs  # every field
    assert {i: after["guest"][i] for i in lost_guests} == lost_guests
    for name in TABLES:  # everything else as it was today, the rows added since included
        assert {i: r for i, r in after[name].items()
                if not (name == "registration" and i in lost_regs)
                and not (name == "guest" and i in lost_guests)} == today[name]
    assert set(added) <= set(after["registration"])
    assert len(after["guest"]) == len(today["guest"]) + len(lost_guests)
    with app.app_context():  # the sequences still hand out free ids
        assert add_registration(app, trip, "next@example.com") not in before["registration"]
    entry = backup_context(app).audit.recent(live(app), action="restore-select")[0]
    assert (entry["outcome"], entry["actor"], entry["target"]) == ("ok", "tester", archive.name)
    assert f"{len(lost_regs)} registrations, {len(lost_guests)} guests" in entry["message"]
    assert "@" not in entry["message"]  # ids and counts, no personal data


def test_a_registration_comes_back_with_its_trip(demo_app, runner, request, backend,
                                                tmp_path):
    """The newest trip deleted whole; on PostgreSQL its sequences set back as an older
    restore leaves them: ids the sequence has not handed out come back as new ones
    (drawn from it), so sign-ups never draw a restored id, and a forged huge id
    cannot push the sequence to its end."""
    app = demo_app
    before = snapshot(live(app))
    trip = max(before["trip"])
    regs = sorted(i for i, r in before["registration"].items() if r["trip_id"] == trip)
    archive = make_backup(runner)
    delete_registrations(app, regs)
    with app.app_context():
        db.session.delete(db.session.get(Trip, trip))
        db.session.commit()
        if backend == "postgresql":
            for name in ("trip", "registration", "guest"):
                db.session.execute(sa.text(f"SELECT setval(pg_get_serial_sequence('{name}', "
                                           f"'id'), (SELECT max(id) FROM {name}))"))
            db.session.commit()
    source = source_of(app, runner, request, backend, tmp_path, archive)

    result = restore(app, source, archive, registration_ids=(regs[-1],))

    reason = "id-ahead" if backend == "postgresql" else "missing"
    trips, [reg] = result.plan.of("insert", "trip"), result.plan.of("insert", "registration")
    assert [(s.table, s.id, s.reason) for s in trips] == [("trip", trip, reason)]
    assert reg.reason == reason and (reg.target != regs[-1]) == (backend == "postgresql")
    after = snapshot(live(app))
    assert after["trip"][trips[0].target] == dict(before["trip"][trip], id=trips[0].target)
    assert after["registration"][reg.target] == dict(
        before["registration"][regs[-1]], id=reg.target, trip_id=trips[0].target)
    assert len(after["registration"]) == len(before["registration"]) - len(regs) + 1  # one
    new = add_registration(app, trips[0].target, "next@example.com")
    assert new not in after["registration"]  # a sign-up draws none of the restored ids


def test_overwrite_only_the_chosen_guest(demo_app, runner, request, backend, tmp_path):
    app = demo_app
    before = snapshot(live(app))
    reg, g1, g2 = two_guests(before)
    archive = make_backup(runner)
    with app.app_context():
        for gid in (g1, g2):
            db.session.get(Guest, gid).first_name = "Changed"
            db.session.get(Guest, gid).document_number = "CHANGED-1"
        db.session.commit()
    source = source_of(app, runner, request, backend, tmp_path, archive)

    result = restore(app, source, archive, registration_ids=(reg,), overwrite_guest_ids=(g1,))

    plan = result.plan.to_dict()
    assert [(s["id"], s["fields"]) for s in plan["overwrite"]] == \
        [(g1, ["first_name", "document_number"])]
    left = {s["id"]: s for s in plan["leave"] if s["table"] == "guest"}
    assert left[g2]["reason"] == "changed" and left[g2]["fields"] == ["first_name",
                                                                      "document_number"]
    after = snapshot(live(app))
    assert after["guest"][g1] == before["guest"][g1]  # the archive's values
    assert after["guest"][g2]["first_name"] == "Changed"  # today's kept
    assert after["guest"][g2]["document_number"] == "CHANGED-1"


def test_an_id_collision_comes_back_under_the_new_id_the_preview_showed(
        demo_app, runner, request, backend, tmp_path):
    app = demo_app
    before = snapshot(live(app))
    reg = max(before["registration"])  # the newest: its id is the one given out again
    guests = sorted(i for i, g in before["guest"].items() if g["registration_id"] == reg)
    archive = make_backup(runner)
    delete_registrations(app, [reg])
    other = trip_named(app, "Summer Vacation 2025")
    taker = add_registration(app, other, "taker@example.com", guests=("Taker",), id=reg,
                             guest_id=guests[0])
    assert taker == reg
    source = source_of(app, runner, request, backend, tmp_path, archive)
    with app.app_context():
        plan = plan_selection(source, db.engine, Selection(registration_ids=(reg,)),
                              photo_present=photo_check(backup_context(app)))
    preview = plan.to_dict()
    new_reg = preview["mapping"]["registration"][str(reg)]
    new_guest = preview["mapping"]["guest"][str(guests[0])]
    assert new_reg != reg and new_guest != guests[0]
    assert {s["reason"] for s in preview["insert"] if s["id"] in (reg, guests[0])} == {"id-taken"}

    with app.app_context():
        apply_plan(db.engine, plan)

    after = snapshot(live(app))
    assert after["registration"][new_reg] == {**before["registration"][reg], "id": new_reg}
    assert after["guest"][new_guest] == {**before["guest"][guests[0]], "id": new_guest,
                                         "registration_id": new_reg}
    for gid in guests[1:]:  # free ids: back with their own, under the new registration id
        assert after["guest"][gid] == {**before["guest"][gid], "registration_id": new_reg}
    assert after["registration"][reg]["email"] == "taker@example.com"  # the taker untouched
    assert after["guest"][guests[0]]["first_name"] == "Taker"
    assert all(g["registration_id"] in after["registration"] for g in after["guest"].values())


@pytest.mark.parametrize("scratch", ["before-erasure", "after-erasure"])
def test_an_erased_guest_is_left_out_and_the_preview_says_so(demo_app, runner, request, backend,
                                                             tmp_path, scratch):
    app = demo_app
    before = snapshot(live(app))
    reg, erased, kept = two_guests(before)
    archive = make_backup(runner)
    if scratch == "before-erasure":  # the scratch copy holds the person: the ledger finds it
        source = source_of(app, runner, request, backend, tmp_path, archive)
    result = runner.invoke(args=["erase", "--guest", str(erased), "--yes"])
    assert result.exit_code == 0, result.output
    if scratch == "after-erasure":  # loaded with the ledger re-applied: erased values
        source = source_of(app, runner, request, backend, tmp_path, archive)
    delete_registrations(app, [reg])

    preview = restore(app, source, archive, dry_run=True, registration_ids=(reg,))
    data = preview.plan.to_dict()
    assert [(s["id"], s["reason"], s["label"]) for s in data["erased"]] == \
        [(erased, "erased", "")]
    assert "erased" in data["erased"][0]["why"]
    assert before["guest"][erased]["last_name"] not in repr(data["erased"])
    restore(app, source, archive, registration_ids=(reg,))
    after = snapshot(live(app))
    assert erased not in after["guest"] and after["guest"][kept] == before["guest"][kept]


def test_a_dry_run_changes_nothing(demo_app, runner, request, backend, tmp_path):
    app = demo_app
    trip, regs, archive, source = lost_trip(app, runner, request, backend, tmp_path)
    sums = checksum(live(app)), checksum(source)

    result = restore(app, source, archive, dry_run=True, trip_ids=(trip,))

    assert not result.applied and result.plan.counts()["insert"]["registration"] == len(regs)
    assert (checksum(live(app)), checksum(source)) == sums
    assert not backup_context(app).audit.recent(live(app), action="restore-select")


@pytest.mark.parametrize("change", ["edited", "appeared"])
def test_a_live_change_after_the_preview_stops_and_rolls_back(demo_app, runner, request,
                                                              backend, tmp_path, change):
    app = demo_app
    before = snapshot(live(app))
    reg, first, second = two_guests(before)
    archive = make_backup(runner)
    with app.app_context():
        db.session.delete(db.session.get(Guest, second))
        db.session.commit()
    source = source_of(app, runner, request, backend, tmp_path, archive)
    with app.app_context():
        plan = plan_selection(source, db.engine, Selection(registration_ids=(reg,)))
    assert [s.id for s in plan.of("insert")] == [second]
    with app.app_context():  # meanwhile, on the site
        if change == "edited":
            db.session.get(Guest, first).first_name = "Edited meanwhile"
        else:
            db.session.add(Guest(id=second, registration_id=reg, first_name="Appeared",
                                 last_name="X", age_category="adult",
                                 document_type="passport", document_number="A1"))
        db.session.commit()
    today = checksum(live(app))

    with app.app_context(), pytest.raises(SelectionChanged, match="nothing was restored"):
        apply_plan(db.engine, plan)

    assert checksum(live(app)) == today


def test_selections_that_cannot_be_planned(demo_app, runner, request, backend, tmp_path):
    app = demo_app
    archive = make_backup(runner)
    source = source_of(app, runner, request, backend, tmp_path, archive)
    reg = min(snapshot(source)["registration"])
    with pytest.raises(SelectionError, match="choose a trip"):
        Selection()
    with app.app_context():
        with pytest.raises(SelectionError, match="trip 99999 is not in the archive"):
            plan_selection(source, db.engine, Selection(trip_ids=(99999,)))
        with pytest.raises(SelectionError, match="overwrite guest 99999"):
            plan_selection(source, db.engine, Selection(registration_ids=(reg,),
                                                        overwrite_guest_ids=(99999,)))


def test_a_missing_or_used_photo_is_noted_and_not_linked(demo_app, runner, request, backend,
                                                          tmp_path):
    app = demo_app
    before = snapshot(live(app))
    photos = sorted((g["registration_id"], i) for i, g in before["guest"].items()
                    if g["document_photo"])
    (reg, gone), used = photos[0], next(i for r, i in photos if r != photos[0][0])
    archive = make_backup(runner)
    delete_registrations(app, [reg, before["guest"][used]["registration_id"]])
    (tmp_path / "uploads" / before["guest"][gone]["document_photo"]).unlink()
    with app.app_context():  # another guest links the file of ``used`` today
        db.session.get(Guest, min(snapshot(db.engine)["guest"])).document_photo = \
            before["guest"][used]["document_photo"]
        db.session.commit()
    source = source_of(app, runner, request, backend, tmp_path, archive)
    regs = (reg, before["guest"][used]["registration_id"])

    result = restore(app, source, archive, registration_ids=regs)

    notes = {p["guest"]: p["note"] for p in result.plan.to_dict()["photos"]}
    assert notes[gone] == notes[used] == "missing"
    assert all(n == "kept" for g, n in notes.items() if g not in (gone, used))
    after = snapshot(live(app))["guest"]
    assert after[gone]["document_photo"] is None and after[used]["document_photo"] is None
    assert all(after[g]["document_photo"] == before["guest"][g]["document_photo"]
               for g in notes if g not in (gone, used))


def test_an_erasure_between_the_preview_and_the_restore_stops_it(demo_app, runner, request,
                                                                  backend, tmp_path):
    """The page restores the plan it showed. A person erased after the preview (by
    e-mail: their other registration, still live) must not come back with the
    registration the plan inserts: the restore refuses, nothing written."""
    app = demo_app
    trip = trip_named(app, "Alps Ski Week")
    kept = add_registration(app, trip, "twice@example.org", guests=("Twice", "Here"))
    lost = add_registration(app, trip, "twice@example.org", guests=("Lost", "One"))
    archive = make_backup(runner)
    delete_registrations(app, [lost])
    source = source_of(app, runner, request, backend, tmp_path, archive)
    preview = restore(app, source, archive, dry_run=True, registration_ids=(lost,))
    assert [s.id for s in preview.plan.of("insert", "registration")] == [lost]

    result = runner.invoke(args=["erase", "--email", "twice@example.org", "--yes"])
    assert result.exit_code == 0, result.output
    today = checksum(live(app))

    with app.app_context(), pytest.raises(SelectionChanged, match="eras"):
        restore_selection(backup_context(app), db.engine, source, preview.plan.selection,
                          archive=archive.name, actor="tester", via="admin",
                          plan=preview.plan)
    assert checksum(live(app)) == today
    rows = snapshot(live(app))
    assert lost not in rows["registration"] and kept in rows["registration"]
    assert "twice@example.org" not in repr(rows["registration"])


def test_a_selective_restore_waits_for_a_restore_or_erasure_of_the_live_database(
        demo_app, runner, request, backend, tmp_path, monkeypatch):
    """It holds the live database's lock while it applies: behind a full restore or
    an erasure it waits, then is refused with nothing written and audited; an
    erasure cannot commit between its check and its commit."""
    from guest_backup.engines import TARGET_BUSY, exclusive
    from guest_backup.errors import BackupBusy
    from guest_backup.ops import erasure as erasure_module

    app = demo_app
    trip, regs, archive, source = lost_trip(app, runner, request, backend, tmp_path)
    today = checksum(live(app))
    monkeypatch.setattr(erasure_module, "ERASE_WAIT", 0.3)
    with app.app_context():
        ctx = backup_context(app)
        url = db.engine.url.render_as_string(hide_password=False)
        with exclusive(ctx.engine_for(backend), url), pytest.raises(BackupBusy,
                                                                     match=TARGET_BUSY):
            restore(app, source, archive, trip_ids=(trip,))
        assert checksum(live(app)) == today
        last = ctx.audit.recent(db.engine, action="restore-select")[0]
        assert last["outcome"] == "failed" and TARGET_BUSY in last["message"]
    result = restore(app, source, archive, trip_ids=(trip,))
    assert result.applied and set(regs) <= set(snapshot(live(app))["registration"])


@pytest.mark.parametrize("seen", [10 ** 18, True, None, "1"])
def test_a_plan_whose_ledger_line_is_not_todays_is_refused(demo_app, runner, request,
                                                           backend, tmp_path, seen):
    """The plan's ledger line must be the ledger's last line exactly: a plan file
    claiming a line the ledger never reached (or a boolean) is refused too."""
    app = demo_app
    trip, regs, archive, source = lost_trip(app, runner, request, backend, tmp_path)
    preview = restore(app, source, archive, dry_run=True, trip_ids=(trip,))
    preview.plan.ledger_seq = seen
    today = checksum(live(app))
    with app.app_context(), pytest.raises(SelectionChanged, match="erasure"):
        restore_selection(backup_context(app), db.engine, source, preview.plan.selection,
                          archive=archive.name, actor="tester", via="admin", plan=preview.plan)
    assert checksum(live(app)) == today


def test_a_selective_restore_holds_the_lock_until_its_audit_entry_is_written(
        demo_app, runner, request, backend, tmp_path, monkeypatch):
    """As an erasure's: a restore replacing the database between the commit and the
    entry would set the audit trail aside without it."""
    from guest_backup.engines import exclusive
    from guest_backup.errors import BackupBusy
    from guest_backup.ops import selection_apply

    app = demo_app
    trip, regs, archive, source = lost_trip(app, runner, request, backend, tmp_path)
    seen, record = [], selection_apply.quietly

    def audit_then_try(what, call, engine, action, outcome, **fields):
        if outcome == "ok":
            with app.app_context():
                try:
                    with exclusive(backup_context(app).engine_for(backend),
                                   db.engine.url.render_as_string(hide_password=False)):
                        seen.append("free")
                except BackupBusy:
                    seen.append("held")
        return record(what, call, engine, action, outcome, **fields)

    monkeypatch.setattr(selection_apply, "quietly", audit_then_try)
    assert restore(app, source, archive, trip_ids=(trip,)).applied
    assert seen == ["held"]
