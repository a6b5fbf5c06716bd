"""A migration that fails halfway leaves the database as it was, on SQLite too, and
``setup`` says so in one line (found by review: on SQLite each schema change of
the failing revision had committed on its own, so a table it created and Alembic's
``_alembic_tmp_guest`` stayed, and every later ``setup`` failed with "cannot connect
… table _alembic_tmp_guest already exists"; the failure itself was a traceback)."""

from __future__ import annotations

import sqlalchemy as sa

from guest_registration import create_app
from tests.test_archive_schema import NewerCode
from tests.test_migrations import HOST_HEAD

FAILING = '''"""Unique first names, on data with duplicates: fails after its first steps."""
import sqlalchemy as sa
from alembic import op
revision = "9100_fails"
down_revision = "{head}"
branch_labels = None
depends_on = None
def upgrade():
    op.create_table("gr_extra", sa.Column("id", sa.Integer, primary_key=True))
    with op.batch_alter_table("guest") as batch:
        batch.add_column(sa.Column("nick", sa.String(40), nullable=True))
        batch.create_unique_constraint("uq_guest_first_name", ["first_name"])
def downgrade():
    pass
'''


def _shape(url: str) -> tuple[set, set, set]:
    engine = sa.create_engine(url.replace("postgresql:", "postgresql+psycopg2:"))
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            return (set(inspector.get_table_names()),
                    {c["name"] for c in inspector.get_columns("guest")},
                    set(conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars()))
    finally:
        engine.dispose()


def test_a_failing_migration_changes_nothing_and_setup_runs_again(app, runner, app_config,
                                                                  tmp_path):
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    url = app_config["DATABASE_URL"]
    engine = sa.create_engine(url.replace("postgresql:", "postgresql+psycopg2:"))
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE guest SET first_name = 'Same'"))
    before = _shape(url)
    folder = tmp_path / "failing"
    folder.mkdir()
    (folder / "9100_fails.py").write_text(FAILING.format(head=HOST_HEAD))
    code = create_app(dict(app_config), instance_path=app.instance_path,
                      extra_plugins=[("newer", NewerCode(folder))])
    out = code.test_cli_runner().invoke(args=["setup"])
    assert out.exit_code == 1, out.output
    assert "the schema upgrade failed (IntegrityError" in out.output
    assert "nothing was changed" in out.output and "Traceback" not in out.output
    assert "Same" not in out.output  # no row's value
    assert _shape(url) == before

    with engine.begin() as conn:  # the data mended: the same setup goes through
        conn.execute(sa.text("UPDATE guest SET first_name = first_name || id"))
    engine.dispose()
    again = code.test_cli_runner().invoke(args=["setup"])
    assert again.exit_code == 0, again.output
    tables, columns, versions = _shape(url)
    assert "gr_extra" in tables and "nick" in columns and "9100_fails" in versions
