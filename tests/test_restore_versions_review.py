"""Restores across versions of the code (review findings): the archive made before
an upgrade put back with the older version (the replaced database's audit trail
has a column the older code's does not); an upgrade that fails inside a
PostgreSQL restore named as such, not blamed on the erasure ledger; an archive
from a newer schema refused without leaving a database it created behind."""

from __future__ import annotations

import shutil

import pytest
import sqlalchemy as sa

from guest_registration import create_app, hookimpl
from guest_registration.extensions import db
from tests.helpers import create_pg_database, drop_pg_database, make_backup
from tests.test_archive_schema import later_app, newer, versions  # noqa: F401 (fixture)
from tests.test_archive_trust import encrypted, identity  # noqa: F401 (fixtures)
from tests.test_erasure import add_people
from tests.test_migrations import BACKUP_HEAD, HOST_HEAD

REVISION = '''"""Revision ID: {rev}
Revises: {head}
"""
import sqlalchemy as sa
from alembic import op

revision, down_revision, branch_labels, depends_on = "{rev}", "{head}", None, None


def upgrade():
{body}


def downgrade():
    pass
'''
#: the newer version records where an audited action came from
AUDIT_IP = '''    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("ip", sa.String(64), nullable=True))'''
#: ... or requires a value no older entry has (NOT NULL, no default once added)
AUDIT_REQUIRED = '''    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("site", sa.String(16), nullable=False, server_default="x"))
    with op.batch_alter_table("audit_log") as batch:
        batch.alter_column("site", server_default=None)'''
#: an upgrade that fails half-way (division by zero on the first guest)
FAILING = '''    with op.batch_alter_table("guest") as batch:
        batch.add_column(sa.Column("test_note", sa.String(40), nullable=True))
    op.execute("UPDATE guest SET test_note = CAST(1 / (id - id) AS text)")'''


class Version:
    """A version of the code with one more host revision (in ``folder``)."""

    def __init__(self, folder, body: str) -> None:
        folder.mkdir()
        (folder / "9000_next.py").write_text(REVISION.format(rev="9000_next", head=HOST_HEAD,
                                                             body=body))
        self.folder = folder

    @hookimpl
    def register_migrations(self):
        return [str(self.folder)]


def next_version(app_config, tmp_path, body: str):
    return create_app(dict(app_config), instance_path=str(tmp_path / "instance"),
                      extra_plugins=[("next", Version(tmp_path / "next", body))])


def audit_rows(app) -> list[tuple]:
    with app.app_context():
        return [tuple(r) for r in db.session.execute(sa.text(
            "SELECT id, action, outcome FROM audit_log ORDER BY id"))]


# ------------------------------------------------------------- 1. the older version put back

def test_the_archive_from_before_an_upgrade_restores_with_the_older_version_put_back(
        app, runner, app_config, tmp_path, backend):
    """The runbook's way back from an upgrade: the archive of step 1, restored by
    the older code over the database the newer one upgraded. Before: the newer
    audit_log's ``ip`` was carried into the older copy, which has no such column
    (SQLite: "could not be brought up to date", PostgreSQL: "psql failed")."""
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    archive = make_backup(runner)  # step 1 of the runbook's upgrade
    v2 = next_version(app_config, tmp_path, AUDIT_IP)
    assert v2.test_cli_runner().invoke(args=["setup"]).exit_code == 0
    make_backup(v2.test_cli_runner())  # the new version runs for a while
    with v2.app_context():
        db.session.execute(sa.text("UPDATE audit_log SET ip = '192.0.2.1'"))
        db.session.commit()
    shutil.rmtree(tmp_path / "next")  # the older version put back
    assert app.test_client().get("/").status_code == 503  # the database is newer than its code
    result = runner.invoke(args=["restore", str(archive), "--replace", "--yes"])
    assert result.exit_code == 0, result.output
    assert versions(app_config["DATABASE_URL"]) == {HOST_HEAD, BACKUP_HEAD}
    actions = [(action, outcome) for _, action, outcome in audit_rows(app)]
    assert actions[-3:] == [("backup", "ok"), ("backup", "ok"), ("restore", "ok")]


def test_audit_entries_the_restored_table_cannot_take_are_left_out_not_the_restore(
        app, runner, app_config, tmp_path, backend):
    """The newer code requires a value (NOT NULL, no default) that the replaced
    database's entries lack: those the loaded copy already holds are brought up to
    date, the others cannot be written; the restore still happens."""
    make_backup(runner)  # an entry the archive holds
    archive = make_backup(runner)
    make_backup(runner)  # an entry the archive does not hold
    with app.app_context():  # changed since the archive: carried
        db.session.execute(sa.text("UPDATE audit_log SET message = 'changed' WHERE id = 1"))
        db.session.commit()
    assert [row[0] for row in audit_rows(app)] == [1, 2, 3]
    v2 = next_version(app_config, tmp_path, AUDIT_REQUIRED)
    result = v2.test_cli_runner().invoke(args=["restore", str(archive), "--replace", "--yes"])
    assert result.exit_code == 0, result.output
    with v2.app_context():
        rows = [tuple(r) for r in db.session.execute(sa.text(
            "SELECT id, action, outcome, message, site FROM audit_log ORDER BY id"))]
    # the archive held entry 1 only (its own is written after its snapshot); 2 and 3
    # cannot be written (a warning says so), nor can the restore's own entry
    assert rows == [(1, "backup", "ok", "changed", "x")]


# -------------------------------------------------- 2. a failing upgrade named as such

@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_failing_upgrade_is_not_blamed_on_the_erasure_ledger(app, runner, app_config,
                                                               tmp_path):
    """psql stopped in the upgrade's SQL, written before the session that re-applies
    the ledger began. Before: "psql failed ... while re-applying the erasure ledger"."""
    ids = add_people(app)
    archive = make_backup(runner)
    assert runner.invoke(args=["erase", "--guest", str(ids["jana"]), "--yes"]).exit_code == 0
    v2 = next_version(app_config, tmp_path, FAILING)
    result = v2.test_cli_runner().invoke(args=["restore", str(archive), "--replace", "--yes"])
    assert result.exit_code == 1
    assert "nothing was restored" in result.output
    assert "erasure ledger" not in result.output  # the ledger was never reached
    assert "while upgrading the archive's schema" in result.output


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_failing_upgrade_is_named_without_erasures(app, runner, app_config, tmp_path):
    add_people(app)
    archive = make_backup(runner)
    v2 = next_version(app_config, tmp_path, FAILING)
    result = v2.test_cli_runner().invoke(args=["restore", str(archive), "--replace", "--yes"])
    assert result.exit_code == 1
    assert "while upgrading the archive's schema" in result.output
    assert "nothing was restored" in result.output


# ------------------------------------- 3. a refused archive leaves no database behind

def database_exists(server: str, name: str) -> bool:
    engine = sa.create_engine(server)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT count(*) FROM pg_database WHERE datname = :n"),
                                {"n": name}).scalar_one() == 1
    finally:
        engine.dispose()


def newer_archive(app_config, tmp_path, newer, *args):  # noqa: F811
    code = later_app(tmp_path, app_config, newer)
    assert code.test_cli_runner().invoke(args=["setup"]).exit_code == 0
    archive = make_backup(code.test_cli_runner(), *args)
    shutil.rmtree(newer.folder)  # the older code put back
    return archive


@pytest.fixture
def absent_database(pg_server):
    """The URL of a database that does not exist (dropped afterwards if it does)."""
    url = create_pg_database(pg_server, "gr_absent")
    drop_pg_database(pg_server, url)
    yield url
    drop_pg_database(pg_server, url)


def restore_into(runner, archive, target: str, tmp_path, *args):
    return runner.invoke(args=["restore", str(archive), "--database-url", target, "--yes",
                               "--uploads", str(tmp_path / "restored-uploads"), *args])


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_newer_archive_is_refused_before_the_target_is_created(
        app, runner, app_config, newer, tmp_path, pg_server, absent_database):  # noqa: F811
    archive = newer_archive(app_config, tmp_path, newer)
    result = restore_into(runner, archive, absent_database, tmp_path)
    assert result.exit_code == 1
    assert "which this code does not know" in result.output
    assert "nothing was restored" in result.output
    assert not database_exists(pg_server, sa.engine.make_url(absent_database).database)


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_database_the_refused_restore_created_is_dropped(
        encrypted, identity, app, runner, app_config, newer, tmp_path, pg_server,  # noqa: F811
        absent_database):
    """An encrypted archive's manifest is read after its dump: the target was
    created before the refusal, and is dropped again."""
    archive = newer_archive(app_config, tmp_path, newer)
    assert archive.name.endswith(".age")
    result = restore_into(runner, archive, absent_database, tmp_path, "--identity",
                          str(identity[0]))
    assert result.exit_code == 1
    assert "which this code does not know" in result.output
    assert not database_exists(pg_server, sa.engine.make_url(absent_database).database)


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_database_that_was_there_is_kept_when_the_restore_is_refused(
        encrypted, identity, app, runner, app_config, newer, tmp_path, pg_server,  # noqa: F811
        new_pg_database):
    archive = newer_archive(app_config, tmp_path, newer)
    target = new_pg_database()  # empty, made by the operator
    result = restore_into(runner, archive, target, tmp_path, "--identity", str(identity[0]))
    assert result.exit_code == 1
    assert "which this code does not know" in result.output
    assert database_exists(pg_server, sa.engine.make_url(target).database)


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_database_the_failed_restore_created_is_dropped_and_one_it_filled_kept(
        app, runner, app_config, tmp_path, pg_server, absent_database):
    """Failed (the upgrade stops psql) into a database the restore created: dropped;
    the same archive restored by the code it was made with: created and kept."""
    add_people(app)
    archive = make_backup(runner)
    name = sa.engine.make_url(absent_database).database
    v2 = next_version(app_config, tmp_path, FAILING)
    result = restore_into(v2.test_cli_runner(), archive, absent_database, tmp_path)
    assert result.exit_code == 1 and "while upgrading the archive's schema" in result.output
    assert not database_exists(pg_server, name)
    result = restore_into(runner, archive, absent_database, tmp_path)
    assert result.exit_code == 0, result.output
    assert database_exists(pg_server, name) and versions(absent_database) == {HOST_HEAD,
                                                                                BACKUP_HEAD}
