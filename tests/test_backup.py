"""System backup: round trips on PostgreSQL and SQLite with real pg_dump/psql,
verification against tampering, unsafe archives, faults, retention, status."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import zipfile
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from guest_registration.extensions import db
from guest_registration.models import AuditEntry, Guest, Registration, Trip
from guest_backup.archive.format import PHOTO_NAME_RE, list_archives
from guest_backup.wiring import backup_context
from guest_backup.archive.verify import verify_archive
from tests.helpers import make_backup, resign, restore_target, table_contents, trusted_of

AWKWARD = ["O'Brien; DROP TABLE guest; --", 'Quote "q" \\ backslash', "Tab\tand\nnewline\r\n",
           "Žluťoučký kůň 😀", "$$dollar$$", "E'\\x00'", "\\.", "COPY guest FROM stdin;"]


def add_awkward_rows(app) -> None:
    with app.app_context():
        trip = Trip(title=AWKWARD[0], max_guests=9)
        reg = Registration(trip=trip, email="weird@example.com", language="cs")
        db.session.add_all([trip, reg])
        for i, text_ in enumerate(AWKWARD):
            db.session.add(Guest(registration=reg, first_name=text_, last_name=AWKWARD[-1 - i],
                                 age_category="child", document_type="id_card",
                                 document_number=f"X{i}", gdpr_consent=i % 2 == 0,
                                 created_at=datetime(2025, 6, 1, 12, 0, i)))
        db.session.commit()


@pytest.fixture
def source(app, runner):
    """Demo data, awkward text, a photo named only in the database, a file that
    merely looks like a date, and a symlink that must not be followed."""
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    add_awkward_rows(app)
    uploads = Path(app.config["UPLOAD_FOLDER"])
    (uploads / "invoice-2025-06-30.pdf").write_bytes(b"%PDF-1.4 invoice\n%%EOF\n")
    (uploads / "nested" / "deep").mkdir(parents=True)
    (uploads / "nested" / "deep" / "notes 2025.txt").write_bytes(os.urandom(3000))
    (uploads / "legacy-scan.jpg").write_bytes(b"\xff\xd8\xffphoto\xff\xd9")
    (uploads / "0f8fad5b-d9cb-469f-a165-70867728950e_passport_front.jpg").write_bytes(b"old style")
    (uploads / "nested" / "6ba7b810-9dad-11d1-80b4-00c04fd430c8.png").write_bytes(b"photo in sub")
    os.symlink("/etc/passwd", uploads / "link-to-passwd")
    with app.app_context():
        g = db.session.query(Guest).order_by(Guest.id).first()
        g.document_photo = "legacy-scan.jpg"  # a photo whose name is no UUID
        db.session.commit()
    return uploads


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in folder.rglob("*") if p.is_file() and not p.is_symlink()}


def test_round_trip(request, app, runner, source, backend, tmp_path):
    archive = make_backup(runner)
    assert archive.name.startswith("system_backup_") and archive.suffix == ".zip"
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    names = zipfile.ZipFile(archive).namelist()
    # no guest photo: UUID names (both forms, any folder) and names used by guests
    photos = [n for n in names if PHOTO_NAME_RE.match(n.rsplit("/", 1)[-1])]
    assert photos == []
    assert "uploads/legacy-scan.jpg" not in names
    assert "uploads/link-to-passwd" not in names
    for kept in ("uploads/logo.png", "uploads/invoice-2025-06.pdf", "uploads/invoice-2025-06-30.pdf",
                 "uploads/docs/sample images/beach.png", "uploads/nested/deep/notes 2025.txt"):
        assert kept in names, kept
    manifest = json.loads(zipfile.ZipFile(archive).read("manifest.json"))
    uuid_files = [p for p in source.rglob("*") if PHOTO_NAME_RE.match(p.name)]
    assert len(uuid_files) >= 30
    assert manifest["excluded_guest_photos"] == len(uuid_files) + 1  # + legacy-scan.jpg
    assert manifest["database"]["engine"] == backend
    with app.app_context():
        assert manifest["row_counts"]["guest"] == db.session.query(Guest).count() > 54

    target = restore_target(request, backend, tmp_path)
    out_uploads = tmp_path / "restored-uploads"
    result = runner.invoke(args=["restore", str(archive), "--database-url", target,
                                 "--uploads", str(out_uploads), "--yes"])
    assert result.exit_code == 0, result.output
    assert table_contents(app.config["DATABASE_URL"]) == table_contents(target)
    original = {k: v for k, v in files_under(source).items()
                if not PHOTO_NAME_RE.match(k.rsplit("/", 1)[-1]) and k != "legacy-scan.jpg"}
    assert files_under(out_uploads) == original

    # the restored database is usable: sequences continue after the restored ids
    engine = sa.create_engine(target)
    with engine.begin() as conn:
        reg_id = conn.execute(sa.text("SELECT min(id) FROM registration")).scalar_one()
        conn.execute(sa.text(
            "INSERT INTO guest (registration_id, first_name, last_name, age_category, "
            "document_type, document_number) VALUES (:r, 'New', 'Guest', 'adult', 'passport', 'N1')"),
            {"r": reg_id})
    engine.dispose()


@pytest.mark.parametrize("backend", ["postgresql"])
def test_plain_psql_restores_the_dump(app, runner, source, backend, tmp_path, new_pg_database):
    """The document's own command works on an unzipped archive, with ON_ERROR_STOP."""
    archive = make_backup(runner)
    zipfile.ZipFile(archive).extract("database.sql", tmp_path)
    target = new_pg_database()
    url = sa.engine.make_url(target)
    proc = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", url.host,
                           "-p", str(url.port or 5432), "-U", url.username, "-d", url.database,
                           "-f", str(tmp_path / "database.sql")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert table_contents(app.config["DATABASE_URL"]) == table_contents(target)


@pytest.fixture
def archive(app, runner, source) -> Path:
    return make_backup(runner)


def rewrite(archive: Path, dest: Path, change) -> Path:
    """Copy an archive member by member, letting ``change(name, data)`` alter or drop them."""
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as out:
        for info in src.infolist():
            result = change(info.filename, src.read(info))
            if result is not None:
                name, data = result
                out.writestr(name, data)
    return dest


@pytest.mark.parametrize("member", ["database.sql", "uploads/logo.png", "manifest.json"])
def test_verify_catches_a_flipped_byte(app, archive, tmp_path, member):
    def flip(name, data):
        if name == member:
            i = len(data) // 2
            data = data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:]
        return name, data

    bad = rewrite(archive, tmp_path / "flipped.zip", flip)
    report = verify_archive(bad, backup_context(app).engines, trusted_of(app))
    assert not report.ok and report.problems


def test_verify_catches_a_flipped_byte_in_the_raw_file(app, runner, archive, tmp_path):
    data = bytearray(archive.read_bytes())
    data[len(data) // 3] ^= 0xFF
    bad = tmp_path / "raw.zip"
    bad.write_bytes(bytes(data))
    result = runner.invoke(args=["verify", str(bad)])
    assert result.exit_code == 1 and "did not verify" in result.output


def test_verify_catches_a_missing_member_and_a_truncated_dump(app, runner, archive, tmp_path):
    missing = rewrite(archive, tmp_path / "missing.zip",
                      lambda n, d: None if n == "uploads/logo.png" else (n, d))
    result = runner.invoke(args=["verify", str(missing)])
    assert result.exit_code == 1 and "uploads/logo.png is listed in the manifest but missing" in result.output

    cut_dump = zipfile.ZipFile(archive).read("database.sql")
    cut_dump = cut_dump[: len(cut_dump) * 2 // 3]
    def consistent(name, data):
        if name == "database.sql":
            return name, cut_dump
        if name == "manifest.json":
            m = json.loads(data)
            m["members"]["database.sql"] = {"size": len(cut_dump),
                                            "sha256": hashlib.sha256(cut_dump).hexdigest()}
            return name, json.dumps(m)
        return name, data

    truncated = resign(app, rewrite(archive, tmp_path / "truncated.zip", consistent))
    result = runner.invoke(args=["verify", str(truncated)])
    assert result.exit_code == 1 and re.search(
        r"database\.sql(:| is) .*(incomplete|ends in the middle|ends inside)", result.output)
    ok = runner.invoke(args=["verify", str(archive)])
    assert ok.exit_code == 0 and ok.output.startswith("OK ")


@pytest.mark.parametrize("evil", ["../evil.txt", "/tmp/evil.txt", "uploads/../../evil.txt",
                                  "uploads/a/../../../evil.txt"])
def test_restore_refuses_unsafe_member_names_and_writes_nothing(request, app, runner, archive,
                                                                 backend, tmp_path, evil):
    bad = rewrite(archive, tmp_path / "evil.zip", lambda n, d: (n, d))
    with zipfile.ZipFile(bad, "a") as zf:
        zf.writestr(evil, b"pwned")
    target = restore_target(request, backend, tmp_path)
    out_uploads = tmp_path / "out"
    result = runner.invoke(args=["restore", str(bad), "--database-url", target,
                                 "--uploads", str(out_uploads), "--yes"])
    assert result.exit_code == 1 and "did not verify" in result.output
    assert not out_uploads.exists()
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()
    assert table_contents(target) == {}


def test_restore_refuses_a_non_empty_target_unless_replace(request, app, runner, archive,
                                                           backend, tmp_path):
    target = restore_target(request, backend, tmp_path)
    args = ["restore", str(archive), "--database-url", target, "--uploads", str(tmp_path / "u"),
            "--yes"]
    assert runner.invoke(args=args).exit_code == 0
    again = runner.invoke(args=args)
    assert again.exit_code == 1 and "not empty" in again.output
    replaced = runner.invoke(args=args + ["--replace"])
    assert replaced.exit_code == 0, replaced.output
    assert table_contents(app.config["DATABASE_URL"]) == table_contents(target)


def test_restore_leaves_existing_guest_photos_alone(request, app, runner, archive, backend,
                                                    tmp_path):
    out = tmp_path / "uploads-with-photos"
    out.mkdir()
    photo = out / "2c3d4e5f-1111-4222-8333-444455556666.png"
    photo.write_bytes(b"existing photo")
    target = restore_target(request, backend, tmp_path)
    result = runner.invoke(args=["restore", str(archive), "--database-url", target,
                                 "--uploads", str(out), "--yes"])
    assert result.exit_code == 0, result.output
    assert photo.read_bytes() == b"existing photo"
    assert (out / "logo.png").exists()


def no_leftovers(app) -> None:
    folder = Path(app.config["BACKUP_FOLDER"])
    left = [p.name for p in folder.iterdir() if p.name != ".backup.lock"] if folder.exists() else []
    assert left == [], left


@pytest.mark.parametrize("backend", ["postgresql"])
def test_pg_dump_missing(app_config, backend, tmp_path, request):
    app_config["PG_DUMP"] = str(tmp_path / "no-such-pg_dump")
    app = request.getfixturevalue("app")
    result = app.test_cli_runner().invoke(args=["backup"])
    assert result.exit_code == 1
    assert "pg_dump not found" in result.output
    no_leftovers(app)
    with app.app_context():
        entry = db.session.query(AuditEntry).order_by(AuditEntry.id.desc()).first()
        assert entry.action == "backup" and entry.outcome == "failed"


def fake_pg_dump(tmp_path: Path, body: str) -> str:
    path = tmp_path / "fake_pg_dump"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize("backend", ["postgresql"])
def test_pg_dump_failing_halfway(app_config, backend, tmp_path, request):
    real = shutil.which("pg_dump")
    # the real pg_dump, cut off after 2 KB, then a failure with noisy stderr
    app_config["PG_DUMP"] = fake_pg_dump(tmp_path, f'''
case "$1" in --version) exec {real} --version;; esac
{real} "$@" | head -c 2048
echo "pg_dump: error: connection lost; secret=hunter2" >&2
exit 1
''')
    app = request.getfixturevalue("app")
    result = app.test_cli_runner().invoke(args=["backup"])
    assert result.exit_code == 1
    assert "pg_dump failed" in result.output
    assert "hunter2" not in result.output and "connection lost" not in result.output
    no_leftovers(app)


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_backup_asks_pg_dump_its_version_once(app_config, backend, tmp_path, request):
    """Checked before the snapshot and again as the dump starts: the second check
    reuses the version (each ``--version`` run is 0.03-0.09 s on the way to the
    dump); a second backup within the minute asks none."""
    real, calls = shutil.which("pg_dump"), tmp_path / "calls"
    app_config["PG_DUMP"] = fake_pg_dump(tmp_path, f'echo "$1" >> {calls}\nexec {real} "$@"\n')
    app = request.getfixturevalue("app")
    for _ in range(2):
        result = app.test_cli_runner().invoke(args=["backup"])
        assert result.exit_code == 0, result.output
    assert calls.read_text().split() == ["--version", "--format=plain", "--format=plain"]


@pytest.mark.parametrize("backend", ["postgresql"])
def test_wrong_database_login(app_config, backend, tmp_path, request, pg_database):
    """The server trusts local connections, so a wrong password cannot be shown
    here; an unknown role fails the same way (libpq refuses the login)."""
    url = sa.engine.make_url(pg_database).set(username="nobody_here", password="S3cret-pw")
    app = request.getfixturevalue("app")
    app.config["DATABASE_URL"] = url.render_as_string(hide_password=False)
    result = app.test_cli_runner().invoke(args=["backup"])
    assert result.exit_code == 1
    assert "S3cret-pw" not in result.output
    assert "could not" in result.output or "database could not be read" in result.output
    no_leftovers(app)


def test_unwritable_backup_folder(app, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    app.config["BACKUP_FOLDER"] = str(blocker / "backups")
    result = app.test_cli_runner().invoke(args=["backup"])
    assert result.exit_code == 1
    assert "backup folder" in result.output and "cannot be created" in result.output


def test_output_and_keep(app, runner, source, tmp_path):
    out = tmp_path / "elsewhere" / "my.zip"
    out.parent.mkdir()
    assert make_backup(runner, "--output", str(out)) == out
    made = [make_backup(runner) for _ in range(3)]
    assert len(set(made)) == 3
    newest = make_backup(runner, "--keep", "2")
    names = [a.name for a in list_archives(app.config["BACKUP_FOLDER"])]
    assert names[0] == newest.name and len(names) == 2
    listing = runner.invoke(args=["backup-list"]).output.splitlines()
    assert [line.split()[0] for line in listing] == names
    status = runner.invoke(args=["status"]).output
    assert f"newest backup: {newest.name}" in status and "backup dump tool" in status


def test_backup_is_audited(app, runner, source):
    path = make_backup(runner)
    with app.app_context():
        entry = db.session.query(AuditEntry).filter_by(action="backup").one()
        assert entry.outcome == "ok" and entry.target == path.name and entry.bytes == path.stat().st_size
