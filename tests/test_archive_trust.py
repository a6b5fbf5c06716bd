"""Archives you can trust, tried as an attacker with write access to the backup
folder would: forged dumps and members (with recomputed manifest hashes, and
even re-signed with a stolen key), foreign keys, encryption to age recipients,
an atomic --replace, and targets that do not exist."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tempfile
import uuid
import zipfile
from pathlib import Path

import pytest
import sqlalchemy as sa

from guest_registration import create_app
from guest_registration.extensions import db
from guest_registration.models import Guest
from guest_backup.wiring import backup_context
from guest_backup.engines.postgresql import PostgresEngine
from guest_backup.engines.sqlitescreen import _authorizer
from guest_backup.errors import EngineError
from tests.helpers import make_backup, make_config, missing, restore_target, table_contents

DOCUMENT_NUMBER = "XK-SECRET-4711"


@pytest.fixture
def archive(app, runner) -> Path:
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    with app.app_context():
        db.session.query(Guest).order_by(Guest.id).first().document_number = DOCUMENT_NUMBER
        db.session.commit()
    return make_backup(runner)


def forge(app, source: Path, dest: Path, *, dump=None, add=(), sign: bool = False) -> Path:
    """What an attacker with write access does: change ``database.sql`` (``dump(old)``)
    and add members, then recompute the manifest's sizes and hashes. The old
    signature stays, unless ``sign`` (the attacker also stole the signing key)."""
    with zipfile.ZipFile(source) as src:
        members = {i.filename: src.read(i) for i in src.infolist()}
    if dump is not None:
        members["database.sql"] = dump(members["database.sql"])
    members.update(dict(add))
    manifest = json.loads(members["manifest.json"])
    manifest["members"] = {name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                           for name, data in members.items()
                           if name not in ("manifest.json", "manifest.sig")}
    members["manifest.json"] = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    if sign:
        members["manifest.sig"] = backup_context(app).settings.signer().sign_manifest(
            members["manifest.json"])
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as out:
        for name, data in members.items():
            out.writestr(name, data)
    return dest


def after_first_line(extra: bytes):
    return lambda dump: dump.replace(b"\n", b"\n" + extra, 1)


def marker() -> Path:
    return Path("/tmp") / f"gr-pwned-{uuid.uuid4().hex}"


def restore(runner, archive: Path, target: str, uploads: Path, *extra: str):
    return runner.invoke(args=["restore", str(archive), "--database-url", target,
                               "--uploads", str(uploads), "--yes", *extra])


def attacks(flag: Path) -> dict:
    return {
        "meta-command": dict(dump=lambda d: f"\\! touch {flag}\n".encode() + d),
        "copy-to-program": dict(dump=after_first_line(
            f"COPY (SELECT 1) TO PROGRAM 'touch {flag}';\n".encode())),
        "photo-member": dict(add=[("uploads/2c3d4e5f-1111-4222-8333-444455556666.pdf",
                                   b"%PDF-1.4 replaced photo\n%%EOF\n")]),
    }


@pytest.mark.parametrize("signed", [False, True], ids=["forged", "forged-and-resigned"])
@pytest.mark.parametrize("kind", ["meta-command", "copy-to-program", "photo-member"])
@pytest.mark.parametrize("backend", ["postgresql"])
def test_forged_postgresql_archives_are_refused(request, app, runner, archive, backend, tmp_path,
                                                kind, signed):
    flag = marker()
    bad = forge(app, archive, tmp_path / "system_backup_20250101_000000.zip",
                sign=signed, **attacks(flag)[kind])
    verified = runner.invoke(args=["verify", str(bad)])
    assert verified.exit_code == 1
    expected = {"meta-command": "psql meta-command", "copy-to-program": "COPY that is not",
                "photo-member": "has a guest-photo name"}[kind]
    if not signed and kind != "photo-member":  # a photo name is refused before the signature
        expected = "signature does not match"
    assert expected in verified.output
    target, uploads = restore_target(request, backend, tmp_path), tmp_path / "uploads-out"
    restored = restore(runner, bad, target, uploads)
    assert restored.exit_code == 1 and expected in restored.output
    assert "Traceback" not in restored.output
    assert not flag.exists()
    assert table_contents(target) == {} and not uploads.exists()


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("signed", [False, True], ids=["forged", "forged-and-resigned"])
def test_forged_sqlite_archive_cannot_attach_files(app, runner, archive, backend, tmp_path,
                                                   signed):
    outside = tmp_path / "outside.db"
    bad = forge(app, archive, tmp_path / "system_backup_20250101_000000.zip", sign=signed,
                dump=after_first_line(f"ATTACH DATABASE '{outside}' AS evil;\n"
                                      f"CREATE TABLE evil.t(a);\n".encode()))
    verified = runner.invoke(args=["verify", str(bad)])
    assert verified.exit_code == 1
    target = tmp_path / "restored.db"
    restored = restore(runner, bad, f"sqlite:///{target}", tmp_path / "u")
    assert restored.exit_code == 1 and "Traceback" not in restored.output
    assert not outside.exists() and not target.exists() and not (tmp_path / "u").exists()


def test_the_sqlite_authorizer_denies_attach_and_extensions(tmp_path):
    import sqlite3

    con = sqlite3.connect(tmp_path / "new.db")
    con.set_authorizer(_authorizer)
    for statement in (f"ATTACH DATABASE '{tmp_path / 'x.db'}' AS x",
                      "SELECT load_extension('/tmp/evil.so')",
                      "PRAGMA temp_store_directory = '/tmp'"):
        with pytest.raises(sqlite3.DatabaseError, match="not authorized|prohibited"):
            con.execute(statement)
    con.execute("CREATE TABLE ok(a)")
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize("backend", ["postgresql"])
def test_the_load_screens_what_psql_gets_even_after_verify(app, backend, new_pg_database,
                                                           tmp_path):
    """The archive may change between verify and load: the load screens again and
    psql never receives the refused line."""
    flag, target = marker(), new_pg_database()
    settings = backup_context(app).settings.engine_settings
    dump = b"CREATE TABLE public.t (a integer);\n" + f"\\! touch {flag}\n".encode()
    with pytest.raises(EngineError, match="meta-command"):
        PostgresEngine().restore(settings, target, io.BytesIO(dump))
    assert not flag.exists() and table_contents(target) == {}


def test_a_fresh_instance_trusts_only_keys_it_is_given(request, app, runner, archive, backend,
                                                       tmp_path):
    key = runner.invoke(args=["backup-key"]).output.strip().splitlines()[-1]
    assert key.startswith("ed25519:")
    other = create_app(make_config(tmp_path / "other", app.config["DATABASE_URL"]),
                       instance_path=str(tmp_path / "other-instance"))
    other_runner = other.test_cli_runner()
    assert other_runner.invoke(args=["backup-key"]).output.strip().splitlines()[-1] != key
    target, uploads = restore_target(request, backend, tmp_path), tmp_path / "u"
    refused = restore(other_runner, archive, target, uploads)
    assert refused.exit_code == 1 and "signed by an unknown key" in refused.output
    assert other_runner.invoke(args=["verify", str(archive)]).exit_code == 1
    assert table_contents(target) == {}
    ok = restore(other_runner, archive, target, uploads, "--trusted-key", key)
    assert ok.exit_code == 0, ok.output
    assert table_contents(target) == table_contents(app.config["DATABASE_URL"])
    # BACKUP_TRUSTED_KEYS trusts the key (an older key of this installation, after a
    # rotation), but an archive of ANOTHER installation needs the key given explicitly
    by_setting = create_app(make_config(tmp_path / "third", app.config["DATABASE_URL"],
                                        BACKUP_TRUSTED_KEYS=[key]),
                            instance_path=str(tmp_path / "third-instance"))
    third = by_setting.test_cli_runner()
    foreign = third.invoke(args=["verify", str(archive)])
    assert foreign.exit_code == 1 and "comes from another installation" in foreign.output
    assert third.invoke(args=["verify", str(archive), "--trusted-key", key]).exit_code == 0
    bad_key = other_runner.invoke(args=["verify", str(archive), "--trusted-key", "nonsense"])
    assert bad_key.exit_code == 1 and "is not a public key" in bad_key.output


def test_unsigned_archives_need_allow_unsigned_and_are_audited(request, app, runner, archive,
                                                               backend, tmp_path):
    unsigned = tmp_path / "system_backup_20240101_000000.zip"
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(unsigned, "w") as out:
        for info in src.infolist():
            if info.filename != "manifest.sig":
                out.writestr(info, src.read(info))
    target = restore_target(request, backend, tmp_path)
    refused = restore(runner, unsigned, target, tmp_path / "u")
    assert refused.exit_code == 1 and "unsigned" in refused.output
    ok = restore(runner, unsigned, target, tmp_path / "u", "--allow-unsigned")
    assert ok.exit_code == 0, ok.output
    assert "UNSIGNED" in ok.output
    from guest_registration.models import AuditEntry

    with app.app_context():
        last = db.session.query(AuditEntry).filter_by(action="restore").order_by(
            AuditEntry.id.desc()).first()
        assert last.outcome == "ok" and "UNSIGNED" in last.message


def psql_wrapper(tmp_path: Path, filter_command: str) -> str:
    wrapper = tmp_path / "psql-wrapper"
    wrapper.write_text(f"#!/bin/sh\n{filter_command} | exec {shutil.which('psql')} \"$@\"\n")
    wrapper.chmod(0o755)
    return str(wrapper)


@pytest.mark.parametrize("backend", ["postgresql"])
@pytest.mark.parametrize("failure", ["sql-error", "input-cut-short"])
def test_a_failed_replace_leaves_the_target_as_it_was(app, runner, archive, backend, tmp_path,
                                                      new_pg_database, failure):
    target = new_pg_database()
    assert restore(runner, archive, target, tmp_path / "u").exit_code == 0
    engine = sa.create_engine(target)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO trip (title, max_guests) VALUES ('only in target', 2)"))
    engine.dispose()
    before = table_contents(target)
    app.config["PSQL"] = psql_wrapper(tmp_path, {
        "sql-error": "sed 's/^COPY public.guest /COPY public.no_such_table /'",
        "input-cut-short": "head -c 20000",
    }[failure])
    result = restore(runner, archive, target, tmp_path / "u", "--replace")
    assert result.exit_code == 1
    assert "nothing was restored, the target database is as it was" in result.output
    assert "Traceback" not in result.output
    assert table_contents(target) == before


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_failed_sqlite_replace_leaves_the_target_as_it_was(app, runner, archive, backend,
                                                             tmp_path):
    target = f"sqlite:///{tmp_path / 'target.db'}"
    assert restore(runner, archive, target, tmp_path / "u").exit_code == 0
    before = table_contents(target)
    (tmp_path / "forged").mkdir()
    failing = forge(app, archive, tmp_path / "forged" / archive.name, sign=True,
                    dump=after_first_line(b'INSERT INTO "no_such_table" VALUES(1);\n'))
    result = restore(runner, failing, target, tmp_path / "u", "--replace")
    assert result.exit_code == 1 and "nothing was restored" in result.output
    assert table_contents(target) == before


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_missing_target_database_is_created_or_named(app, runner, archive, backend, pg_server,
                                                       tmp_path):
    name = f"gr_missing_{uuid.uuid4().hex[:8]}"
    target = sa.engine.make_url(pg_server).set(database=name).render_as_string(
        hide_password=False)
    admin = sa.create_engine(pg_server, isolation_level="AUTOCOMMIT")
    role = f"gr_nocreate_{uuid.uuid4().hex[:6]}"
    try:
        ok = restore(runner, archive, target, tmp_path / "u")
        assert ok.exit_code == 0, ok.output
        assert table_contents(target) == table_contents(app.config["DATABASE_URL"])
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE ROLE "{role}" LOGIN NOCREATEDB'))
        other = sa.engine.make_url(target).set(username=role, database=name + "_2")
        refused = restore(runner, archive, other.render_as_string(hide_password=False),
                          tmp_path / "u")
        assert refused.exit_code == 1
        assert (f"does not exist and the role {role} may not create it: create it first, "
                f"or as a superuser: ALTER ROLE \"{role}\" CREATEDB") in refused.output
        assert "Traceback" not in refused.output and len(refused.output.splitlines()) == 1
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(sa.text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()


def test_uploads_never_overwrite_existing_files(request, app, runner, archive, backend, tmp_path):
    out = tmp_path / "uploads-out"
    out.mkdir()
    (out / "logo.png").write_bytes(b"the operator's newer logo")
    result = restore(runner, archive, restore_target(request, backend, tmp_path), out)
    assert result.exit_code == 0, result.output
    assert (out / "logo.png").read_bytes() == b"the operator's newer logo"
    assert "1 existing files kept as they were" in result.output
    assert (out / "invoice-2025-06.pdf").exists()


# --- encryption to age recipients ------------------------------------------------------

def age_cli() -> str:
    path = shutil.which("age")
    if path is None:
        missing("REQUIRE_AGE_CLI", "the age CLI is missing (apt-get install age)")
    return path


@pytest.fixture
def identity(tmp_path) -> tuple[Path, str]:
    """An operator's age identity kept off the server (here: a folder of the test)."""
    from pyrage import x25519

    key = x25519.Identity.generate()
    offline = tmp_path / "offline"
    offline.mkdir()
    path = offline / "key.txt"
    path.write_text(f"# offline recovery key\n{key}\n")
    return path, str(key.to_public())


@pytest.fixture
def encrypted(app_config, identity, tmp_path):
    app_config["BACKUP_AGE_RECIPIENTS"] = [identity[1]]
    return app_config


def test_encrypted_archive_round_trip(request, encrypted, app, runner, archive, backend,
                                      identity, tmp_path, monkeypatch):
    key_file, recipient = identity
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where decrypted copies go
    assert archive.name.endswith(".zip.age") and (archive.parent / (archive.name + ".sig")).exists()
    ciphertext = archive.read_bytes()
    assert ciphertext.startswith(b"age-encryption.org/v1\n")
    assert DOCUMENT_NUMBER.encode() not in ciphertext and b"PRAGMA" not in ciphertext
    plain = subprocess.run([age_cli(), "-d", "-i", str(key_file), str(archive)],
                           capture_output=True, check=True).stdout
    with zipfile.ZipFile(io.BytesIO(plain)) as zf:
        assert zf.testzip() is None
        assert {"database.sql", "manifest.json", "manifest.sig"} <= set(zf.namelist())
        assert DOCUMENT_NUMBER.encode() in zf.read("database.sql")
    # the server holds no identity: not in its folders, not in its config
    for folder in (app.instance_path, app.config["BACKUP_FOLDER"], app.config["UPLOAD_FOLDER"]):
        for path in Path(folder).rglob("*"):
            if path.is_file():
                assert b"AGE-SECRET-KEY" not in path.read_bytes(), path
    assert "AGE-SECRET-KEY" not in repr(dict(app.config))

    skipped = runner.invoke(args=["verify", str(archive)])
    assert skipped.exit_code == 0 and "decryption skipped" in skipped.output
    full = runner.invoke(args=["verify", str(archive), "--identity", str(key_file)])
    assert full.exit_code == 0 and "dump complete and clean" in full.output
    target, uploads = restore_target(request, backend, tmp_path), tmp_path / "u"
    refused = restore(runner, archive, target, uploads)
    assert refused.exit_code == 1 and "give --identity" in refused.output
    assert table_contents(target) == {}
    ok = restore(runner, archive, target, uploads, "--identity", str(key_file))
    assert ok.exit_code == 0, ok.output
    assert table_contents(target) == table_contents(app.config["DATABASE_URL"])
    assert (uploads / "logo.png").exists()
    assert list(scratch.iterdir()) == []  # the decrypted copies are gone


def test_forged_then_reencrypted_archive_is_refused(request, encrypted, app, runner, archive,
                                                    backend, identity, tmp_path):
    from pyrage import decrypt, encrypt, x25519

    key_file, recipient = identity
    key = x25519.Identity.from_str(key_file.read_text().split()[-1])
    plain = tmp_path / "plain.zip"
    plain.write_bytes(decrypt(archive.read_bytes(), [key]))
    flag = marker()
    forged = forge(app, plain, tmp_path / "forged.zip",
                   dump=lambda d: f"\\! touch {flag}\n".encode() + d)
    bad = tmp_path / archive.name
    bad.write_bytes(encrypt(forged.read_bytes(), [x25519.Recipient.from_str(recipient)]))
    shutil.copy(archive.parent / (archive.name + ".sig"), tmp_path / (archive.name + ".sig"))
    outer = runner.invoke(args=["verify", str(bad)])
    assert outer.exit_code == 1 and "signature does not match" in outer.output
    inner = runner.invoke(args=["verify", str(bad), "--identity", str(key_file)])
    assert inner.exit_code == 1 and "signature does not match" in inner.output
    target = restore_target(request, backend, tmp_path)
    restored = restore(runner, bad, target, tmp_path / "u", "--identity", str(key_file))
    assert restored.exit_code == 1 and not flag.exists() and table_contents(target) == {}


def test_bad_recipients_and_identities_get_a_clear_error(app_config, app, runner, tmp_path,
                                                         identity):
    app.config["BACKUP_AGE_RECIPIENTS"] = ["age1notakey"]
    bad = runner.invoke(args=["backup"])
    assert bad.exit_code == 1 and "is not an age recipient" in bad.output
    app.config["BACKUP_AGE_RECIPIENTS"] = [identity[1]]
    archive = make_backup(runner)
    wrong = tmp_path / "wrong.txt"
    from pyrage import x25519

    wrong.write_text(f"{x25519.Identity.generate()}\n")
    result = runner.invoke(args=["verify", str(archive), "--identity", str(wrong)])
    assert result.exit_code == 1 and "cannot be decrypted with the given identity" in result.output
    not_a_key = tmp_path / "empty.txt"
    not_a_key.write_text("nothing here\n")
    result = runner.invoke(args=["verify", str(archive), "--identity", str(not_a_key)])
    assert result.exit_code == 1 and "holds no age identity" in result.output


def test_backup_key_is_created_once_with_mode_0600(app, runner):
    first = runner.invoke(args=["backup-key"]).output.strip().splitlines()[-1]
    path = Path(app.config["BACKUP_SIGNING_KEY"])
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert runner.invoke(args=["backup-key"]).output.strip().splitlines()[-1] == first
    status = runner.invoke(args=["status"]).output
    assert f"backup signing key: {first}" in status
    assert path.read_bytes() not in b"".join(
        zipfile.ZipFile(make_backup(runner)).read(n) for n in ("manifest.json", "manifest.sig"))




@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_page_lists_downloads_and_verifies_encrypted_archives(encrypted, app, runner, client,
                                                                  auth, archive, backend):
    from tests.helpers import csrf_token_from

    auth.login()
    page = client.get("/admin/backup/").get_data(as_text=True)
    assert archive.name in page and "encrypted to its age recipients" in page
    download = client.get(f"/admin/backup/download/{archive.name}")
    assert download.status_code == 200 and download.mimetype == "application/octet-stream"
    assert download.data == archive.read_bytes()
    assert client.get(f"/admin/backup/download/{archive.name}.sig").status_code == 404
    token = csrf_token_from(page)
    verified = client.post(f"/admin/backup/verify/{archive.name}", data={"csrf_token": token},
                           follow_redirects=True).get_data(as_text=True)
    assert "signature is valid" in verified and "contents were not checked" in verified
    deleted = client.post(f"/admin/backup/delete/{archive.name}", data={"csrf_token": token})
    assert deleted.status_code == 302
    assert not archive.exists() and not (archive.parent / (archive.name + ".sig")).exists()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_new_server_restores_without_tracebacks(app, runner, archive, backend, tmp_path):
    """Disaster recovery: a brand-new instance (no tables yet, so no audit log)
    refuses the archive until it trusts the key, then restores it; the terminal
    never shows a traceback."""
    from tests.helpers import manage

    key = runner.invoke(args=["backup-key"]).output.strip().splitlines()[-1]
    args = ["restore", str(archive), "--database-url", f"sqlite:///{tmp_path / 'new.db'}",
            "--uploads", str(tmp_path / "new-uploads"), "--yes"]
    env = {"INSTANCE_PATH": str(tmp_path / "new-instance")}
    refused = manage(*args, env=env, tmp_path=tmp_path)
    assert refused.returncode == 1 and "signed by an unknown key" in refused.stderr
    assert "Traceback" not in refused.stdout + refused.stderr
    restored = manage(*args, "--trusted-key", key, env=env, tmp_path=tmp_path)
    assert restored.returncode == 0, restored.stderr
    assert "Traceback" not in restored.stdout + restored.stderr
    assert table_contents(f"sqlite:///{tmp_path / 'new.db'}") == table_contents(
        app.config["DATABASE_URL"])


def recording_psql(tmp_path: Path) -> tuple[str, Path]:
    """A PSQL that records its arguments and the PGPASSWORD it was given, then runs psql."""
    record = tmp_path / "psql-record"
    wrapper = tmp_path / "psql-recorder"
    wrapper.write_text(f'#!/bin/sh\nprintf "argv=%s\\npassword=%s\\n" "$*" "$PGPASSWORD" '
                       f'>> {record}\nexec {shutil.which("psql")} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper), record


@pytest.mark.parametrize("backend", ["postgresql"])
@pytest.mark.parametrize("how", ["environment", "prompt", "url-in-environment"])
def test_a_target_password_never_needs_the_command_line(app, runner, archive, backend,
                                                        tmp_path, new_pg_database, how):
    """A password for another database comes from PGPASSWORD, RESTORE_DATABASE_URL or a
    prompt, and reaches psql in its environment, never in its arguments."""
    target = new_pg_database()  # trust authentication here: any password is accepted
    app.config["PSQL"], record = recording_psql(tmp_path)
    secret = f"s3cret-{how}"
    args = ["restore", str(archive), "--uploads", str(tmp_path / "u"), "--yes"]
    env, prompt_input = {}, None
    if how == "environment":
        args += ["--database-url", target]
        env = {"PGPASSWORD": secret}
    elif how == "prompt":
        args += ["--database-url", target, "--password-prompt"]
        prompt_input = secret + "\n"
    else:
        env = {"RESTORE_DATABASE_URL": target.replace("://postgres@", f"://postgres:{secret}@")}
    result = runner.invoke(args=args, env=env, input=prompt_input)
    assert result.exit_code == 0, result.output
    assert "restored" in result.output and secret not in result.output
    assert "WARNING: a password on the command line" not in result.output
    recorded = record.read_text()
    assert f"password={secret}" in recorded
    assert secret not in "".join(line for line in recorded.splitlines()
                                 if line.startswith("argv="))
    assert table_contents(target)["trip"]


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_password_on_the_command_line_is_warned_about(app, runner, archive, backend, tmp_path,
                                                        new_pg_database):
    target = new_pg_database().replace("://postgres@", "://postgres:visible@")
    result = runner.invoke(args=["restore", str(archive), "--database-url", target,
                                 "--uploads", str(tmp_path / "u"), "--yes"])
    assert result.exit_code == 0, result.output
    assert "WARNING: a password on the command line is visible" in result.output
