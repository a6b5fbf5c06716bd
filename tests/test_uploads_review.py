"""What a system backup takes from the upload folder (review r4): never the backup
folder or the instance folder, never a copy of a guest photo, not stopped by many
uploads or by one deleted meanwhile, and what it leaves out is said."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest

from guest_backup.archive import format as archive_format
from guest_backup.archive.manifest import member_problem
from guest_registration import create_app
from tests.helpers import ADMIN, make_backup, make_config
from tests.test_root_runs import NOBODY, as_nobody, base  # noqa: F401 (fixture)

U = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
SQLITE = pytest.mark.parametrize("backend", ["sqlite"])


def uploads_of(archive: Path) -> list[str]:
    return [n for n in zipfile.ZipFile(archive).namelist() if n.startswith("uploads/")]


def manifest_of(archive: Path) -> dict:
    return json.loads(zipfile.ZipFile(archive).read("manifest.json"))


# ------------------------------------------------------------ 1. overlapping folders

@pytest.mark.parametrize("where", ["backups inside uploads", "uploads inside backups",
                                   "uploads = instance", "uploads hold the instance"])
@SQLITE
def test_overlapping_folders_are_refused_by_status_and_backup(app, runner, backend, where,
                                                              tmp_path):
    uploads, instance = Path(app.config["UPLOAD_FOLDER"]), Path(app.instance_path)
    if where == "backups inside uploads":
        app.config["BACKUP_FOLDER"] = str(uploads / "backups")
    elif where == "uploads inside backups":
        app.config["UPLOAD_FOLDER"] = str(Path(app.config["BACKUP_FOLDER"]) / "uploads")
    elif where == "uploads = instance":
        app.config["UPLOAD_FOLDER"] = str(instance)
    else:
        app.config["UPLOAD_FOLDER"] = str(tmp_path)
    before = sorted(p.name for p in Path(app.config["BACKUP_FOLDER"]).glob("*"))
    status = runner.invoke(args=["status"])
    assert status.exit_code == 1, status.output
    assert "[FAIL] backup upload folder" in status.output, status.output
    result = runner.invoke(args=["backup"])
    assert result.exit_code == 1, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "UPLOAD_FOLDER" in result.output and "no backup was made" in result.output
    assert sorted(p.name for p in Path(app.config["BACKUP_FOLDER"]).glob("*")) == before


@SQLITE
def test_the_walk_skips_the_archive_being_written_and_earlier_ones(app, backend):
    """Every backup (the page's and the worker's too) is refused with such folders,
    audited as failed; below that refusal, the walk itself leaves out the folder the
    archive is written to, the instance folder and any .partial."""
    from guest_backup.errors import BackupError
    from guest_backup.ops.create import create_backup
    from guest_backup.ops.pipeline import run_backup
    from guest_backup.ops.uploads import protected_paths
    from guest_backup.wiring import backup_context
    from guest_registration.extensions import database_engine

    uploads = Path(app.config["UPLOAD_FOLDER"])
    app.config["BACKUP_FOLDER"] = str(uploads / "backups")
    (uploads / "logo.png").write_bytes(b"logo")
    (uploads / "x.zip.partial").write_bytes(b"half")
    (uploads / ".r-4242-0123456789abcdef.restoring").write_bytes(b"half an upload")
    with app.app_context():
        ctx = backup_context(app)
        with pytest.raises(BackupError, match="no backup was made"):
            run_backup(ctx, database_engine(), actor=None, via="admin")
        entries = ctx.audit.recent(database_engine(), action="backup")
        assert [e["outcome"] for e in entries] == ["failed"]
        made = []
        for _ in range(2):
            lock = ctx.lock().acquire()
            try:
                made.append(create_backup(
                    database_engine(), ctx.engine_for("sqlite"), ctx.settings, lock=lock,
                    audit=ctx.audit, via="admin",
                    skip=protected_paths(ctx.settings, ctx.instance_path)).path)
            finally:
                lock.release()
    assert uploads_of(made[1]) == ["uploads/logo.png"]


# ------------------------------------------------------------ 2. copies of a photo

@SQLITE
def test_copies_of_a_guest_photo_stay_out_of_the_archive(app, runner, backend):
    up = Path(app.config["UPLOAD_FOLDER"])
    photo = up / f"{U}.jpg"
    photo.write_bytes(b"\xff\xd8\xffpassport\xff\xd9")
    for name in (f"{U}.jpg~", f"{U}.jpg.~1~", f"{U}.jpg.bak", f"{U} (1).jpg",
                 f"copy of {U}.jpg"):
        (up / name).write_bytes(photo.read_bytes())
    os.link(photo, up / "a-passport-novak.jpg")  # the same inode, listed before the photo
    (up / "invoice.pdf").write_bytes(b"%PDF")
    archive = make_backup(runner)
    assert uploads_of(archive) == ["uploads/invoice.pdf"]
    assert manifest_of(archive)["excluded_guest_photos"] == 7


@pytest.mark.parametrize("name", [f"{U}.jpg", f"sub/{U}.png", f".tmp-{U}.jpg", f"{U}_old"])
def test_an_archive_member_named_as_a_guest_photo_is_refused(name):
    assert "guest-photo name" in member_problem(zipfile.ZipInfo("uploads/" + name))


@SQLITE
def test_an_older_archive_holding_a_photo_copy_restores_without_it(app, runner, backend,
                                                                  monkeypatch, tmp_path):
    """Archives made before copies were left out may hold ``<uuid>.jpg~``: refusing
    such a member refused the whole archive, database and all; it is left out."""
    from guest_backup.ops import uploads as uploads_module

    up = Path(app.config["UPLOAD_FOLDER"])
    (up / f"{U}.jpg~").write_bytes(b"\xff\xd8\xffpassport\xff\xd9")
    (up / "invoice.pdf").write_bytes(b"%PDF")
    monkeypatch.setattr(uploads_module, "PHOTO_NAME_RE", archive_format.PHOTO_MEMBER_RE)
    archive = make_backup(runner)  # as the writer before did: the copy went in
    monkeypatch.undo()
    assert sorted(uploads_of(archive)) == [f"uploads/{U}.jpg~", "uploads/invoice.pdf"]
    assert member_problem(zipfile.ZipInfo(f"uploads/{U}.jpg~")) is None
    assert runner.invoke(args=["verify", str(archive)]).exit_code == 0
    target, restored = f"sqlite:///{tmp_path / 'target.db'}", tmp_path / "restored"
    result = runner.invoke(args=["restore", str(archive), "--database-url", target,
                                 "--uploads", str(restored), "--yes"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in restored.iterdir()) == ["invoice.pdf"]


def test_ordinary_names_are_no_photos():
    for name in ("invoice-2025-06.pdf", "3f2504e0.jpg", "scan_0305e82c3301.png"):
        assert member_problem(zipfile.ZipInfo("uploads/" + name)) is None


# ------------------------------------------------------------ 3. many uploads

@SQLITE
def test_ten_thousand_ordinary_uploads_do_not_stop_every_backup(app, runner, backend):
    thumbs = Path(app.config["UPLOAD_FOLDER"]) / "thumbs"
    thumbs.mkdir()
    for i in range(10_000):
        (thumbs / f"t{i}.txt").write_bytes(b"t")
    archive = make_backup(runner)
    assert len(uploads_of(archive)) == 10_000
    assert runner.invoke(args=["verify", str(archive)]).exit_code == 0


@SQLITE
def test_status_warns_when_the_uploads_near_what_an_archive_holds(app, runner, backend,
                                                                  monkeypatch):
    monkeypatch.setattr(archive_format, "MAX_MEMBERS", 100)  # the real one: 200,000 files
    up = Path(app.config["UPLOAD_FOLDER"])
    for i in range(79):
        (up / f"f{i}.txt").write_bytes(b"f")
    assert "WARNING" not in runner.invoke(args=["status"]).output
    (up / "f79.txt").write_bytes(b"f")
    status = runner.invoke(args=["status"]).output
    assert "[ok  ] backup upload folder: 80 files: WARNING an archive holds at most 97 " \
           "uploads" in status, status


# ------------------------------------------------------------ 4. deleted meanwhile

@SQLITE
def test_an_upload_deleted_during_the_backup_does_not_fail_it(app, runner, backend, monkeypatch):
    up = Path(app.config["UPLOAD_FOLDER"])
    (up / "invoice.pdf").write_bytes(b"x")
    (up / "old-menu.pdf").write_bytes(b"y")
    import guest_backup.ops.uploads as uploads
    real = uploads._photo_names_in_db

    def admin_deletes_a_file(conn, names):  # after the folder was listed, before it is read
        (up / "old-menu.pdf").unlink(missing_ok=True)
        return real(conn, names)

    monkeypatch.setattr(uploads, "_photo_names_in_db", admin_deletes_a_file)
    result = runner.invoke(args=["backup"])
    assert result.exit_code == 0, result.output
    assert "1 upload(s) left out of the archive: gone while the backup ran" in result.output
    archive = Path(result.output.strip().splitlines()[-1])
    assert uploads_of(archive) == ["uploads/invoice.pdf"]


# ------------------------------------------------------------ 5. left out, and said

@SQLITE
def test_uploads_left_out_are_said_on_the_backups_output(app, runner, backend):
    up = Path(app.config["UPLOAD_FOLDER"])
    (up / "smlouva\\2025.pdf").write_bytes(b"x")
    with open(os.fsencode(up) + b"/caf\xe9.txt", "wb") as fh:  # Latin-1 name from an old scp
        fh.write(b"y")
    result = runner.invoke(args=["backup"])
    assert result.exit_code == 0, result.output
    assert "2 upload(s) left out of the archive: a name a restore cannot write " \
           "back" in result.output, result.output
    archive = Path(result.output.strip().splitlines()[-1])
    assert manifest_of(archive)["left_out_uploads"] == {"unrestorable_name": 2}
    assert runner.invoke(args=["verify", str(archive)]).exit_code == 0


def _backup_as_service(app):
    with app.app_context():
        result = app.test_cli_runner().invoke(args=["backup"])
        return result.exit_code, result.output


def test_a_subfolder_the_service_cannot_list_is_said(base):  # noqa: F811
    config = make_config(base, f"sqlite:///{base / 'instance' / 'db.sqlite'}")
    config["BACKUP_FOLDER"] = str(base / "backups")
    config["UPLOAD_FOLDER"] = str(base / "uploads")
    app = create_app(config, instance_path=str(base / "instance"))
    uploads = Path(config["UPLOAD_FOLDER"])
    with app.app_context():
        from guest_registration.maintenance import setup
        list(setup(app, *ADMIN))
        warm = app.test_cli_runner().invoke(args=["backup"])  # imports what a backup needs
        assert warm.exit_code == 0, warm.output
        Path(warm.output.strip().splitlines()[-1]).unlink()
    (uploads / "contracts").mkdir(mode=0o700)
    (uploads / "contracts" / "2025.pdf").write_bytes(b"%PDF-1.4\n%%EOF\n")
    (uploads / "logo.png").write_bytes(b"logo")
    for folder in ("instance", "backups", "uploads"):
        for path in [*(base / folder).rglob("*"), base / folder]:
            os.lchown(path, NOBODY, NOBODY)
    os.lchown(uploads / "contracts", 0, 0)  # e.g. made by root (a root restore, scp as root)
    code, output = as_nobody(_backup_as_service, app)[1]
    assert code == 0, output
    assert "1 folder(s) left out of the archive: this user cannot list them" in output, output
    archive = Path(output.strip().splitlines()[-1])
    assert uploads_of(archive) == ["uploads/logo.png"]
    assert manifest_of(archive)["left_out_uploads"] == {"unlistable_folder": 1}
