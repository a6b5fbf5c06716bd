"""What the operator is told: no false warning about notifications nobody asked
for, a ``status`` line for the PostgreSQL role's right to create the restore
drill's scratch databases, and one line (not a traceback) for an export into a
folder that cannot be written."""

from __future__ import annotations

import logging
import sys
import uuid

import pytest
import sqlalchemy as sa

from guest_backup.ops import notify
from guest_backup.wiring import backup_context
from guest_registration import create_app

from tests.helpers import ADMIN, make_config

sqlite = pytest.mark.parametrize("backend", ["sqlite"])
postgresql = pytest.mark.parametrize("backend", ["postgresql"])


# --------------------------------------------------------------------------- R5: no URL, no word

@sqlite
def test_without_notify_urls_nothing_is_sent_and_apprise_is_not_mentioned(
        app, backend, monkeypatch, caplog):
    """Installed without [notify] and BACKUP_NOTIFY_URLS unset, every change of state
    warned "BACKUP_NOTIFY_URLS is set but apprise is not installed"."""
    monkeypatch.setitem(sys.modules, "apprise", None)  # import apprise: ImportError
    app.config["BACKUP_NOTIFY_URLS"] = ""
    ctx = backup_context(app)
    with caplog.at_level(logging.WARNING):
        assert notify.change(ctx, "backup", "failed", "pg_dump is missing") == "Backup failed"
        assert notify.change(ctx, "backup", "ok", "Archive x.zip was written.") == (
            "Backup recovered")
    assert "apprise" not in caplog.text, caplog.text
    assert notify.send([], "Backup failed", "text") == []


@sqlite
def test_with_urls_and_no_apprise_the_warning_stays(app, backend, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "apprise", None)
    with caplog.at_level(logging.WARNING):
        results = notify.send(["json://localhost:9/x"], "Backup failed", "text")
    assert [ok for _, ok in results] == [False]
    assert "BACKUP_NOTIFY_URLS is set but apprise is not installed" in caplog.text


# --------------------------------------------------------------------------- R6: CREATEDB in status

@pytest.fixture
def role_without_createdb(pg_server, tmp_path):
    """A role and its database as the docs' ``CREATE ROLE app LOGIN; CREATE DATABASE
    db OWNER app`` make them (no CREATEDB); the database URL as that role."""
    name = f"gr_plain_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(pg_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE ROLE "{name}" LOGIN'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}" OWNER "{name}"'))
    url = sa.engine.make_url(pg_server).set(username=name, password=None, database=name)
    yield name, url.render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'DROP ROLE IF EXISTS "{name}"'))
    admin.dispose()


def _status(app) -> tuple[int, list[str]]:
    result = app.test_cli_runner().invoke(args=["status"])
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output.splitlines()


def test_status_fails_when_the_role_may_not_create_the_drills_database(
        role_without_createdb, tmp_path):
    """setup and status were all [ok]; the nightly restore-test then failed with
    "… does not exist and this role may not create it; create it first"."""
    role, url = role_without_createdb
    app = create_app(make_config(tmp_path, url), instance_path=str(tmp_path / "instance"))
    with app.app_context():
        from guest_registration.maintenance import setup

        list(setup(app, *ADMIN))
    code, lines = _status(app)
    assert code == 1
    assert (f"[FAIL] database role: {role} may not create databases: restore-test and "
            f"browsing an archive load it into a new scratch database and fail (as a "
            f"superuser: ALTER ROLE \"{role}\" CREATEDB)") in lines, lines
    with app.app_context():  # the role's database is dropped next
        from guest_registration.extensions import db

        db.engine.dispose()


def test_a_drill_refused_its_scratch_database_names_the_grant(role_without_createdb, tmp_path):
    """restore-test without CREATEDB said "the target database 'gr_drill_…' does not
    exist and this role may not create it; create it first": a made-up name nobody
    can create ahead of a drill. It now names the role and the grant."""
    role, url = role_without_createdb
    app = create_app(make_config(tmp_path, url), instance_path=str(tmp_path / "instance"))
    with app.app_context():
        from guest_registration.maintenance import setup

        list(setup(app, *ADMIN))
    runner = app.test_cli_runner()
    assert runner.invoke(args=["backup"]).exit_code == 0
    result = runner.invoke(args=["restore-test"])
    assert result.exit_code != 0
    assert "create it first" not in result.output, result.output
    assert (f"a scratch database is needed and the role {role} may not create databases "
            f"(as a superuser: ALTER ROLE \"{role}\" CREATEDB)") in result.output, result.output
    with app.app_context():  # the role's database is dropped next
        from guest_registration.extensions import db

        db.engine.dispose()


@postgresql
def test_status_says_the_role_may_create_databases(app, backend):
    code, lines = _status(app)
    role = sa.engine.make_url(app.config["DATABASE_URL"]).username
    assert (f"[ok  ] database role: {role} may create databases (restore drills and "
            f"browsing need it)") in lines, lines


@sqlite
def test_status_has_no_role_line_on_sqlite(app, backend):
    code, lines = _status(app)
    assert not [line for line in lines if "database role" in line], lines


# --------------------------------------------------------------------------- R8: export folder

@sqlite
def test_export_into_a_folder_that_cannot_be_written_is_one_line(app, backend, tmp_path):
    """A folder the user may not write (or that is not there) was a raw
    PermissionError traceback from tempfile.mkstemp."""
    target = tmp_path / "not-there" / "june.csv"
    result = app.test_cli_runner().invoke(
        args=["export-guests", "--year", "2025", "--month", "6", "--output", str(target)])
    assert result.exit_code == 1, result.output
    assert result.output.strip() == (f"Error: cannot write to the folder {target.parent} "
                                     f"(No such file or directory); nothing was exported")
    assert not isinstance(result.exception, OSError)


@sqlite
def test_export_to_a_file_still_writes_it(app, backend, tmp_path):
    target = tmp_path / "june.csv"
    result = app.test_cli_runner().invoke(
        args=["export-guests", "--year", "2025", "--month", "6", "--output", str(target)])
    assert result.exit_code == 0, result.output
    assert target.read_bytes().startswith(b"\xef\xbb\xbf") or target.stat().st_size > 0
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


def test_status_names_a_relative_sqlite_database_by_the_file_the_app_opens(
        app_config, request):
    """DATABASE_URL=sqlite:///app.db is the instance folder's app.db for the app;
    ``status`` said "reachable at sqlite:///app.db", which a reader looks for in the
    working folder."""
    app_config["DATABASE_URL"] = "sqlite:///app.db"
    app = request.getfixturevalue("app")
    code, lines = _status(app)
    own = f"{app.instance_path}/app.db"
    assert any(line.endswith(f"reachable at sqlite:///{own}") for line in lines), lines
