"""The separately published NDJSON distribution in extras/: pip install it and the
new format shows up in the API, in `manage.py plugins` and on the admin page;
without it, it is gone. No line of the app changes.

pip installs it into a temporary ``--target`` directory that only these tests
see (``sys.path`` in-process, ``PYTHONPATH`` for subprocesses), never into the
environment running the tests."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from guest_registration import create_app
from guest_registration.extensions import db
from guest_registration.models import Guest, Registration, Trip
from tests.helpers import ROOT, installed_distribution, make_config, manage, pythonpath_env

pytestmark = pytest.mark.pip

DIST = ROOT / "extras" / "guest-registration-ndjson"


@pytest.fixture(scope="class")
def ndjson_installed(tmp_path_factory) -> Path:
    """The distribution installed once for the tests of a class (the target directory);
    its teardown comes before ``test_uninstalled_it_is_gone``, which is outside the class."""
    with installed_distribution(DIST, tmp_path_factory.mktemp("ndjson-dist")) as target:
        yield target


class TestInstalled:
    """While installed (one installation for the class)."""

    def test_plugins_command_lists_it(self, ndjson_installed, tmp_path):
        out = manage("plugins", env=pythonpath_env(ndjson_installed), tmp_path=tmp_path).stdout
        assert "ndjson: guest_registration_ndjson from guest-registration-ndjson 1.0.0" in out
        assert "export formats available: csv, json, ndjson" in out

    def test_api_exports_it(self, ndjson_installed, app, client, auth):
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

    def test_admin_page_offers_it(self, ndjson_installed, client, auth):
        auth.login()
        html = client.get("/admin/backup/").get_data(as_text=True)
        assert 'value="ndjson"' in html or 'data-format="ndjson"' in html


def test_uninstalled_it_is_gone(tmp_path):
    """Installed, then uninstalled: a new app and `manage.py plugins` no longer see it."""
    with installed_distribution(DIST, tmp_path / "dist") as target:
        app = create_app(make_config(tmp_path, f"sqlite:///{tmp_path}/x.db"),
                         instance_path=str(tmp_path / "i"))
        assert app.extensions["export_formats"].names() == ["csv", "json", "ndjson"]
        assert "ndjson" in manage("plugins", env=pythonpath_env(target), tmp_path=tmp_path).stdout
    app = create_app(make_config(tmp_path, f"sqlite:///{tmp_path}/x.db"),
                     instance_path=str(tmp_path / "i"))
    assert app.extensions["export_formats"].names() == ["csv", "json"]
    out = manage("plugins", tmp_path=tmp_path).stdout
    assert "ndjson" not in out
