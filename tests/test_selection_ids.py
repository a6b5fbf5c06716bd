"""A selective restore's ids and photos against a hostile or unusual archive:
ids this database has not handed out come back as new ones (a forged 2**31-1
pushed the sequence to its end, and sign-ups drew ids being restored), and one
photo file is never linked to two restored guests."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

import guest_backup.ops.selection_apply as selection_apply
from guest_registration.extensions import db
from guest_registration.models import Registration
from tests.helpers import make_backup
from tests.test_selection import (add_registration, delete_registrations, demo_app,  # noqa: F401
                                  live, restore, snapshot, source_of, trip_named, two_guests)

TOP = 2147483647


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_forged_huge_id_comes_back_as_a_new_one_and_sign_ups_go_on(
        demo_app, runner, request, backend, tmp_path):
    app = demo_app
    trip = trip_named(app, "Alps Ski Week")
    reg = add_registration(app, trip, "hostile@example.com", guests=("Max", "Id"))
    archive = make_backup(runner)
    delete_registrations(app, [reg])
    source = source_of(app, runner, request, backend, tmp_path, archive)
    with source.begin() as conn:  # what a forged (validly signed) archive could hold
        conn.execute(sa.text("SET session_replication_role = replica"))
        conn.execute(sa.text("UPDATE registration SET id = :top WHERE id = :r"),
                     {"top": TOP, "r": reg})
        conn.execute(sa.text("UPDATE guest SET registration_id = :top "
                             "WHERE registration_id = :r"), {"top": TOP, "r": reg})
    result = restore(app, source, archive, registration_ids=(TOP,))
    [step] = result.plan.of("insert", "registration")
    assert step.reason == "id-ahead" and step.target < 10_000
    with app.app_context():
        assert db.session.execute(sa.text(
            "SELECT last_value FROM registration_id_seq")).scalar() < 10_000
        signup = Registration(trip_id=trip, email="next@example.com", language="en")
        db.session.add(signup)
        db.session.commit()  # before: nextval reached the sequence's maximum
        assert signup.id not in (step.target, TOP)


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_sign_up_during_the_restore_draws_none_of_its_ids(demo_app, runner, request, backend,
                                                            tmp_path, monkeypatch):
    """The sequence behind the archive's ids, as a whole restore of an older archive
    leaves it: the restore inserted those ids and moved the sequence only after the
    table's inserts, so a sign-up in between drew one, waited for the restore and
    failed on the duplicate key."""
    app = demo_app
    trip = trip_named(app, "Alps Ski Week")
    with app.app_context():
        top = db.session.execute(sa.text("SELECT max(id) FROM registration")).scalar()
    regs = [add_registration(app, trip, f"late{i}@example.com") for i in range(3)]
    archive = make_backup(runner)
    delete_registrations(app, regs)
    with app.app_context():
        db.session.execute(sa.text("SELECT setval('registration_id_seq', :t)"), {"t": top})
        db.session.commit()
    source = source_of(app, runner, request, backend, tmp_path, archive)
    url = live(app).url.render_as_string(hide_password=False)
    outcome: dict = {}

    def sign_up():
        engine = sa.create_engine(url)
        try:
            with engine.begin() as conn:
                outcome["id"] = conn.execute(sa.text(
                    "INSERT INTO registration (trip_id, email, language, status, created_at) "
                    "VALUES (:t, 'signup@example.com', 'en', 'pending', now()) RETURNING id"),
                    {"t": trip}).scalar()
        except Exception as exc:  # asserted below
            outcome["error"] = type(exc).__name__
        finally:
            engine.dispose()

    real_insert, threads = selection_apply._insert, []

    def insert(src, dst, tables, steps):  # a sign-up while the restore is still open
        real_insert(src, dst, tables, steps)
        if steps and steps[0].table == "registration" and not threads:
            threads.append(threading.Thread(target=sign_up))
            threads[0].start()
            time.sleep(1.0)

    monkeypatch.setattr(selection_apply, "_insert", insert)
    result = restore(app, source, archive, registration_ids=tuple(regs))
    threads[0].join(20)
    restored = {s.target for s in result.plan.of("insert", "registration")}
    assert "error" not in outcome and outcome["id"] not in restored
    assert len(restored) == 3


def test_one_photo_file_is_linked_to_one_restored_guest_only(demo_app, runner, request,
                                                             backend, tmp_path):
    """An archive naming one file for two guests: both were linked to it (one
    person's document photo on another's record; erasing either deleted the file
    the other linked)."""
    app = demo_app
    before = snapshot(live(app))
    reg, first, second = two_guests(before)
    name = next(g["document_photo"] for g in before["guest"].values() if g["document_photo"])
    archive = make_backup(runner)
    delete_registrations(app, [reg])
    with app.app_context():  # nobody links the file today
        db.session.execute(sa.text("UPDATE guest SET document_photo = NULL "
                                   "WHERE document_photo = :n"), {"n": name})
        db.session.commit()
    source = source_of(app, runner, request, backend, tmp_path, archive)
    with source.begin() as conn:
        conn.execute(sa.text("UPDATE guest SET document_photo = :n WHERE id IN (:a, :b)"),
                     {"n": name, "a": first, "b": second})
    result = restore(app, source, archive, registration_ids=(reg,))
    photos = {s.id: s.photo for s in result.plan.of("insert", "guest")}
    assert sorted([photos[first], photos[second]]) == ["kept", "missing"]
    after = snapshot(live(app))["guest"]
    assert sum(g["document_photo"] == name for g in after.values()) == 1
