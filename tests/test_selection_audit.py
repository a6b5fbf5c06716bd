"""The ``restore-select`` audit entry of a large selection (review: the message is
kept to 500 characters, and with ~30 registrations chosen the list of ids used to
push the counts, the new ids and a failure's reason past the cut). The facts come
first and whole; the id lists are shortened and say so. On SQLite and PostgreSQL,
through :func:`restore_selection` as the page and the CLI call it."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from guest_registration import audit as host_audit
from guest_registration.extensions import db
from guest_registration.models import Guest, Registration, Trip
from guest_backup.errors import BackupError
from guest_backup.ops.create import safe_message
from guest_backup.ops.selection import Plan, Selection, SelectionError, Step, restore_selection
from guest_backup.ops.selection_steps import AUDIT_CHARS, failure_line
from guest_backup.wiring import backup_context
from tests.helpers import make_backup, restore_target

REGISTRATIONS = 90  # every other one chosen: 45 ids that make no run


def test_the_limit_is_the_audit_logs():
    assert AUDIT_CHARS == host_audit.MESSAGE_CHARS


def test_thousands_of_ids_keep_the_counts_whole():
    chosen = range(1, 10_000, 2)  # 5,000 ids, none next to another
    plan = Plan(Selection(registration_ids=chosen),
                steps=[Step("registration", i, "insert", "id-taken", new_id=20_000 + i)
                       for i in chosen])
    message = plan.summary()
    assert len(message) <= AUDIT_CHARS
    assert message.startswith("inserted 0 trips, 5000 registrations, 0 guests; overwrote 0 "
                              "trips, 0 registrations, 0 guests; left 0 trips, 0 "
                              "registrations, 0 guests; erased left out 0 registrations, "
                              "0 guests; chosen registration 1, 3, 5, ")
    assert "… (5000 ids in all, list shortened); new ids: registration 1→20001, 3→20003" \
        in message
    assert message.endswith("… (5000 new ids in all, list shortened)")
    reason = "registration 99999 is not in the archive"
    failed = failure_line(plan.selection, reason)
    assert failed.startswith(reason + "; chosen registration 1, 3, ")
    assert len(failed) <= AUDIT_CHARS and failed.endswith("(5000 ids in all, list shortened)")
    assert len(failure_line(plan.selection, "x" * 2_000)) <= AUDIT_CHARS


def test_ids_that_follow_each_other_are_runs():
    plan = Plan(Selection(trip_ids=(3,), registration_ids=range(1, 41)),
                steps=[Step("registration", i, "insert", "id-taken", new_id=100 + i)
                       for i in range(1, 41)] + [Step("guest", 7, "insert", "id-taken",
                                                      new_id=9)])
    assert plan.summary().endswith("; chosen trip 3, registration 1-40; new ids: "
                                   "registration 1-40→101-140, guest 7→9")
    assert plan.selection.describe() == ", ".join(  # the page and the CLI: every id
        ["trip 3"] + [f"registration {i}" for i in range(1, 41)])


def entries(app, outcome: str) -> list[dict]:
    with app.app_context():
        return backup_context(app).audit.recent(db.engine, action="restore-select",
                                                outcome=outcome)


@pytest.fixture
def large(app, runner, request, backend, tmp_path):
    """90 registrations archived, the 45 chosen ones (every other) deleted and their
    ids taken by new sign-ups, so they come back under new ids: (chosen ids, restore
    of a list of registration ids)."""
    with app.app_context():
        trip = Trip(title="Big", max_guests=500)
        db.session.add(trip)
        for i in range(REGISTRATIONS):
            reg = Registration(trip=trip, email=f"p{i}@example.com", language="en")
            db.session.add(Guest(registration=reg, first_name=f"F{i}", last_name="L",
                                 age_category="adult", document_type="passport",
                                 document_number=f"D{i}", gdpr_consent=True))
        db.session.commit()
        trip_id = trip.id
        chosen = [r for (r,) in db.session.query(Registration.id).order_by(Registration.id)][::2]
    archive = make_backup(runner)
    with app.app_context():
        db.session.query(Guest).filter(Guest.registration_id.in_(chosen)).delete()
        db.session.query(Registration).filter(Registration.id.in_(chosen)).delete()
        for rid in chosen:  # a sign-up under each freed id: the archive's rows need new ones
            db.session.add(Registration(id=rid, trip_id=trip_id, email=f"n{rid}@example.com",
                                        language="en"))
        db.session.commit()
    target = restore_target(request, backend, tmp_path)
    done = runner.invoke(args=["restore", str(archive), "--database-url", target,
                               "--uploads", str(tmp_path / "scratch-uploads"), "--yes"])
    assert done.exit_code == 0, done.output
    source = sa.create_engine(target)
    request.addfinalizer(source.dispose)

    def restore(ids):
        with app.app_context():
            return restore_selection(backup_context(app), db.engine, source,
                                     Selection(registration_ids=ids), archive=archive.name,
                                     actor="tester", via="cli")
    return chosen, restore


def test_a_large_selection_s_entry_keeps_its_counts_and_new_ids(app, large):
    chosen, restore = large
    result = restore(chosen)
    mapping = result.plan.mapping()["registration"]
    assert sorted(int(i) for i in mapping) == chosen
    [ok] = entries(app, "ok")
    message = ok["message"]
    print("OK ENTRY", len(message), message)
    assert message.startswith(f"inserted 0 trips, {len(chosen)} registrations, "
                              f"{len(chosen)} guests; overwrote 0 trips, 0 registrations, "
                              f"0 guests; left 1 trips, 0 registrations, 0 guests; erased "
                              f"left out 0 registrations, 0 guests; chosen registration "
                              f"{chosen[0]}, {chosen[1]}, ")
    assert f"… ({len(chosen)} ids in all, list shortened); new ids: registration " \
           f"{chosen[0]}→{mapping[str(chosen[0])]}" in message
    assert len(message) <= AUDIT_CHARS and ok["rows"] == 2 * len(chosen)
    assert "@" not in message  # ids and counts, no personal data


def test_a_large_selection_s_failure_keeps_its_reason(app, large):
    chosen, restore = large
    with pytest.raises(SelectionError, match="registration 999999 is not in the archive"):
        restore(chosen + [999_999])
    [failed] = entries(app, "failed")
    print("FAILED ENTRY", len(failed["message"]), failed["message"])
    assert failed["message"] == ("registration 999999 is not in the archive; chosen "
                                 "registration " + ", ".join(map(str, chosen + [999_999])))

    unknown = list(range(900_001, 900_301, 2))  # a refusal lists a few, counts the rest
    with pytest.raises(SelectionError) as refused:
        restore(chosen + unknown)
    reason = str(refused.value)
    assert reason.startswith("registration 900001, 900003, ") and len(reason) < 300
    assert reason.endswith("… (150 ids in all, list shortened) is not in the archive")
    failed = entries(app, "failed")[0]  # the newest
    assert failed["message"].startswith(reason + "; chosen registration ")
    assert len(failed["message"]) <= AUDIT_CHARS


def test_a_failure_s_reason_comes_before_the_ids():
    """Whatever the error (one that is not a :class:`BackupError` is named by its
    type), the reason is whole in the entry."""
    sel = Selection(registration_ids=range(1, 1000, 2))
    for exc, reason in ((BackupError("the live database refused a row"),
                         "the live database refused a row"),
                        (RuntimeError("secret detail"), "the selective restore failed "
                         "(RuntimeError); details are in the server log")):
        message = failure_line(sel, safe_message(exc, "selective restore"))
        assert message.startswith(reason + "; chosen registration 1, 3, 5")
        assert message.endswith("(500 ids in all, list shortened)")
        assert len(message) <= AUDIT_CHARS and "secret" not in message
