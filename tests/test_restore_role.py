"""Restores load the dump as RESTORE_DATABASE_ROLE (issue 20, part B): psql
connects as the target's user, and the dump runs after our ``SET LOCAL ROLE``
to a role that cannot read or write the server's files nor run programs there,
and owns the restored objects only until we hand them back, in the same
transaction. psql is restricted with a key of ours for the whole dump. And a
failed restore says what became of the target database, also when psql failed
after its COMMIT."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import uuid
import zipfile
from pathlib import Path

import pytest
import sqlalchemy as sa

from guest_backup.engines import pgscreen, postgresql as pg_engine
from guest_backup.engines.pgrole import ROLE_ATTRIBUTES
from guest_backup.ops.folders import restore_role_lines
from guest_backup.ops.settings import BackupSettings
from guest_backup.wiring import backup_context
from tests.helpers import make_backup, table_contents

ANCHOR = b"SELECT pg_catalog.set_config('search_path', '', false);\n"
FILE_ROLES = ("pg_read_server_files", "pg_write_server_files", "pg_execute_server_program")


@pytest.fixture
def archive(app, runner) -> Path:
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    return make_backup(runner)


@pytest.fixture
def admin(pg_server):
    """Run statements as the test server's superuser; roles made here are dropped."""
    engine = sa.create_engine(pg_server, isolation_level="AUTOCOMMIT")
    made: list[str] = []

    def run(sql: str, **params):
        with engine.connect() as conn:
            result = conn.execute(sa.text(sql), params)
            return result.all() if result.returns_rows else None

    run.made = made
    yield run
    for role in reversed(made):
        run(f'DROP ROLE IF EXISTS "{role}"')
    engine.dispose()


def new_role(admin, prefix: str) -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin.made.append(name)
    return name


def forge_signed(app, source: Path, dest: Path, change) -> Path:
    """An archive whose dump was changed and whose manifest was signed again with
    the app's own (trusted) key, keeping the archive's name."""
    with zipfile.ZipFile(source) as src:
        members = {i.filename: src.read(i) for i in src.infolist()}
    members["database.sql"] = change(members["database.sql"])
    manifest = json.loads(members["manifest.json"])
    manifest["members"] = {name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                           for name, data in members.items()
                           if name not in ("manifest.json", "manifest.sig")}
    members["manifest.json"] = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    members["manifest.sig"] = backup_context(app).settings.signer().sign_manifest(
        members["manifest.json"])
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as out:
        for name, data in members.items():
            out.writestr(name, data)
    return dest


def restore(runner, archive: Path, target: str, uploads: Path, *extra: str):
    return runner.invoke(args=["restore", str(archive), "--database-url", target,
                               "--uploads", str(uploads), "--yes", *extra])


def marker() -> Path:
    return Path("/tmp") / f"gr-pwned-{uuid.uuid4().hex}"


def owners(url: str) -> set[str]:
    """Owners of the relations and types in the target's ``public`` schema."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return set(conn.execute(sa.text(
                "SELECT pg_get_userbyid(relowner) FROM pg_class c JOIN pg_namespace n "
                "ON n.oid = c.relnamespace WHERE n.nspname = 'public' UNION "
                "SELECT pg_get_userbyid(typowner) FROM pg_type t JOIN pg_namespace n "
                "ON n.oid = t.typnamespace WHERE n.nspname = 'public'")).scalars())
    finally:
        engine.dispose()


def holds_anything(url: str, role: str) -> bool:
    """Whether ``role`` owns an object of the target or has a privilege on its schema."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return bool(conn.execute(sa.text(
                "SELECT count(*) FROM pg_shdepend d JOIN pg_database db ON db.oid = d.dbid "
                "WHERE db.datname = current_database() AND d.refobjid = CAST(:r AS regrole)"),
                {"r": role}).scalar_one())
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- the role

@pytest.mark.parametrize("backend", ["postgresql"])
def test_setup_creates_then_checks_the_restore_role(app, backend, admin):
    from guest_registration.maintenance import setup

    role = new_role(admin, "gr_restore")
    app.config["RESTORE_DATABASE_ROLE"] = role
    with app.app_context():
        first, again = list(setup(app)), list(setup(app))
    assert f"restore role ready: {role} (created: no superuser" in "\n".join(first)
    assert f"restore role ready: {role} (checked: no superuser" in "\n".join(again)
    (flags,) = admin("SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, "
                     "rolcanlogin FROM pg_roles WHERE rolname = :r", r=role)
    assert not any(flags)
    assert admin("SELECT b.rolname FROM pg_roles b WHERE b.rolname <> :r AND "
                 "pg_has_role(CAST(:r AS name), b.oid, 'MEMBER')", r=role) == []


@pytest.mark.parametrize("backend", ["sqlite"])
def test_setup_makes_no_role_on_sqlite(app, backend):
    assert restore_role_lines(backup_context(app).settings) == []


@pytest.mark.parametrize("harm", ["CREATEDB", "CREATEROLE", "BYPASSRLS", *FILE_ROLES])
def test_a_restore_role_that_could_do_harm_is_refused(pg_server, admin, harm):
    role = new_role(admin, "gr_harmful")
    if harm in FILE_ROLES:
        admin(f'CREATE ROLE "{role}" NOLOGIN')
        admin(f'GRANT {harm} TO "{role}"')
    else:
        admin(f'CREATE ROLE "{role}" NOLOGIN {harm}')
    settings = BackupSettings(pg_server, "", "", "test", restore_role=role)
    (line,) = restore_role_lines(settings)
    assert line.startswith(f"restore role NOT ready: the restore role {role} may do harm")
    assert (f"a member of {harm}" if harm in FILE_ROLES else harm) in line


def test_setup_says_what_to_do_without_the_privilege(pg_server, admin):
    """A database user that may not create roles: setup prints what a superuser
    must run (one line, no server text), and a restore is refused the same way."""
    user = new_role(admin, "gr_plain")
    admin(f'CREATE ROLE "{user}" LOGIN NOSUPERUSER NOCREATEROLE')
    url = sa.engine.make_url(pg_server).set(username=user).render_as_string(hide_password=False)
    role = new_role(admin, "gr_missing")
    (line,) = restore_role_lines(BackupSettings(url, "", "", "test", restore_role=role))
    assert line == (f"restore role NOT ready: the restore role {role} does not exist and this "
                    f"database user may not create roles: as a superuser run CREATE ROLE {role} "
                    f"{ROLE_ATTRIBUTES}; then run setup again")
    admin(f'CREATE ROLE "{role}" {ROLE_ATTRIBUTES}')
    (line,) = restore_role_lines(BackupSettings(url, "", "", "test", restore_role=role))
    assert line == (f"restore role NOT ready: the database user {user} may not act as the "
                    f"restore role {role}: as a superuser run GRANT {role} TO {user}")
    admin(f'GRANT "{role}" TO "{user}"')
    (line,) = restore_role_lines(BackupSettings(url, "", "", "test", restore_role=role))
    assert line.startswith(f"restore role ready: {role} (checked")


@pytest.mark.parametrize("backend", ["postgresql"])
def test_an_odd_role_setting_is_refused(app, runner, archive, backend, new_pg_database,
                                        tmp_path):
    app.config["RESTORE_DATABASE_ROLE"] = 'guest"; DROP ROLE postgres; --'
    target = new_pg_database()
    result = restore(runner, archive, target, tmp_path / "u")
    assert result.exit_code == 1 and "is not a plain role name" in result.output
    assert table_contents(target) == {}


# --------------------------------------------------------------------------- loading as the role

@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_restore_loads_as_the_role_and_hands_the_tables_back(app, runner, archive, backend,
                                                               new_pg_database, tmp_path):
    """The restored tables end up owned by the connecting user (as if it had
    loaded them), the role holds nothing afterwards, and the app's user can
    read and write; the same for --replace into the non-empty database."""
    role = backup_context(app).settings.restore_role
    target = new_pg_database()
    for extra in ((), ("--replace",)):
        result = restore(runner, archive, target, tmp_path / "u", *extra)
        assert result.exit_code == 0, result.output
        assert table_contents(target) == table_contents(app.config["DATABASE_URL"])
        assert owners(target) == {"postgres"}
        assert not holds_anything(target, role)
    engine = sa.create_engine(target)
    with engine.begin() as conn:
        reg = conn.execute(sa.text("SELECT min(id) FROM registration")).scalar_one()
        conn.execute(sa.text(
            "INSERT INTO guest (registration_id, first_name, last_name, age_category, "
            "document_type, document_number) VALUES (:r, 'New', 'Guest', 'adult', 'passport', "
            "'N1')"), {"r": reg})
        conn.execute(sa.text("UPDATE trip SET title = title || '!'"))
    engine.dispose()


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_dump_of_a_replaced_database_restores_again(app, runner, archive, backend,
                                                      new_pg_database, tmp_path):
    """After --replace (public recreated), pg_dump writes a COMMENT ON SCHEMA public
    the restore role could not run: that dump still restores, as the role."""
    import subprocess

    replaced, again = new_pg_database(), new_pg_database()
    assert restore(runner, archive, replaced, tmp_path / "u").exit_code == 0
    assert restore(runner, archive, replaced, tmp_path / "u", "--replace").exit_code == 0
    libpq = sa.engine.make_url(replaced).set(drivername="postgresql")
    data = subprocess.run(["pg_dump", "--no-owner", "--no-privileges",
                           libpq.render_as_string(hide_password=False)],
                          capture_output=True, check=True, timeout=120).stdout
    assert b"COMMENT ON SCHEMA public IS" in data
    settings = backup_context(app).settings.engine_settings
    pg_engine.PostgresEngine().restore(settings, again, io.BytesIO(data))
    assert table_contents(again) == table_contents(replaced)
    assert owners(again) == {"postgres"}


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_non_superuser_owner_restores_once_granted_the_role(app, runner, archive, backend,
                                                              admin, pg_server, tmp_path):
    """The target's owner, no superuser: refused with what a superuser must run,
    then, once granted the role, the tables are its own."""
    user = new_role(admin, "gr_owner")
    admin(f'CREATE ROLE "{user}" LOGIN NOSUPERUSER')
    name = f"gr_owned_{uuid.uuid4().hex[:8]}"
    admin(f'CREATE DATABASE "{name}" OWNER "{user}"')
    target = sa.engine.make_url(pg_server).set(username=user, database=name).render_as_string(
        hide_password=False)
    role = backup_context(app).settings.restore_role
    try:
        refused = restore(runner, archive, target, tmp_path / "u")
        assert refused.exit_code == 1 and len(refused.output.splitlines()) == 1
        assert f"may not act as the restore role {role}: as a superuser run GRANT {role} TO " \
               f"{user}" in refused.output
        admin(f'GRANT "{role}" TO "{user}"')
        ok = restore(runner, archive, target, tmp_path / "u")
        assert ok.exit_code == 0, ok.output
        assert owners(target) == {user}
        assert table_contents(target) == table_contents(app.config["DATABASE_URL"])
        assert not holds_anything(target, role)
    finally:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin(f'REVOKE "{role}" FROM "{user}"')


class AcceptAll:
    """A screen switched off (what a screen bug would do): passes every byte but
    pg_dump's own first ``\\restrict`` and last ``\\unrestrict`` line, as the real
    screen does (the demo dump comes in one chunk)."""

    def __init__(self) -> None:
        self.statements = 0

    def feed(self, chunk: bytes) -> bytes:
        lines = chunk.splitlines(keepends=True)
        first = next(i for i, line in enumerate(lines) if line.startswith(b"\\restrict "))
        last = max(i for i, line in enumerate(lines) if line.startswith(b"\\unrestrict "))
        return b"".join(line for i, line in enumerate(lines) if i not in (first, last))

    def finish(self) -> bytes:
        return b""


def restrict_key(data: bytes) -> str:
    line = next(l for l in data.splitlines() if l.startswith(b"\\restrict "))
    return line.split()[1].decode()


PAST_THE_SCREEN = {
    "copy-to-program": (lambda d, f: f"COPY (SELECT 1) TO PROGRAM 'touch {f}';\n",
                        "permission denied"),
    "copy-to-file": (lambda d, f: f"COPY (SELECT 1) TO '{f}';\n", "permission denied"),
    "lo-export": (lambda d, f: "CREATE TABLE public.lo AS SELECT pg_catalog.lo_export("
                               f"pg_catalog.lo_from_bytea(0, '\\x41'::bytea), '{f}') AS r;\n",
                  "permission denied"),
    "read-file": (lambda d, f: "CREATE TABLE public.pw AS SELECT "
                               "pg_catalog.pg_read_file('/etc/passwd') AS t;\n",
                  "permission denied"),
    "shell": (lambda d, f: f"\\! touch {f}\n", "refused a meta-command"),
    "shell-unrestricted": (lambda d, f: f"\\unrestrict {restrict_key(d)}\n\\! touch {f}\n",
                           "refused a meta-command"),
}


@pytest.mark.parametrize("backend", ["postgresql"])
@pytest.mark.parametrize("kind", sorted(PAST_THE_SCREEN))
def test_what_gets_past_a_disabled_screen_is_refused_by_postgresql_and_psql(
        app, runner, archive, backend, new_pg_database, tmp_path, monkeypatch, kind):
    monkeypatch.setattr(pgscreen, "PgDumpScreen", AcceptAll)
    flag = marker()
    payload, expected = PAST_THE_SCREEN[kind]
    forged = forge_signed(app, archive, tmp_path / "forged" / archive.name,
                          lambda d: d.replace(ANCHOR, ANCHOR + payload(d, flag).encode(), 1))
    target = new_pg_database()
    result = restore(runner, forged, target, tmp_path / "u")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert len(result.output.splitlines()) == 1
    assert expected in result.output
    assert "nothing was restored, the target database is as it was" in result.output
    assert not flag.exists()
    assert table_contents(target) == {}


# --------------------------------------------------------------------------- honest errors

def psql_wrapper(tmp_path: Path, script: str) -> str:
    wrapper = tmp_path / "psql-wrapper"
    wrapper.write_text(f"#!/bin/sh\n{script.replace('PSQL', shutil.which('psql'))}\n")
    wrapper.chmod(0o755)
    return str(wrapper)


@pytest.mark.parametrize("backend", ["postgresql"])
@pytest.mark.parametrize("replace", [False, True], ids=["into-empty", "replace"])
def test_a_failure_after_the_commit_says_the_database_was_restored(app, runner, archive, backend,
                                                                   new_pg_database, tmp_path,
                                                                   replace):
    target = new_pg_database()
    if replace:
        assert restore(runner, archive, target, tmp_path / "u").exit_code == 0
        engine = sa.create_engine(target)
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO trip (title, max_guests) VALUES ('only here', 2)"))
        engine.dispose()
    # psql commits the load, then fails on what follows our epilogue
    app.config["PSQL"] = psql_wrapper(tmp_path, "{ cat; printf 'SELECT 1/0;\\n'; } | PSQL \"$@\"")
    result = restore(runner, archive, target, tmp_path / "u", *(["--replace"] if replace else []))
    assert result.exit_code == 1 and len(result.output.splitlines()) == 1
    done = "replaced with the archive's database" if replace else "restored from the archive"
    assert f"after the load was committed: the target database WAS {done}" in result.output
    assert "nothing was restored" not in result.output
    assert table_contents(target) == table_contents(app.config["DATABASE_URL"])


@pytest.mark.parametrize("backend", ["postgresql"])
def test_an_unknown_outcome_is_not_called_nothing_restored(app, runner, archive, backend,
                                                           new_pg_database, tmp_path):
    """psql's output lost and a failing exit code: nobody can tell whether the
    load was committed, and the error says so instead of "as it was"."""
    target = new_pg_database()
    app.config["PSQL"] = psql_wrapper(tmp_path, "PSQL \"$@\" > /dev/null; exit 1")
    result = restore(runner, archive, target, tmp_path / "u")
    assert result.exit_code == 1
    assert "it is not known whether the load was committed" in result.output
    assert "nothing was restored" not in result.output


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_failure_before_the_commit_leaves_the_target_as_it_was(app, runner, archive, backend,
                                                                 new_pg_database, tmp_path):
    target = new_pg_database()
    app.config["PSQL"] = psql_wrapper(
        tmp_path, "sed 's/^COPY public.guest /COPY public.no_such_table /' | PSQL \"$@\"")
    result = restore(runner, archive, target, tmp_path / "u")
    assert result.exit_code == 1
    assert "nothing was restored, the target database is as it was" in result.output
    assert table_contents(target) == {}


# --------------------------------------------------------------------------- schema upgrades

NEWER_REVISION = '''"""A column added after the archive was taken (test only).

Revision ID: 9100_role_note
Revises: {head}
"""
import sqlalchemy as sa
from alembic import op

revision = "9100_role_note"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("guest", sa.Column("role_note", sa.String(40), nullable=True))


def downgrade():
    op.drop_column("guest", "role_note")
'''


@pytest.mark.parametrize("backend", ["postgresql"])
def test_an_older_archive_is_upgraded_in_the_same_transaction(app, runner, app_config, archive,
                                                              backend, new_pg_database, tmp_path):
    """The next version of the code restores this archive: the schema upgrade runs
    after the load, before the commit, and the role still keeps nothing."""
    from guest_registration import create_app, hookimpl

    revisions = json.loads(zipfile.ZipFile(archive).read("manifest.json"))["schema"]["revisions"]
    host_head = next(r for r in revisions if not r.startswith("backup_"))
    folder = tmp_path / "newer-versions"
    folder.mkdir()
    (folder / "9100_role_note.py").write_text(NEWER_REVISION.format(head=host_head))

    class NewerCode:
        @hookimpl
        def register_migrations(self):
            return [str(folder)]

    newer = create_app(dict(app_config), instance_path=str(tmp_path / "instance"),
                       extra_plugins=[("newer", NewerCode())])
    target = new_pg_database()
    result = restore(newer.test_cli_runner(), archive, target, tmp_path / "u")
    assert result.exit_code == 0, result.output
    assert "to 9100_role_note" in result.output
    engine = sa.create_engine(target)
    with engine.connect() as conn:
        assert "role_note" in {c["name"] for c in sa.inspect(conn).get_columns("guest")}
        assert set(conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars()) \
            >= {"9100_role_note"}
    engine.dispose()
    assert owners(target) == {"postgres"}
    assert not holds_anything(target, backup_context(app).settings.restore_role)


@pytest.mark.parametrize("backend", ["postgresql"])
@pytest.mark.parametrize("spelling", [
    "ALTER TABLE ONLY public.trip ALTER COLUMN title SET DEFAULT "
    "('/etc/passwd'::text).pg_read_file;",
    "ALTER TABLE ONLY public.trip ADD CONSTRAINT gr_md5 CHECK "
    "(((title)::text).md5 <> '');",
    "CREATE INDEX gr_ix ON public.trip USING btree ((((title)::text).md5));",
])
def test_a_call_the_screen_missed_is_refused_by_what_the_server_made_of_it(
        app, runner, archive, backend, new_pg_database, monkeypatch, spelling):
    """Behind the screen: right after the dump, still as the restore role, every
    default, check and index expression of what the load made is read back as
    PostgreSQL renders it (``(x).f`` reads ``f(x)``) and a call outside the
    screen's few harmless functions stops the load. Here the screen is made to
    pass everything, as a misreading of it would."""
    from guest_backup.errors import EngineError

    target = new_pg_database()
    with zipfile.ZipFile(archive) as zf:
        data = zf.read("database.sql")
    marker_line = b"-- PostgreSQL database dump complete"
    data = data.replace(marker_line, spelling.encode() + b"\n\n" + marker_line, 1)
    monkeypatch.setattr(pgscreen, "statement_problem",
                        lambda statement: (None, statement.split()[0].upper()))
    settings = backup_context(app).settings.engine_settings
    with pytest.raises(EngineError, match="calls a function a dump of this application "
                                          "does not"):
        pg_engine.PostgresEngine().restore(settings, target, io.BytesIO(data))
    assert table_contents(target) == {}
