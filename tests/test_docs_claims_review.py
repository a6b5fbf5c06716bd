"""Claims of docs/*.md the code did not keep (the docs review): a root ``setup`` in
the service user's folder gives what it makes to that user (configuration.md,
deployment.md); PITR durations in minutes (pitr.md); every API error is JSON, the
schema guard's 503 too, and the OpenAPI document lists the 400 of a token in the
query string (api.md); ``status`` fails a shared BACKUP_FOLDER (configuration.md,
runbook.md); a CREATE DATABASE refused for another reason than privileges is not
blamed on them (runbook.md); MAX_FORM_MEMORY_SIZE comes from the environment
(configuration.md)."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import pytest
import sqlalchemy as sa
from jsonschema import Draft202012Validator

from guest_backup.engines import EngineError
from guest_backup.engines.postgresql import PostgresEngine
from guest_registration.config import ConfigError, build_config
from tests.helpers import ADMIN, manage

# root's folder for the service user's folders, and those folders: as test_root_runs makes them
from tests.test_root_runs import NOBODY, base  # noqa: F401 (base: a fixture)
from tests.test_root_runs import nobodys as _nobodys


def _not_nobodys(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.lstat().st_uid != NOBODY)


# --------------------------------------------------------------------------- 1: root's setup

def test_root_setup_gives_the_database_backups_and_schema_list_to_the_service_user(base):
    """configuration.md: "A command run as root (sudo -E guest-registration …) that
    creates it, or anything in it, inside a folder of the service's user gives it to
    that user". The SQLite file (and its -wal, -shm), backups/ and
    schema-locations.json were root's; a BACKUP_FOLDER outside the instance folder
    (two folders to make) is the user's too, and a root file that was there before
    is left as it was."""
    home = _nobodys(base / "svc")
    instance = _nobodys(home / "instance")
    (instance / "kept-by-root").write_text("root's own\n")
    env = {"INSTANCE_PATH": str(instance),
           "DATABASE_URL": f"sqlite:///{instance / 'guest_registration.db'}",
           "BACKUP_FOLDER": str(home / "archives" / "nightly")}
    done = manage("setup", "--admin-email", ADMIN[0], "--admin-password", ADMIN[1],
                  env=env, tmp_path=base)
    assert done.returncode == 0, done.stderr
    assert (instance / "guest_registration.db").exists()
    assert (instance / "schema-locations.json").exists()
    assert (home / "archives" / "nightly").is_dir()
    assert _not_nobodys(home) == ["instance/kept-by-root"]


def test_root_status_on_a_fresh_instance_leaves_the_database_to_the_service_user(base):
    """``status`` typed as root before ``setup`` made the SQLite file (and its -wal,
    -shm) root's: the service then could not open its own database."""
    instance = _nobodys(_nobodys(base / "svc") / "instance")
    env = {"INSTANCE_PATH": str(instance),
           "DATABASE_URL": f"sqlite:///{instance / 'guest_registration.db'}"}
    manage("status", env=env, tmp_path=base)
    assert (instance / "guest_registration.db").exists()
    assert _not_nobodys(base / "svc") == []


def test_what_the_block_makes_in_a_users_folder_is_theirs_and_no_link_is_followed(base):
    """The mechanism itself: new and replaced files, new folders and what is in them
    are the folder owner's; a symbolic link planted there is handed over itself,
    never what it points to, and a file linked in from elsewhere is left alone."""
    from guest_registration.instance_folder import handed_to_their_owner

    home = _nobodys(base / "svc")
    (home / "old").write_text("old\n")
    os.chown(home / "old", NOBODY, NOBODY)
    outside = base / "root-only"
    outside.write_text("root's\n")
    with handed_to_their_owner(home):
        (home / "made" / "deeper").mkdir(parents=True)
        (home / "made" / "deeper" / "file").write_text("new\n")
        replacement = home / ".old.new"
        replacement.write_text("replaced\n")
        os.replace(replacement, home / "old")  # a root os.replace: a new root file
        os.symlink(outside, home / "link")
        os.link(outside, home / "hardlink")
    assert _not_nobodys(home) == ["hardlink"]
    assert outside.stat().st_uid == 0


def test_in_a_folder_of_roots_nothing_is_handed_over(base):
    """Only a folder of another user gives away what is made in it."""
    from guest_registration.instance_folder import handed_to_their_owner

    with handed_to_their_owner(base / "roots"):
        (base / "roots").mkdir()
        (base / "roots" / "file").write_text("x\n")
    assert (base / "roots" / "file").stat().st_uid == 0


# --------------------------------------------------------------------------- 2: PITR durations

def test_pitr_max_wal_delay_in_minutes_and_a_bad_duration_stops_start_up(tmp_path):
    """pitr.md: PITR_MAX_WAL_DELAY "(seconds, or 5m)": 5m stopped every command
    ("must be a whole number"); a value that is no duration stops them in one line."""
    ok = manage("backup-list", env={"PITR_MAX_WAL_DELAY": "5m"}, tmp_path=tmp_path)
    assert ok.returncode == 0, ok.stderr
    bad = manage("backup-list", env={"PITR_MAX_FULL_AGE": "eight days"}, tmp_path=tmp_path)
    assert bad.returncode == 1
    assert bad.stderr.strip() == (
        "Error: the app cannot start: PITR_MAX_FULL_AGE must be a duration: seconds, or a "
        "number with s, m, h, d or w (5m, 26h, 8d), not 'eight days'")


def test_the_wal_delay_is_read_as_a_duration_where_health_uses_it():
    from guest_backup.ops.health_problems import parse_duration
    from guest_backup.ops.settings import pitr_defaults

    default = pitr_defaults("/x")["PITR_MAX_WAL_DELAY"]
    assert isinstance(default, str) and parse_duration(default).total_seconds() == 300


# --------------------------------------------------------------------------- 3: JSON 503

def test_the_api_answers_json_while_the_schema_is_behind(app, runner, client):
    """api.md: "Every error the application answers is JSON"; the schema guard's 503
    was an HTML page under /api too. Pages keep theirs."""
    down = runner.invoke(args=["db", "downgrade", "backup_0001_erasure_mark@-1"])
    assert down.exit_code == 0, down.output
    api = client.get("/api/backup/archives", headers={"Accept": "text/html"})
    assert (api.status_code, api.mimetype) == (503, "application/json")
    assert api.headers["Retry-After"] == "60"
    assert "guest-registration setup" in api.get_json()["error"]
    assert set(api.get_json()) == {"error"}
    page = client.get("/")
    assert (page.status_code, page.mimetype) == (503, "text/html")


# --------------------------------------------------------------------------- 4: status

def test_status_fails_a_shared_backup_folder(app, runner, tmp_path):
    """A sticky BACKUP_FOLDER (mode 1777), which every backup refuses, was "[ok]
    present and writable"; now FAIL with the backup's message, exit 1."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    app.config["BACKUP_FOLDER"] = str(shared)
    result = runner.invoke(args=["status"])
    assert result.exit_code == 1
    assert (f"[FAIL] backup folder: BACKUP_FOLDER {shared} is a shared folder (sticky, as "
            f"/tmp): the app makes its folders private to its user, which would take this "
            f"one from everyone; give BACKUP_FOLDER a folder of its own") in result.output
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777


# --------------------------------------------------------------------------- 5: CREATE DATABASE

def _refusing(code: str):
    """A stand-in for the maintenance connection whose CREATE DATABASE fails with
    SQLSTATE ``code`` (55006 for real takes holding template1 for 5 seconds, which
    fails every other test's CREATE DATABASE meanwhile)."""
    class Refused(Exception):
        pgcode = code

    class Conn:
        def exec_driver_sql(self, statement):
            raise sa.exc.OperationalError(statement, {}, Refused("the server's words"))

    @contextlib.contextmanager
    def connected(url, autocommit=False):
        yield Conn()

    return connected


def test_a_busy_template1_is_not_blamed_on_privileges(monkeypatch):
    """runbook.md: a superuser's drill said "the role postgres may not create
    databases (as a superuser: ALTER ROLE ... CREATEDB)" when a session sat on
    template1 (55006)."""
    monkeypatch.setattr("guest_backup.engines.postgresql._connected", _refusing("55006"))
    url = "postgresql+psycopg2://postgres@127.0.0.1:5432/app"
    with pytest.raises(EngineError) as refused, PostgresEngine().scratch(url):
        pass
    assert str(refused.value) == ("a scratch database is needed and cannot be created: "
                                  "template1 (the template database) is in use by another "
                                  "session; try again")
    with pytest.raises(EngineError) as target:
        PostgresEngine()._create_database(url.replace("/app", "/new_one"))
    assert str(target.value) == ("the target database 'new_one' does not exist and cannot be "
                                 "created: template1 (the template database) is in use by "
                                 "another session; try again")


def test_another_refusal_is_one_line_without_the_servers_text(monkeypatch):
    monkeypatch.setattr("guest_backup.engines.postgresql._connected", _refusing("53100"))
    with pytest.raises(EngineError) as refused, PostgresEngine().scratch(
            "postgresql+psycopg2://postgres@127.0.0.1:5432/app"):
        pass
    assert str(refused.value) == ("a scratch database is needed and cannot be created: "
                                  "the server refused it (SQLSTATE 53100)")


def test_a_role_without_createdb_is_still_told_to_get_it(pg_server):
    """42501, the one refusal that is about privileges, keeps its advice."""
    admin = sa.create_engine(pg_server, isolation_level="AUTOCOMMIT")
    role = f"fix_docs_nocreate_{os.getpid()}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN NOCREATEDB')
    try:
        url = sa.make_url(pg_server).set(username=role).render_as_string(hide_password=False)
        with pytest.raises(EngineError) as refused, PostgresEngine().scratch(url):
            pass
        assert str(refused.value) == (f"a scratch database is needed and the role {role} may "
                                      f"not create databases (as a superuser: ALTER ROLE "
                                      f"\"{role}\" CREATEDB)")
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP ROLE IF EXISTS "{role}"')
        admin.dispose()


# --------------------------------------------------------------------------- 6: form memory

def test_max_form_memory_size_comes_from_the_environment(tmp_path):
    """configuration.md: "Every value can be set in the environment", MAX_FORM_MEMORY_SIZE
    included (it was ignored); 0 or less would refuse every form field."""
    env = {"SECRET_KEY": "k", "SECURITY_PASSWORD_SALT": "s"}
    config = build_config(str(tmp_path), environ={**env, "MAX_FORM_MEMORY_SIZE": "1000"})
    assert config["MAX_FORM_MEMORY_SIZE"] == 1000
    for wrong in ("0", "-5"):
        with pytest.raises(ConfigError) as refused:
            build_config(str(tmp_path), environ={**env, "MAX_FORM_MEMORY_SIZE": wrong})
        assert str(refused.value) == (f"MAX_FORM_MEMORY_SIZE must be a whole number of at "
                                      f"least 1, got {wrong!r}")


def test_the_app_bounds_a_plain_body_by_the_environments_value(tmp_path, monkeypatch):
    from guest_registration import create_app
    from tests.helpers import make_config

    monkeypatch.setenv("MAX_FORM_MEMORY_SIZE", "1000")
    app = create_app(make_config(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}"),
                     instance_path=str(tmp_path / "instance"))
    assert app.config["MAX_FORM_MEMORY_SIZE"] == 1000
    body = "email=" + "a" * 1200
    refused = app.test_client().post("/login", data=body,
                                     content_type="application/x-www-form-urlencoded")
    assert refused.status_code == 413


# --------------------------------------------------------------------------- 7: OpenAPI 400

def test_every_api_operation_documents_the_query_token_400(app, client):
    """api.md: a token in the query string (?auth_token=) is 400, for every /api
    endpoint; the served document listed no 400 for the archive and job ones."""
    doc = client.get("/api/openapi.json").get_json()
    missing_400 = [(path, method) for path, operations in doc["paths"].items()
                   for method, operation in operations.items() if "400" not in
                   operation["responses"]]
    assert missing_400 == []
    refused = client.get("/api/backup/archives?auth_token=x")
    assert refused.status_code == 400
    described = doc["paths"]["/api/backup/archives"]["get"]["responses"]["400"]
    schema = described["content"]["application/json"]["schema"]
    Draft202012Validator({**schema, "components": doc["components"]}).validate(
        refused.get_json())
