"""A selective restore run again, or two previews applied one after the other, on
SQLite and PostgreSQL: a row that came back under a new id (its own was taken)
is recognised as the same record the next time (never a second copy: two copies
of one person, and an erasure of one leaving the other), and a photo file
linked by one restore is not linked again by another. A hostile archive's value
that does not fit the live column (or holds a NUL) stops the restore, and odd
ids on the command line are usage errors."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from guest_registration import demo
from guest_registration.extensions import db
from guest_registration.models import Guest, Registration, Trip
from guest_backup.errors import BackupError
from guest_backup.ops.selection import (Selection, SelectionChanged, SelectionError, apply_plan,
                                        photo_check, plan_selection)
from guest_backup.wiring import backup_context
from tests.helpers import make_backup
from tests.test_selection import (add_registration, checksum, delete_registrations, live,
                                  restore, snapshot, source_of, trip_named, two_guests)


@pytest.fixture
def demo_app(app):
    with app.app_context():
        demo.load(app)
    return app


def taken(app, runner, request, backend, tmp_path, guests_too=False):
    """The newest registration archived, deleted, its id (``guests_too``: its
    guests' ids as well) taken by a new record."""
    before = snapshot(live(app))
    reg = max(before["registration"])
    archive = make_backup(runner)
    delete_registrations(app, [reg])
    add_registration(app, trip_named(app, "Summer Vacation 2025"), "taker@example.com",
                     guests=() if guests_too else ("Taker",), id=reg)
    if guests_too:
        with app.app_context():
            for gid, g in before["guest"].items():
                if g["registration_id"] == reg:
                    db.session.add(Guest(id=gid, registration_id=reg, first_name="Taker",
                                         last_name=str(gid), age_category="adult",
                                         document_type="passport", document_number="T"))
            db.session.commit()
    source = source_of(app, runner, request, backend, tmp_path, archive)
    return before, reg, archive, source


def copies(rows: dict, archived: dict) -> list[int]:
    """Today's rows equal to the archived row in every column but the ids."""
    def strip(r):
        return {k: v for k, v in r.items() if k not in ("id", "registration_id", "trip_id")}
    return [i for i, r in rows.items() if strip(r) == strip(archived)]


def test_the_same_selection_twice_leaves_the_copy_under_its_new_id(demo_app, runner, request,
                                                                   backend, tmp_path):
    app = demo_app
    before, reg, archive, source = taken(app, runner, request, backend, tmp_path)
    first = restore(app, source, archive, registration_ids=(reg,))
    new = first.plan.mapping()["registration"][str(reg)]
    today = checksum(live(app))

    second = restore(app, source, archive, registration_ids=(reg,))

    assert not second.plan.of("insert")
    [step] = second.plan.of("leave", "registration")
    assert (step.new_id, step.reason) == (new, "unchanged")
    guests = second.plan.of("leave", "guest")
    assert guests and {s.target_parent for s in guests} == {new}
    assert checksum(live(app)) == today
    after = snapshot(live(app))
    assert copies(after["registration"], before["registration"][reg]) == [new]


def test_two_previews_applied_one_after_the_other_restore_once(demo_app, runner, request,
                                                               backend, tmp_path):
    """The page: previewed twice (two tabs, two admins), both restored. Every id
    taken: on PostgreSQL the two previews draw different new ids, so no row of the
    second sits where the first inserted one."""
    app = demo_app
    before, reg, archive, source = taken(app, runner, request, backend, tmp_path, True)
    with app.app_context():
        a = plan_selection(source, db.engine, Selection(registration_ids=(reg,)))
        b = plan_selection(source, db.engine, Selection(registration_ids=(reg,)))
        apply_plan(db.engine, a)
        today = checksum(db.engine)
        with pytest.raises(SelectionChanged, match="was added since the preview"):
            apply_plan(db.engine, b)
    assert checksum(live(app)) == today
    after = snapshot(live(app))
    assert len(copies(after["registration"], before["registration"][reg])) == 1


def test_a_deleted_trips_registrations_restored_one_at_a_time_share_one_trip(
        demo_app, runner, request, backend, tmp_path):
    """The newest trip deleted and its id given to a new trip: its registrations
    restored one at a time bring the trip back once, both under it."""
    app = demo_app
    before = snapshot(live(app))
    trip = max(before["trip"])
    regs = sorted(i for i, r in before["registration"].items() if r["trip_id"] == trip)
    archive = make_backup(runner)
    delete_registrations(app, regs)
    with app.app_context():
        db.session.delete(db.session.get(Trip, trip))
        db.session.commit()
        db.session.add(Trip(id=trip, title="A new trip", max_guests=5))  # the id taken
        db.session.commit()
    source = source_of(app, runner, request, backend, tmp_path, archive)

    restore(app, source, archive, registration_ids=(regs[0],))
    second = restore(app, source, archive, registration_ids=(regs[1],))

    after = snapshot(live(app))
    trips = copies(after["trip"], before["trip"][trip])
    assert len(trips) == 1 and trips[0] != trip
    [step] = second.plan.of("leave", "trip")
    assert (step.new_id, step.reason) == (trips[0], "trip-exists")
    assert [after["registration"][r]["trip_id"] for r in regs[:2]] == trips * 2


def test_the_command_twice_then_an_erasure_leaves_no_copy(demo_app, runner, backend):
    app = demo_app
    before = snapshot(live(app))
    reg = max(before["registration"])
    archive = make_backup(runner)
    delete_registrations(app, [reg])
    add_registration(app, trip_named(app, "Summer Vacation 2025"), "taker@example.com",
                     guests=("Taker",), id=reg)
    outs = []
    for _ in range(2):
        r = runner.invoke(args=["restore-select", str(archive), "--registration", str(reg),
                                "--yes"])
        assert r.exit_code == 0, r.output
        outs.append(r.output)
    assert "nothing to restore" in outs[1]
    [copy] = copies(snapshot(live(app))["registration"], before["registration"][reg])
    r = runner.invoke(args=["erase", "--registration", str(copy), "--yes"])
    assert r.exit_code == 0, r.output
    email = before["registration"][reg]["email"]
    assert email not in repr(snapshot(live(app))["registration"])


def test_rows_alike_in_the_archive_both_come_back_and_stay_one_each(demo_app, runner, request,
                                                                     backend, tmp_path):
    """Two registrations of one trip with the same time and e-mail (an import in one
    transaction): each is its own record, both come back, neither refuses the other."""
    app = demo_app
    trip = trip_named(app, "Alps Ski Week")
    a = add_registration(app, trip, "family@example.com", guests=("Ann", "Bob"))
    b = add_registration(app, trip, "family@example.com", guests=("Cid",))
    with app.app_context():
        db.session.get(Registration, b).created_at = db.session.get(Registration, a).created_at
        db.session.commit()
    archive = make_backup(runner)
    delete_registrations(app, [a, b])
    source = source_of(app, runner, request, backend, tmp_path, archive)

    result = restore(app, source, archive, registration_ids=(a, b))

    assert result.plan.counts()["insert"]["registration"] == 2
    again = restore(app, source, archive, registration_ids=(a, b))
    assert not again.plan.of("insert") and not again.plan.mapping()["registration"]


def test_two_previews_never_link_one_photo_file_to_two_guests(demo_app, runner, request,
                                                              backend, tmp_path):
    """A (signed) archive naming one photo file for guests of two registrations,
    previewed separately (both say "kept"), then both restored: the second stops."""
    app = demo_app
    before = snapshot(live(app))
    name = next(g["document_photo"] for g in before["guest"].values() if g["document_photo"])
    first_guest = {}
    for gid in sorted(before["guest"]):
        first_guest.setdefault(before["guest"][gid]["registration_id"], gid)
    (r1, g1), (r2, g2) = sorted(first_guest.items())[-2:]
    archive = make_backup(runner)
    delete_registrations(app, [r1, r2])
    with app.app_context():
        db.session.execute(sa.text("UPDATE guest SET document_photo = NULL "
                                   "WHERE document_photo = :n"), {"n": name})
        db.session.commit()
    source = source_of(app, runner, request, backend, tmp_path, archive)
    with source.begin() as conn:
        conn.execute(sa.text("UPDATE guest SET document_photo = :n WHERE id IN (:a, :b)"),
                     {"n": name, "a": g1, "b": g2})
    with app.app_context():
        present = photo_check(backup_context(app))
        a = plan_selection(source, db.engine, Selection(registration_ids=(r1,)),
                           photo_present=present)
        b = plan_selection(source, db.engine, Selection(registration_ids=(r2,)),
                           photo_present=present)
        assert [s.photo for s in a.steps + b.steps if s.id in (g1, g2)] == ["kept", "kept"]
        apply_plan(db.engine, a)
        today = checksum(db.engine)
        with pytest.raises(SelectionChanged, match=f"guest {g1} was added since the preview"):
            apply_plan(db.engine, b)
    assert checksum(live(app)) == today
    after = snapshot(live(app))["guest"]
    assert [i for i, g in after.items() if g["document_photo"] == name] == [g1]


def hostile(source, backend, guest: int, value: str) -> None:
    """What a signed archive's scratch copy may hold: on SQLite any length and NULs;
    on PostgreSQL (no NUL in text at all) a column made wider."""
    with source.begin() as conn:
        if backend == "postgresql":
            conn.execute(sa.text("ALTER TABLE guest ALTER COLUMN first_name TYPE text"))
        conn.execute(sa.text("UPDATE guest SET first_name = :n WHERE id = :g"),
                     {"n": value, "g": guest})


@pytest.mark.parametrize("value", ["x" * 100000 + "\x00tail", "x" * 101, "Ann\x00"])
@pytest.mark.parametrize("when", ["preview", "restore"])
def test_a_value_the_live_column_cannot_hold_stops_the_restore(
        demo_app, runner, request, backend, tmp_path, value, when):
    app = demo_app
    if backend == "postgresql" and "\x00" in value:  # no scratch copy can hold one there
        source = source_of(app, runner, request, backend, tmp_path, make_backup(runner))
        with pytest.raises(ValueError, match="NUL"):  # psycopg2 refuses to send it
            hostile(source, backend, 1, value)
        return
    reg, g1, g2 = two_guests(snapshot(live(app)))
    archive = make_backup(runner)
    delete_registrations(app, [reg])
    source = source_of(app, runner, request, backend, tmp_path, archive)
    if when == "preview":
        hostile(source, backend, g2, value)
    else:  # the preview saw a fitting row; the apply reads the rows again
        with app.app_context():
            plan = plan_selection(source, db.engine, Selection(registration_ids=(reg,)))
        hostile(source, backend, g2, value)
    today = checksum(live(app))
    what = "a NUL character" if "\x00" in value else f"{len(value):,} characters"
    with app.app_context(), pytest.raises(BackupError, match=f"guest {g2} of the archive") as e:
        if when == "preview":
            restore(app, source, archive, registration_ids=(reg,))
        else:
            apply_plan(db.engine, plan)
    assert "first_name" in str(e.value) and what in str(e.value)
    assert "xxxx" not in str(e.value) and "Ann" not in str(e.value)
    assert checksum(live(app)) == today


def test_an_overwrite_that_does_not_fit_stops_the_restore(demo_app, runner, request, backend,
                                                          tmp_path):
    app = demo_app
    reg, g1, g2 = two_guests(snapshot(live(app)))
    archive = make_backup(runner)
    source = source_of(app, runner, request, backend, tmp_path, archive)
    hostile(source, backend, g1, "y" * 300)
    today = checksum(live(app))
    with pytest.raises(SelectionError, match=f"guest {g1} of the archive: its first_name"):
        restore(app, source, archive, registration_ids=(reg,), overwrite_guest_ids=(g1,))
    assert checksum(live(app)) == today


def test_a_huge_registration_id_is_a_usage_error(demo_app, runner):
    """(SQLite took it to the database: "the selective restore failed (OverflowError)".)"""
    archive = make_backup(runner)
    r = runner.invoke(args=["restore-select", str(archive), "--registration",
                            "99999999999999999999", "--dry-run"])
    assert r.exit_code == 2 and "Invalid value for '--registration'" in r.output, r.output


@pytest.mark.parametrize("option", ["--trip", "--registration", "--overwrite",
                                    "--overwrite-registration"])
@pytest.mark.parametrize("ident", ["99999999999999999999", "2147483648", "-5", "0"])
def test_odd_ids_on_the_command_line_are_usage_errors(app, runner, option, ident):
    extra = [] if option in ("--trip", "--registration") else ["--registration", "1"]
    r = runner.invoke(args=["restore-select", "no-such-archive.zip", option, ident, *extra,
                            "--dry-run"])
    assert r.exit_code == 2, r.output
    assert f"Invalid value for '{option}'" in r.output and "1<=x<=2147483647" in r.output
    assert "OverflowError" not in r.output
