"""The audit log has one writer and misses nothing: verify from the CLI and the
page, refused and failed restores (with the real ``via``), archive downloads,
document-photo views, and a Preview recorded as a preview."""

from __future__ import annotations


import pytest

from guest_registration import audit
from guest_registration.extensions import db
from guest_registration.models import AuditEntry, Guest, Registration, Trip
from tests.helpers import add_guest_with_photo, csrf_token_from, make_backup


def entries(app, action: str) -> list[AuditEntry]:
    with app.app_context():
        rows = db.session.query(AuditEntry).filter_by(action=action).order_by(AuditEntry.id).all()
        db.session.expunge_all()
        return rows


def test_cli_verify_is_audited_ok_and_failed(app, runner, tmp_path):
    archive = make_backup(runner)
    assert runner.invoke(args=["verify", str(archive)]).exit_code == 0
    broken = tmp_path / archive.name
    data = bytearray(archive.read_bytes())
    data[len(data) // 3] ^= 0xFF
    broken.write_bytes(bytes(data))
    assert runner.invoke(args=["verify", str(broken)]).exit_code == 1
    rows = entries(app, "verify")
    assert [(r.outcome, r.via, r.target) for r in rows] == [
        ("ok", "cli", archive.name), ("failed", "cli", str(broken))]  # a copy elsewhere: its path
    assert rows[0].actor.startswith("cli") and rows[1].message and rows[1].finished_at


def test_refused_restores_are_audited(app, runner, tmp_path):
    archive = make_backup(runner)
    own = runner.invoke(args=["restore", str(archive), "--yes"])  # the app's own, not empty
    assert own.exit_code == 1 and "not empty" in own.output
    missing = runner.invoke(args=["restore", str(tmp_path / "nope.zip"), "--yes"])
    assert missing.exit_code == 1 and "does not exist" in missing.output
    rows = entries(app, "restore")
    assert [(r.outcome, r.via, r.target) for r in rows] == [
        ("failed", "cli", archive.name), ("failed", "cli", "nope.zip")]
    assert rows[0].message.startswith("refused: the target database is not empty")


@pytest.mark.parametrize("backend", ["sqlite"])
def test_failed_restore_is_audited_with_the_callers_via(app, tmp_path, runner):
    from guest_backup.wiring import backup_context
    from guest_backup.errors import BackupError
    from guest_backup.ops.restore import restore_archive

    archive = make_backup(runner)
    ctx = backup_context(app)
    with app.app_context():
        with pytest.raises(BackupError, match="not empty"):
            restore_archive(archive, engines=ctx.engines, settings=ctx.settings,
                            target_url=app.config["DATABASE_URL"], uploads_dir=tmp_path / "u",
                            trusted=ctx.settings.trusted(), engine=db.engine, audit=ctx.audit,
                            actor="someone@example.com", via="admin")
    (row,) = entries(app, "restore")
    assert (row.via, row.actor, row.outcome) == ("admin", "someone@example.com", "failed")


def test_page_verify_download_and_delete_are_audited(app, runner, client, auth):
    archive = make_backup(runner)
    auth.login()
    page = client.get("/admin/backup/")
    token = csrf_token_from(page.get_data(as_text=True))
    assert client.post(f"/admin/backup/verify/{archive.name}",
                       data={"csrf_token": token}).status_code == 302
    download = client.get(f"/admin/backup/download/{archive.name}")
    assert download.status_code == 200 and download.data[:2] == b"PK"
    assert client.post(f"/admin/backup/delete/{archive.name}",
                       data={"csrf_token": token}).status_code == 302
    for action in ("verify", "download", "delete"):
        (row,) = entries(app, action)
        assert (row.outcome, row.via, row.actor, row.target) == (
            "ok", "admin", "admin@example.com", archive.name), action
    assert entries(app, "download")[0].bytes == len(download.data)
    # a download of a name that is no archive is a 404 and records nothing
    assert client.get("/admin/backup/download/..%2Fsecret_key").status_code == 404
    assert len(entries(app, "download")) == 1


def test_photo_view_is_audited(app, client, auth):
    name = "0b0e6c1e-3c52-4a43-9a6f-2f0f0b1b7d11.png"
    guest_id = add_guest_with_photo(app, name)
    auth.login()
    assert client.get(f"/admin/guest/photo/{guest_id}").status_code == 200
    (row,) = entries(app, "photo")
    assert (row.outcome, row.via, row.actor) == ("ok", "admin", "admin@example.com")
    assert row.target == f"guest {guest_id}: {name}"


def test_preview_is_recorded_as_a_preview(app, client, auth):
    with app.app_context():
        trip = Trip(title="Tatry", max_guests=50)
        reg = Registration(trip=trip, email="p@example.com", language="cs")
        from datetime import datetime
        db.session.add_all([trip, reg] + [
            Guest(registration=reg, first_name=f"G{i}", last_name="Nováková",
                  age_category="adult", document_type="passport", document_number=str(i),
                  gdpr_consent=True, created_at=datetime(2025, 6, 1, 12, 0, i))
            for i in range(40)])
        db.session.commit()
    auth.login()
    resp = client.get("/admin/backup/preview?year=2025&month=6&format=csv")
    assert resp.status_code == 200, resp.data
    data = resp.get_json()
    assert data["rows"] == 40 and data["media_type"].startswith("text/csv")
    assert len(data["lines"]) == 20 and data["lines"][0].startswith("id,registration_id")
    assert "Nováková" in data["lines"][1]
    assert entries(app, "export") == []
    (row,) = entries(app, "preview")
    assert (row.outcome, row.via, row.year, row.month, row.format) == ("ok", "admin", 2025, 6, "csv")
    assert row.message == "first 20 lines shown"
    bad = client.get("/admin/backup/preview?year=20250&month=6")
    assert bad.status_code == 400 and "between 1900 and 9999" in bad.get_json()["error"]
    assert len(entries(app, "preview")) == 1


def test_audit_helper_refuses_unknown_via_and_outcome(app):
    with app.app_context():
        with pytest.raises(ValueError):
            audit.start(db.engine, "export", actor="x", via="carrier-pigeon")
        entry = audit.start(db.engine, "export", actor="x", via="cli")
        with pytest.raises(ValueError):
            audit.finish(db.engine, entry, "running")
        audit.finish(db.engine, entry, "ok", message="m" * 2000)
        assert len(db.session.get(AuditEntry, entry).message) == audit.MESSAGE_CHARS
