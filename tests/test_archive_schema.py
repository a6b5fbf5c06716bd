"""Archives know their schema: the signed manifest records every branch's revision;
a restore (and a drill) loads an older archive and upgrades it to the code's
revisions in the same all-or-nothing step; an archive from a newer revision is
refused before anything is touched, naming both; verify shows the revisions."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import sqlalchemy as sa

from guest_registration import create_app, hookimpl
from guest_registration.extensions import db
from tests.helpers import ADMIN, make_backup, make_config
from tests.test_migrations import BACKUP_HEAD, HOST_HEAD, _legacy_create_all

THROWAWAY = '''"""A column added after the archive was taken (test only).

Revision ID: 9000_test_note
Revises: {head}
"""
import sqlalchemy as sa
from alembic import op

revision = "9000_test_note"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("guest") as batch:
        batch.add_column(sa.Column("test_note", sa.String(40), nullable=True))


def downgrade():
    with op.batch_alter_table("guest") as batch:
        batch.drop_column("test_note")
'''


class NewerCode:
    """The next version of the code: one more host revision."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @hookimpl
    def register_migrations(self):
        return [str(self.folder)]


@pytest.fixture
def newer(tmp_path) -> NewerCode:
    folder = tmp_path / "newer-versions"
    folder.mkdir()
    (folder / "9000_test_note.py").write_text(THROWAWAY.format(head=HOST_HEAD))
    return NewerCode(folder)


def restore(app, archive: Path, target: str):
    return app.test_cli_runner().invoke(args=["restore", str(archive), "--database-url", target,
                                              "--uploads", str(Path(archive).parent / "u"),
                                              "--yes"])


def columns(url: str, table: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return {c["name"] for c in sa.inspect(conn).get_columns(table)}
    finally:
        engine.dispose()


def versions(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return {r[0] for r in conn.execute(sa.text("SELECT version_num FROM alembic_version"))}
    finally:
        engine.dispose()


def later_app(tmp_path, app_config, newer, name="instance"):  # the same installation
    return create_app(dict(app_config), instance_path=str(tmp_path / name),
                      extra_plugins=[("newer", newer)])


@pytest.mark.parametrize("backend", ["sqlite"])
def test_an_older_archive_restores_at_the_new_head(app, runner, app_config, newer, tmp_path):
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    archive = make_backup(runner)
    manifest = json.loads(zipfile.ZipFile(archive).read("manifest.json"))
    assert set(manifest["schema"]["revisions"]) == {HOST_HEAD, BACKUP_HEAD}
    assert "schema: " in runner.invoke(args=["verify", str(archive)]).output
    code = later_app(tmp_path, app_config, newer)
    target = f"sqlite:///{tmp_path / 'target.db'}"
    result = restore(code, archive, target)
    assert result.exit_code == 0, result.output
    assert (f"schema upgraded from {HOST_HEAD}, {BACKUP_HEAD} to 9000_test_note, "
            f"{BACKUP_HEAD}") in result.output
    assert "test_note" in columns(target, "guest")
    assert versions(target) == {"9000_test_note", BACKUP_HEAD}
    engine = sa.create_engine(target)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM guest")).scalar_one() == \
            manifest["row_counts"]["guest"]
    engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_newer_archive_is_refused_by_older_code(app, runner, app_config, newer, tmp_path):
    # the newer code on a database of its own; then the older code put back (the
    # newer revisions gone from the disk, as an older release does not have them)
    code = later_app(tmp_path, dict(app_config, DATABASE_URL=f"sqlite:///{tmp_path / 'n.db'}"),
                     newer)
    setup = code.test_cli_runner().invoke(args=["setup"])
    assert setup.exit_code == 0, setup.output  # the database is now at 9000_test_note
    archive = make_backup(code.test_cli_runner())
    shutil.rmtree(newer.folder)
    target_file = tmp_path / "old-target.db"
    target_file.write_bytes(b"")
    before = target_file.read_bytes()
    result = restore(app, archive, f"sqlite:///{target_file}")
    assert result.exit_code == 1
    assert "at 9000_test_note, which this code does not know" in result.output
    assert HOST_HEAD in result.output and "nothing was restored" in result.output
    assert target_file.read_bytes() == before


@pytest.mark.parametrize("backend", ["sqlite"])
def test_an_archive_made_before_migrations_restores_into_head(tmp_path, database_url):
    """The first-revision fixture is made by the code: a database as the earlier
    create_all made it, backed up by this version's backup (no revisions in it)."""
    old = create_app(make_config(tmp_path, database_url, DATABASE_SCHEMA_CHECK=False),
                     instance_path=str(tmp_path / "old"))
    with old.app_context():
        _legacy_create_all(old)
    archive = make_backup(old.test_cli_runner())
    manifest = json.loads(zipfile.ZipFile(archive).read("manifest.json"))
    assert manifest["schema"]["revisions"] == []
    target = f"sqlite:///{tmp_path / 'target.db'}"
    result = restore(old, archive, target)
    assert result.exit_code == 0, result.output
    assert versions(target) == {HOST_HEAD, BACKUP_HEAD}
    check = create_app(make_config(tmp_path, target), instance_path=str(tmp_path / "check"))
    with check.app_context():
        from alembic import command

        from guest_registration.schema import alembic_config

        command.check(alembic_config(check))  # named constraints, as on a fresh database
        assert db.session.execute(sa.text("SELECT title FROM trip")).scalar_one() == "Alps"
    assert ADMIN  # the target needs no setup: it is served at once
    assert check.test_client().get("/").status_code == 200


@pytest.mark.parametrize("backend", ["sqlite"])
def test_an_archive_at_the_heads_is_planned_without_alembic(app, tmp_path, newer, monkeypatch):
    """The heads are remembered for the history as it is on disk: a restore at the
    code's heads plans nothing without Alembic; a new revision file, another set
    of folders or a damaged cache file sends the plan back to Alembic."""
    from alembic.script import ScriptDirectory

    from guest_backup.ops.schema import plan
    from guest_backup.wiring import migration_paths

    paths = migration_paths(later_app(tmp_path, dict(app.config), newer))
    at_heads = {"schema": {"revisions": ["9000_test_note", BACKUP_HEAD]}}
    asked = []
    real = ScriptDirectory.from_config.__func__

    def counted(cls, config):
        asked.append(1)
        return real(cls, config)

    monkeypatch.setattr(ScriptDirectory, "from_config", classmethod(counted))
    first = plan(paths, at_heads)
    assert len(asked) == 1 and not first.needed
    second = plan(paths, at_heads)
    assert len(asked) == 1 and not second.needed
    assert (second.heads, second.starts) == (first.heads, first.starts)
    # one more revision file in a history folder: Alembic is asked again, sees the head
    (newer.folder / "9001_test_more.py").write_text(
        THROWAWAY.replace("test_note", "test_more").replace("9000_test_more", "9001_test_more")
        .format(head="9000_test_note"))
    third = plan(paths, at_heads)
    assert len(asked) == 2 and third.needed
    assert third.heads == {"9001_test_more", BACKUP_HEAD}
    assert third.starts["9001_test_more"] == "9000_test_note"
    at_new_heads = {"schema": {"revisions": ["9001_test_more", BACKUP_HEAD]}}
    assert not plan(paths, at_new_heads).needed and len(asked) == 2  # remembered
    Path(paths.heads_cache).write_text("{not json")
    assert not plan(paths, at_new_heads).needed and len(asked) == 3
    older = migration_paths(app)  # the host alone: other folders, other heads
    assert plan(older, {"schema": {"revisions": [HOST_HEAD, BACKUP_HEAD]}}).needed \
        is False and len(asked) == 4
