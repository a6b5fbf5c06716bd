"""The separately published NDJSON distribution in extras/: pip install it and the
new format shows up in the API, in `manage.py plugins` and on the admin page;
pip uninstall it and it is gone. No line of the app changes."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from datetime import datetime

import pytest

from guest_registration import create_app
from guest_registration.extensions import db
from guest_registration.models import Guest, Registration, Trip
from tests.conftest import ROOT, make_config
from tests.test_plugins import manage

DIST = ROOT / "extras" / "guest-registration-ndjson"


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
                   check=True, capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def ndjson_installed():
    pip("install", "--no-build-isolation", str(DIST))
    importlib.invalidate_caches()
    try:
        yield
    finally:
        pip("uninstall", "-y", "guest-registration-ndjson")
        importlib.invalidate_caches()


def test_plugins_command_lists_it(ndjson_installed, tmp_path):
    out = manage("plugins", tmp_path=tmp_path).stdout
    assert "ndjson: guest_registration_ndjson from guest-registration-ndjson 1.0.0" in out
    assert "export formats available: csv, json, ndjson" in out


def test_api_exports_it(ndjson_installed, app, client, auth):
    with app.app_context():
        trip = Trip(title="Tatra, hike", max_guests=3)
        reg = Registration(trip=trip, email="a@example.com", language="de")
        db.session.add_all([trip, reg] + [
            Guest(registration=reg, first_name=f'Jo "{i}"', last_name="Nováková",
                  age_category="adult", document_type="passport", document_number=str(i),
                  gdpr_consent=True, created_at=datetime(2025, 6, 10 + i))
            for i in range(3)])
        db.session.commit()
    token = auth.token()
    resp = client.get("/api/backup/guests?year=2025&month=6&format=ndjson",
                      headers={"Authentication-Token": token}, buffered=True)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/x-ndjson"
    assert 'filename="guests_2025_06.ndjson"' in resp.headers["Content-Disposition"]
    lines = resp.data.decode().splitlines()
    assert len(lines) == 3 == int(resp.headers["X-Export-Rows"])
    first = json.loads(lines[0])
    assert first["first_name"] == 'Jo "0"' and first["trip_title"] == "Tatra, hike"
    assert first["gdpr_consent"] is True and first["created_at"] == "2025-06-10 00:00:00"
    empty = client.get("/api/backup/guests?year=2025&month=1&format=ndjson",
                       headers={"Authentication-Token": token}, buffered=True)
    assert empty.status_code == 200 and empty.data == b""


def test_admin_page_offers_it(ndjson_installed, client, auth):
    auth.login()
    html = client.get("/admin/backup/").get_data(as_text=True)
    assert 'value="ndjson"' in html or 'data-format="ndjson"' in html


def test_uninstalled_it_is_gone(tmp_path):
    """Installed, then uninstalled: a new app and `manage.py plugins` no longer see it."""
    pip("install", "--no-build-isolation", str(DIST))
    pip("uninstall", "-y", "guest-registration-ndjson")
    importlib.invalidate_caches()
    app = create_app(make_config(tmp_path, f"sqlite:///{tmp_path}/x.db"),
                     instance_path=str(tmp_path / "i"))
    assert app.extensions["export_formats"].names() == ["csv", "json"]
    out = manage("plugins", tmp_path=tmp_path).stdout
    assert "ndjson" not in out
