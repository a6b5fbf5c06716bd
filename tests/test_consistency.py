"""What people read is the same everywhere: one label per stored choice, sizes in
binary units, timestamps to the second, booleans as Yes/No."""

from __future__ import annotations

import re
from datetime import datetime

import pytest

from guest_registration.extensions import db
from guest_registration.formatting import human_size, timestamp, yes_no
from guest_registration.models import DOCUMENT_TYPES, Guest, Registration, Trip


@pytest.mark.parametrize("n,text", [(0, "0 B"), (532, "532 B"), (1023, "1023 B"),
                                    (7 * 1024 + 205, "7.2 KiB"), (1024 ** 2, "1.0 MiB"),
                                    (5 * 1024 ** 3, "5.0 GiB"), (3 * 1024 ** 5, "3072.0 TiB")])
def test_human_size_uses_binary_units(n, text):
    assert human_size(n) == text


def test_timestamp_and_yes_no():
    assert timestamp(datetime(2025, 6, 23, 14, 30, 0, 123456)) == "2025-06-23 14:30:00"
    assert timestamp(None) == ""
    assert (yes_no(True), yes_no(False), yes_no(None)) == ("Yes", "No", "")


def test_admin_lists_show_labels_seconds_and_yes_no(app, client, auth):
    with app.app_context():
        trip = Trip(title="Label trip", max_guests=3)
        reg = Registration(trip=trip, email="l@example.com", language="cs", status="approved")
        db.session.add_all([trip, reg, Guest(
            registration=reg, first_name="Eva", last_name="Černá", age_category="child",
            document_type="driving_license", document_number="D1", gdpr_consent=True,
            created_at=datetime(2025, 6, 23, 14, 30, 0, 654321))])
        db.session.commit()
    auth.login()
    guest = cells(client.get("/admin/guest/"))[0]
    assert (guest["document_type"], guest["age_category"], guest["gdpr_consent"]) == (
        "Driving licence", "Child", "Yes")
    assert guest["created_at"] == "2025-06-23 14:30:00"
    registration = cells(client.get("/admin/registration/"))[0]
    assert (registration["status"], registration["language"]) == ("Approved", "Čeština")
    users = cells(client.get("/admin/user/"))
    assert {u["active"] for u in users} == {"Yes"}
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", u["create_datetime"])
               for u in users)
    detail = client.get(f"/admin/guest/details/?id={guest['id']}").get_data(as_text=True)
    assert "Driving licence" in detail and "Yes" in detail
    assert "2025-06-23 14:30:00" in detail and "654321" not in detail
    form = client.get(f"/trips/{reg_trip_id(app)}/register").get_data(as_text=True)
    assert all(label in form for label in DOCUMENT_TYPES.values())


def cells(response) -> list[dict[str, str]]:
    """The rows of a Flask-Admin list page as {column: shown text}."""
    html = response.get_data(as_text=True)
    rows = []
    for row in re.findall(r"<tr>(.*?)</tr>", html, re.S):
        found = dict(re.findall(r'<td class="col-([\w.]+)">\s*(.*?)\s*</td>', row, re.S))
        if found:
            rows.append(found)
    return rows


def reg_trip_id(app) -> int:
    with app.app_context():
        return db.session.query(Trip.id).filter_by(title="Label trip").scalar()


def test_sizes_in_the_cli_status_and_page_are_binary(app, runner, client, auth):
    out = runner.invoke(args=["backup"])
    assert out.exit_code == 0, out.output
    summary = out.output.strip().splitlines()[-2]
    assert re.search(r", \d+\.\d (KiB|MiB)$", summary), summary
    listing = runner.invoke(args=["backup-list"]).output
    assert re.search(r"\d+\.\d (KiB|MiB)", listing) and " MB" not in listing
    status = runner.invoke(args=["status"]).output
    assert re.search(r"newest backup: system_backup_\S+, \d+\.\d (KiB|MiB)", status), status
    auth.login()
    page = client.get("/admin/backup/").get_data(as_text=True)
    assert re.search(r"\d+\.\d (KiB|MiB)</td>", page) and " MB<" not in page
