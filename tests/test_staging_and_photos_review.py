"""Restored uploads and deleted guests' photos (review r4): a root restore leaves
the uploads the service user's, a long upload name and a killed restore's
leftovers stop no restore; deleting a guest, registration or trip in the admin
deletes its document photos; a file name with two dots is no path."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from guest_registration import create_app
from guest_registration.demo import tiny_png
from guest_registration.extensions import db
from guest_registration.models import Guest, Registration, Trip
from tests.helpers import ADMIN, add_guest_with_photo, csrf_token_from, make_backup, make_config
from tests.test_root_runs import NOBODY, as_nobody, base  # noqa: F401 (fixture)

PDF = b"%PDF-1.4\n%%EOF\n"


def restore(runner, archive: Path, tmp_path: Path, out: Path):
    return runner.invoke(args=["restore", str(archive), "--database-url",
                               f"sqlite:///{tmp_path / 'r.db'}", "--uploads", str(out), "--yes"])


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


# --------------------------------------------------------------------------- staging

def _backup_as_service(app):
    with app.app_context():
        result = app.test_cli_runner().invoke(args=["backup"])
        return result.exit_code, result.output


def test_roots_restore_leaves_the_uploads_the_service_users(base):
    """``sudo -E guest-registration restore`` staged 0600 files and 0700 folders
    owned by root in the service's upload folder: every later backup failed."""
    instance = base / "instance"
    config = make_config(base, f"sqlite:///{instance / 'db.sqlite'}")
    config.update(BACKUP_FOLDER=str(instance / "backups"), UPLOAD_FOLDER=str(instance / "uploads"))
    app = create_app(config, instance_path=str(instance))
    uploads = Path(config["UPLOAD_FOLDER"])
    with app.app_context():
        from guest_registration.maintenance import setup
        list(setup(app, *ADMIN))
        (uploads / "docs" / "deep").mkdir(parents=True)
        (uploads / "docs" / "deep" / "terms.txt").write_text("terms")
        (uploads / "logo.png").write_bytes(b"logo")
        archive = make_backup(app.test_cli_runner())
        shutil.rmtree(uploads / "docs")
        (uploads / "logo.png").unlink()
        for path in [*instance.rglob("*"), instance]:
            os.lchown(path, NOBODY, NOBODY)
        result = app.test_cli_runner().invoke(args=[  # as root
            "restore", str(archive), "--database-url", f"sqlite:///{base / 'restored.db'}",
            "--yes"])
        assert result.exit_code == 0, result.output
    owners = {p.relative_to(uploads).as_posix(): p.lstat().st_uid for p in uploads.rglob("*")}
    assert owners == {"docs": NOBODY, "docs/deep": NOBODY, "docs/deep/terms.txt": NOBODY,
                      "logo.png": NOBODY}
    outcome, (code, output) = as_nobody(_backup_as_service, app)
    assert (outcome, code) == ("ok", 0), output


@pytest.mark.parametrize("backend", ["sqlite"])
def test_an_upload_with_a_name_of_250_bytes_restores(app, runner, backend, tmp_path):
    name = "y" * 246 + ".pdf"  # legal on ext4/xfs (255); ".NAME.restoring" was not
    (Path(app.config["UPLOAD_FOLDER"]) / name).write_bytes(PDF)
    archive = make_backup(runner)
    out = tmp_path / "restored"
    result = restore(runner, archive, tmp_path, out)
    assert result.exit_code == 0, result.output
    assert (out / name).read_bytes() == PDF
    assert [p.name for p in out.iterdir()] == [name]  # no staging file left
    drill = runner.invoke(args=["restore-test"])  # failed the same way, with no cause
    assert drill.exit_code == 0, drill.output


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_killed_restores_leftovers_stop_no_restore(app, runner, backend, tmp_path):
    (Path(app.config["UPLOAD_FOLDER"]) / "sub").mkdir()
    (Path(app.config["UPLOAD_FOLDER"]) / "sub" / "invoice.pdf").write_bytes(PDF)
    archive = make_backup(runner)
    out = tmp_path / "restored"
    (out / "sub").mkdir(parents=True, mode=0o700)
    old = out / "sub" / ".invoice.pdf.restoring"  # what kill -9 left mid-staging (before)
    old.write_bytes(b"%PDF-1.4")
    stale = out / "sub" / f".r-{dead_pid()}-0123456789abcdef.restoring"  # ours, its restore gone
    stale.write_bytes(b"%PDF-1.4")
    live = out / "sub" / f".r-{os.getppid()}-0123456789abcdef.restoring"  # a restore running
    live.write_bytes(b"%PDF-1.4")
    mine = out / "sub" / ".r-notes.restoring"  # not our naming: someone's own file
    mine.write_bytes(b"notes")
    result = restore(runner, archive, tmp_path, out)
    assert result.exit_code == 0, result.output
    assert (out / "sub" / "invoice.pdf").read_bytes() == PDF
    assert not stale.exists()
    assert old.exists() and live.exists() and mine.exists()


# --------------------------------------------------------------------------- admin deletes

def register(client, trip_id: int, data: bytes, filename: str):
    page = client.get(f"/trips/{trip_id}/register").get_data(as_text=True)
    form = {"csrf_token": csrf_token_from(page), "email": "h@example.com", "language": "en",
            "guests-0-first_name": "A", "guests-0-last_name": "B", "guests-0-age_category": "adult",
            "guests-0-document_type": "passport", "guests-0-document_number": "1",
            "guests-0-gdpr_consent": "y", "guests-0-document_photo": (io.BytesIO(data), filename)}
    return client.post(f"/trips/{trip_id}/register", data=form, content_type="multipart/form-data")


def admin_delete(client, view: str, record_id: int):
    page = client.get(f"/admin/{view}/").get_data(as_text=True)
    return client.post(f"/admin/{view}/delete/", data={"id": str(record_id),
                                                        "csrf_token": csrf_token_from(page)})


def registered_guest(app, client, trip_id: int) -> tuple[int, Path]:
    assert register(client, trip_id, tiny_png(), "passport.png").status_code == 302
    with app.app_context():
        guest = db.session.query(Guest).one()
        return guest.id, Path(app.config["UPLOAD_FOLDER"]) / guest.document_photo


def test_deleting_a_guest_in_the_admin_deletes_the_photo(app, client, auth, trip_id):
    gid, photo = registered_guest(app, client, trip_id)
    assert photo.is_file()
    auth.login()
    assert admin_delete(client, "guest", gid).status_code == 302
    with app.app_context():
        assert db.session.get(Guest, gid) is None
    assert not photo.exists(), f"{photo.name} stays on disk, named by no guest"


def test_deleting_guests_with_the_list_action_deletes_their_photos(app, client, auth, trip_id):
    gid, photo = registered_guest(app, client, trip_id)
    auth.login()
    page = client.get("/admin/guest/").get_data(as_text=True)
    resp = client.post("/admin/guest/action/", data={"action": "delete", "rowid": [str(gid)],
                                                     "csrf_token": csrf_token_from(page)})
    assert resp.status_code == 302
    with app.app_context():
        assert db.session.get(Guest, gid) is None
    assert not photo.exists()


def test_a_photo_another_guest_still_names_is_kept(app, client, auth):
    name = "0b0e6c1e-3c52-4a43-9a6f-2f0f0b1b7d11.png"
    first, second = add_guest_with_photo(app, name), add_guest_with_photo(app, name)
    auth.login()
    assert admin_delete(client, "guest", first).status_code == 302
    assert (Path(app.config["UPLOAD_FOLDER"]) / name).is_file()  # the second guest's
    assert admin_delete(client, "guest", second).status_code == 302
    assert not (Path(app.config["UPLOAD_FOLDER"]) / name).exists()


@pytest.mark.parametrize("view", ["registration", "trip"])
def test_deleting_a_registration_or_trip_leaves_no_photo_of_no_guest(app, client, auth, trip_id,
                                                                       view):
    """Their guests are not deleted with them (the delete is refused while guests
    are there): the guest and its photo remain, and the page says why in plain
    words (it showed the SQL and the guest's row: document number, photo name)."""
    gid, photo = registered_guest(app, client, trip_id)
    with app.app_context():
        record = db.session.query(Registration if view == "registration" else Trip).one().id
    auth.login()
    page = admin_delete(client, view, record)
    assert page.status_code == 302
    text = client.get(page.headers["Location"]).get_data(as_text=True)
    with app.app_context():
        assert db.session.get(Guest, gid) is not None
    assert photo.exists()
    assert "cannot be deleted while other records belong to it" in text, text
    assert "SQL" not in text and photo.name not in text and "Integrity" not in text


def test_a_photo_that_cannot_be_deleted_is_said(app, client, auth, tmp_path):
    outside = tmp_path / "outside.png"  # a row naming a file outside the upload folder
    outside.write_bytes(b"x")
    gid = add_guest_with_photo(app, f"../{outside.name}")
    auth.login()
    page = admin_delete(client, "guest", gid)
    text = client.get(page.headers["Location"]).get_data(as_text=True)
    assert outside.exists()
    assert "1 document photo(s) of the deleted guests could not be deleted" in text, text


# --------------------------------------------------------------------------- file names

def test_a_file_name_with_two_dots_is_not_a_path(app, client, trip_id):
    assert register(client, trip_id, tiny_png(), "Jan..Novak.png").status_code == 302
    with app.app_context():
        assert db.session.query(Guest).count() == 1


@pytest.mark.parametrize("name", ["../passport.png", "a/../b.png", ".."])
def test_a_name_with_a_parent_part_is_still_refused(app, client, trip_id, name):
    resp = register(client, trip_id, tiny_png(), name)
    assert resp.status_code == 400 and "without a path" in resp.get_data(as_text=True)
    with app.app_context():
        assert db.session.query(Guest).count() == 0
