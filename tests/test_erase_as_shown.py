"""An erasure erases what was shown and confirmed. The rights page previewed one
guest of an address; a second registration with that address came in; "Erase
permanently" erased both, the second never shown. The page and the command's
confirmation now carry the plan's fingerprint, and a plan that differs at the
moment of the erasure changes nothing."""

from __future__ import annotations

import re

from guest_registration.extensions import db
from guest_registration.models import Guest, Registration
from tests.helpers import csrf_token_from
from tests.test_erasure import EMAIL, add_people, audit_rows, guest, ledger_of


def another_registration(app, trip_of: int) -> int:
    with app.app_context():
        trip = db.session.get(Registration, trip_of).trip
        registration = Registration(trip=trip, email=EMAIL, language="en")
        late = Guest(registration=registration, first_name="Late", last_name="Comer",
                     age_category="adult", document_type="passport", document_number="L1",
                     gdpr_consent=True)
        db.session.add_all([registration, late])
        db.session.commit()
        return late.id


def test_the_page_erases_only_what_it_showed(app, client, auth):
    ids = add_people(app)
    auth.login()
    token = csrf_token_from(client.get("/admin/rights/").get_data(as_text=True))
    page = client.post("/admin/rights/", data={"kind": "email", "q": EMAIL,
                                               "csrf_token": token}).get_data(as_text=True)
    assert "Erase permanently" in page and "Late" not in page
    form = {name: value for name, value in re.findall(
        r'<input type="hidden" name="(\w+)" value="([^"]*)"', page.split('id="erase-form"')[1])}
    late = another_registration(app, ids["a"])  # registered after the preview
    done = client.post("/admin/rights/erase", data=form, follow_redirects=True)
    assert "changed since it was shown" in done.get_data(as_text=True)
    assert guest(app, late)["first_name"] == "Late"
    assert guest(app, ids["jana"])["first_name"] == "Jana"  # nothing at all
    assert list(ledger_of(app).entries()) == [] and audit_rows(app) == []
    # searched again, shown again: now both go
    page = client.post("/admin/rights/", data={"kind": "email", "q": EMAIL,
                                               "csrf_token": token}).get_data(as_text=True)
    assert "Late" in page
    form = {name: value for name, value in re.findall(
        r'<input type="hidden" name="(\w+)" value="([^"]*)"', page.split('id="erase-form"')[1])}
    done = client.post("/admin/rights/erase", data=form, follow_redirects=True)
    assert "Erased:" in done.get_data(as_text=True)
    assert guest(app, late)["first_name"] == "[erased]"


def test_the_page_in_czech(app, client, auth):
    ids = add_people(app)
    auth.login()
    token = csrf_token_from(client.get("/admin/rights/?lang=cs").get_data(as_text=True))
    done = client.post("/admin/rights/erase", data={
        "kind": "guest", "q": str(ids["jana"]), "plan": "stale", "csrf_token": token},
        follow_redirects=True)
    assert "Nic nebylo vymazáno: to, co by se vymazalo" in done.get_data(as_text=True)
    assert guest(app, ids["jana"])["first_name"] == "Jana"


def test_the_command_erases_only_what_was_confirmed(app, runner, monkeypatch):
    import guest_backup.cli.rights as cli_rights

    ids = add_people(app)
    late: list[int] = []

    def confirm_while_one_registers(*args, **kwargs):
        late.append(another_registration(app, ids["a"]))
        return True

    monkeypatch.setattr(cli_rights.click, "confirm", confirm_while_one_registers)
    result = runner.invoke(args=["erase", "--email", EMAIL])
    assert result.exit_code == 1 and "changed since it was shown" in result.output
    assert guest(app, late[0])["first_name"] == "Late"
    assert guest(app, ids["jana"])["first_name"] == "Jana"
