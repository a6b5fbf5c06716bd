"""Core commands through the real click CLI (in-process and as `python manage.py`)."""

from __future__ import annotations

import re
from pathlib import Path

from guest_registration.extensions import db
from guest_registration.models import Guest, Registration, Role, Trip, User
from tests.helpers import ADMIN, USER, manage

UUID_FILE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.(png|pdf)$")


def test_setup_is_idempotent_and_resets_a_password_only_when_told(runner, app, auth):
    for _ in range(2):
        result = runner.invoke(args=["setup", "--admin-email", "boss@example.com",
                                     "--admin-password", "first-password"])
        assert result.exit_code == 0, result.output
    assert "admin user exists, password unchanged" in result.output
    result = runner.invoke(args=["setup", "--admin-email", "boss@example.com",
                                 "--admin-password", "second-password", "--reset-password"])
    assert result.exit_code == 0 and "admin user password reset" in result.output
    with app.app_context():
        assert db.session.query(Role).filter_by(name="admin").count() == 1
        assert db.session.query(User).filter_by(email="boss@example.com").count() == 1
    auth.login("boss@example.com", "second-password")
    assert auth._client.get("/admin/").status_code == 200


def test_setup_reads_admin_from_environment(runner, app):
    result = runner.invoke(args=["setup"], env={"ADMIN_EMAIL": "env@example.com",
                                                "ADMIN_PASSWORD": "from-env-1"})
    assert result.exit_code == 0 and "admin user created: env@example.com" in result.output


def test_status_ok(runner, app):
    result = runner.invoke(args=["status"])
    assert result.exit_code == 0, result.output
    assert re.search(r"\[ok  \] database: (sqlite|postgresql) \S+ reachable", result.output)
    assert "[ok  ] export formats: csv, json" in result.output
    assert "backup (guest-registration 0.1.0)" in result.output


def test_status_fails_on_unreachable_database(tmp_path):
    out = manage("status", tmp_path=tmp_path,
                 env={"DATABASE_URL": "postgresql://postgres:s3cret-pw@127.0.0.1:1/nowhere"})
    assert out.returncode == 1
    assert "[FAIL] database: cannot connect to postgresql+psycopg2://postgres:***@127.0.0.1:1/nowhere" in out.stdout
    assert "s3cret-pw" not in out.stdout + out.stderr


def test_status_fails_on_missing_folder(runner, app, tmp_path):
    Path(app.config["BACKUP_FOLDER"]).rmdir()
    result = runner.invoke(args=["status"])
    assert result.exit_code == 1
    assert "[FAIL] backup folder" in result.output and "run `python manage.py setup`" in result.output


def test_demo_data_loads_once(runner, app):
    result = runner.invoke(args=["demo-data"])
    assert result.exit_code == 0 and "demo data loaded" in result.output
    with app.app_context():
        trips = db.session.query(Trip).count()
        guests = db.session.query(Guest).all()
        months = {(g.created_at.year, g.created_at.month) for g in guests}
        photos = {g.document_photo for g in guests if g.document_photo}
        assert trips == 6 and db.session.query(Registration).count() >= 18
        assert len(months) >= 3
    folder = Path(app.config["UPLOAD_FOLDER"])
    files = {p.name for p in folder.iterdir() if p.is_file()}
    assert photos and photos <= files and all(UUID_FILE.match(p) for p in photos)
    assert {"logo.png", "invoice-2025-06.pdf"} <= files
    assert (folder / "docs" / "terms-and-conditions.txt").exists()
    again = runner.invoke(args=["demo-data"])
    assert "skipped" in again.output
    with app.app_context():
        assert db.session.query(Trip).count() == 6


def test_flask_and_flask_security_commands_work_through_manage_py(tmp_path):
    routes = manage("routes", tmp_path=tmp_path)
    assert routes.returncode == 0 and "/admin/backup/" in routes.stdout
    assert "/trips/<int:trip_id>/register" in routes.stdout
    assert manage("setup", tmp_path=tmp_path).returncode == 0
    users = manage("users", "create", "--password", "pw-123456789", "--active",
                   "someone@example.com", tmp_path=tmp_path)
    assert users.returncode == 0, users.stdout + users.stderr
    roles = manage("roles", "add", "someone@example.com", "admin", tmp_path=tmp_path)
    assert roles.returncode == 0, roles.stdout + roles.stderr


def test_auth_token_command(runner, app, client):
    result = runner.invoke(args=["auth-token", ADMIN[0]])
    assert result.exit_code == 0 and len(result.output.strip()) > 20
    refused = runner.invoke(args=["auth-token", USER[0]])
    assert refused.exit_code != 0 and "not an active admin" in refused.output
