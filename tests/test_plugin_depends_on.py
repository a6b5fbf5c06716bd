"""A plugin whose first revision ``depends_on`` a host revision, as the
``register_migrations`` hookspec advises when its tables refer to the host's.
``upgrade heads`` then records the plugin's head and not the host head it
depends on; every check compared the version table with all of the code's heads,
so ``setup`` left the site on 503 for good and every restore was refused."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from guest_registration import create_app, hookimpl
from guest_registration.extensions import db
from guest_registration.schema import state
from tests.helpers import ADMIN, make_backup, make_config
from tests.test_archive_schema import columns, restore, versions
from tests.test_migrations import BACKUP_HEAD, HOST_HEAD

TAG = "tag_0000_branch"
PLUGIN_REV = '''"""A plugin's first revision, its table referring to the host's (depends_on).

Revision ID: tag_0000_branch
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "tag_0000_branch"
down_revision = None
branch_labels = ("tag",)
depends_on = "{host}"


def upgrade():
    op.create_table("gr_tag",
                    sa.Column("id", sa.Integer(), nullable=False),
                    sa.Column("guest_id", sa.Integer(),
                              sa.ForeignKey("guest.id", name="fk_gr_tag_guest_id_guest"),
                              nullable=False),
                    sa.PrimaryKeyConstraint("id", name=op.f("pk_gr_tag")))


def downgrade():
    op.drop_table("gr_tag")
'''

both = pytest.mark.parametrize("backend", ["sqlite", "postgresql"])


class TagPlugin:
    def __init__(self, folder) -> None:
        self.folder = folder

    @hookimpl
    def register_migrations(self):
        return [str(self.folder)]


@pytest.fixture
def tag_plugin(tmp_path, database_url) -> TagPlugin:
    folder = tmp_path / "tag-versions"
    folder.mkdir()
    (folder / f"{TAG}.py").write_text(PLUGIN_REV.format(host=HOST_HEAD))
    yield TagPlugin(folder)
    engine = sa.create_engine(database_url)  # its foreign key would stop the app's clean-up
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS gr_tag"))
    engine.dispose()


def _with_tag(app_config, tmp_path, tag_plugin, name="instance"):
    return create_app(dict(app_config), instance_path=str(tmp_path / name),
                      extra_plugins=[("tag", tag_plugin)])


def _setup(app) -> None:
    result = app.test_cli_runner().invoke(args=["setup", "--admin-email", ADMIN[0],
                                                "--admin-password", ADMIN[1]])
    assert result.exit_code == 0, result.output


def _serves(app) -> None:
    with app.app_context():
        kind, detail = state(app)
        db.engine.dispose()
    assert kind == "current", detail
    assert app.test_client().get("/").status_code == 200


@both
def test_setup_with_the_plugin_from_the_start_serves(tmp_path, tag_plugin, backend,
                                                     database_url):
    app = create_app(make_config(tmp_path, database_url), instance_path=str(tmp_path / "i"),
                     extra_plugins=[("tag", tag_plugin)])
    _setup(app)
    assert versions(database_url) == {BACKUP_HEAD, TAG}  # as Alembic records them
    _serves(app)


@both
def test_the_plugin_installed_later_serves(app, app_config, tmp_path, tag_plugin, backend):
    later = _with_tag(app_config, tmp_path, tag_plugin)
    _setup(later)
    assert "guest_id" in columns(app_config["DATABASE_URL"], "gr_tag")
    _serves(later)


@both
def test_an_archive_from_before_the_plugin_restores_with_it(
        app, runner, app_config, tag_plugin, tmp_path, backend, new_pg_database):
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    archive = make_backup(runner)
    code = _with_tag(app_config, tmp_path, tag_plugin)
    target = (f"sqlite:///{tmp_path / 'target.db'}" if backend == "sqlite"
              else new_pg_database())
    result = restore(code, archive, target)
    assert result.exit_code == 0, result.output
    assert versions(target) == {BACKUP_HEAD, TAG}
    assert "guest_id" in columns(target, "gr_tag")


@both
def test_an_archive_made_with_the_plugin_restores_with_it(
        app, runner, app_config, tag_plugin, tmp_path, backend, new_pg_database):
    code = _with_tag(app_config, tmp_path, tag_plugin)
    _setup(code)
    assert code.test_cli_runner().invoke(args=["demo-data"]).exit_code == 0
    archive = make_backup(code.test_cli_runner())
    target = (f"sqlite:///{tmp_path / 'target.db'}" if backend == "sqlite"
              else new_pg_database())
    result = restore(code, archive, target)
    assert result.exit_code == 0, result.output
    assert versions(target) == {BACKUP_HEAD, TAG}
    engine = sa.create_engine(target)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM guest")).scalar_one() > 0
    engine.dispose()
