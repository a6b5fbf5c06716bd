"""Which records a restore erases again: the ones each erasure erased, found at
whatever id they have in the restored database by the keyed hash of their
creation time (the ledger line keeps it), never another record merely because
it sits at the id or belongs to the same person."""

from __future__ import annotations

import sqlalchemy as sa

from guest_registration.extensions import db
from guest_registration.models import Guest, Registration, Trip
from tests.helpers import make_backup


def people(app) -> list[tuple]:
    """(guest id, first name, document number, registration id, e-mail), by guest id."""
    with app.app_context():
        return [tuple(r) for r in db.session.execute(sa.text(
            "SELECT g.id, g.first_name, g.document_number, r.id, r.email FROM guest g "
            "JOIN registration r ON r.id = g.registration_id ORDER BY g.id"))]


def add(app, first: str, email: str, document: str, trip: str = "Lake") -> tuple[int, int]:
    """A registration of one guest on the trip titled ``trip``: (guest id, registration id)."""
    with app.app_context():
        found = db.session.query(Trip).filter_by(title=trip).first()
        r = Registration(trip=found or Trip(title=trip, max_guests=9), email=email)
        g = Guest(registration=r, first_name=first, last_name="X", age_category="adult",
                  document_type="passport", document_number=document)
        db.session.add_all([r, g])
        db.session.commit()
        return g.id, r.id


def ok(runner, *args: str) -> str:
    result = runner.invoke(args=list(args))
    assert result.exit_code == 0, result.output
    return result.output


def with_ids_reused(app, runner):
    """Petra erased at an id that, in archive ``a2``, holds another erased guest
    (Rudolf), while Petra sits at another id there with all her data: an archive
    of the trip alone, then Petra and Rudolf, Rudolf erased, ``a2``; back to the
    first archive, a new sign-up takes Petra's old ids, Petra's registration
    restored from ``a2`` under new ids, and erased there."""
    add(app, "Nobody", "nobody@example.com", "N0")
    with app.app_context():
        db.session.execute(sa.text("DELETE FROM guest"))
        db.session.execute(sa.text("DELETE FROM registration"))
        db.session.commit()
    a0 = make_backup(runner)
    petra = add(app, "Petra", "petra@example.com", "PP111")
    rudolf = add(app, "Rudolf", "rudolf@example.com", "RR222")
    ok(runner, "erase", "--guest", str(rudolf[0]), "--yes")
    a2 = make_backup(runner)
    ok(runner, "restore", str(a0), "--replace", "--yes")
    add(app, "Sam", "sam@example.com", "SS333")
    ok(runner, "restore-select", a2.name, "--registration", str(petra[1]), "--yes")
    [now] = [row for row in people(app) if row[1] == "Petra"]
    assert now[0] == rudolf[0]  # Petra's guest now has the id Rudolf has in a2
    ok(runner, "erase", "--guest", str(now[0]), "--yes")
    return a2, petra


def test_a_whole_restore_erases_the_person_not_the_erased_row_at_her_id(app, runner):
    """Before, the erased Rudolf at Petra's id counted as her record found, and
    the restore brought Petra back with her name and passport number."""
    a2, _ = with_ids_reused(app, runner)
    output = ok(runner, "restore", str(a2), "--replace", "--yes")
    assert "1 erasure re-applied" in output or "1 erasures re-applied" in output, output
    assert [row for row in people(app) if row[1] == "Petra" or row[2] == "PP111"] == []


def test_a_selective_restore_does_not_bring_her_back_either(app, runner):
    a2, petra = with_ids_reused(app, runner)
    runner.invoke(args=["restore-select", a2.name, "--registration", str(petra[1]), "--yes"])
    assert [row for row in people(app) if row[1] == "Petra" or row[2] == "PP111"] == []


def test_erasing_one_registration_leaves_the_persons_older_one_in_an_older_archive(
        app, runner):
    """An archive older than the erased registration does not hold it. Before, the
    e-mail and document number led the restore to the person's other, older
    registration, which no erasure had touched, and it was erased."""
    add(app, "Petra", "petra@example.com", "PP111", trip="Summer 2024")
    archive = make_backup(runner)
    _, second = add(app, "Petra", "petra@example.com", "PP111", trip="Summer 2025")
    ok(runner, "erase", "--registration", str(second), "--yes")
    output = ok(runner, "restore", str(archive), "--replace", "--yes")
    assert "re-applied" not in output or "0 erasures re-applied" in output, output
    assert [row[1:3] for row in people(app)] == [("Petra", "PP111")]


def test_erasing_an_address_still_takes_every_registration_of_it(app, runner):
    """An e-mail erasure is of the person: in an older archive, their registrations
    the erasure never saw (deleted since, say) go too."""
    add(app, "Petra", "petra@example.com", "PP111", trip="Summer 2024")
    archive = make_backup(runner)
    with app.app_context():
        db.session.execute(sa.text("DELETE FROM guest"))
        db.session.execute(sa.text("DELETE FROM registration"))
        db.session.commit()
    add(app, "Petra", "petra@example.com", "PP111", trip="Summer 2025")
    ok(runner, "erase", "--email", "petra@example.com", "--yes")
    ok(runner, "restore", str(archive), "--replace", "--yes")
    assert [row[1:3] for row in people(app)] == [("[erased]", "[erased]")]
