"""Which migration folders the app imports is decided by the installed plugins and
the instance folder, never by the database: a restored database is the archive's
(found by a review: a signed archive with a ``schema_location`` row naming a folder
of its own uploads made Alembic import a ``.py`` member of it on the next
``restore-test``, ``setup``, restore or a fresh server's first request)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from guest_registration import create_app
from guest_registration.extensions import db
from tests.helpers import make_backup
from tests.test_pgscreen import forge_signed

PLANTED = '''"""planted by an archive"""
import os
open(os.environ["GR_PLANTED_MARKER"], "w").write("ran")
revision = "evil_0000"
down_revision = None
branch_labels = ("evil",)
depends_on = None
def upgrade():
    pass
def downgrade():
    pass
'''


def _with_row(backend: str, folder: Path):
    """``database.sql`` with one more ``schema_location`` row."""
    def change(dump: bytes) -> bytes:
        text = dump.decode()
        if backend == "sqlite":
            end = text.rstrip().rfind("COMMIT;")
            assert end > 0
            return (text[:end] + f"INSERT INTO \"schema_location\" VALUES('{folder}');\n"
                    + text[end:]).encode()
        head = "COPY public.schema_location (folder) FROM stdin;\n"
        assert head in text
        return text.replace(head, head + f"{folder}\n").encode()
    return change


def test_a_restored_row_naming_a_folder_of_the_archive_runs_nothing(app, runner, backend,
                                                                     tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    monkeypatch.setenv("GR_PLANTED_MARKER", str(marker))
    planted = Path(app.config["UPLOAD_FOLDER"]) / "docs"
    archive = make_backup(runner)
    forged = forge_signed(app, archive, tmp_path / "forged" / archive.name,
                          _with_row(backend, planted), {"uploads/docs/notes.py": PLANTED.encode()})
    result = runner.invoke(args=["restore", str(forged), "--replace", "--yes"])
    assert result.exit_code == 0, result.output
    assert (planted / "notes.py").is_file()  # an upload like any other, never imported
    with app.app_context(), db.engine.connect() as conn:
        assert str(planted) in conn.execute(sa.text("SELECT folder FROM schema_location")).scalars().all()

    assert runner.invoke(args=["status"]).exit_code == 0
    make_backup(runner)
    drill = runner.invoke(args=["restore-test"])
    assert drill.exit_code == 0, drill.output
    assert runner.invoke(args=["setup"]).exit_code == 0
    fresh = create_app(dict(app.config), instance_path=app.instance_path)
    assert fresh.test_client().get("/").status_code == 200
    assert not marker.exists(), "a file of the archive ran as the app"


def test_the_folders_of_plugins_are_remembered_in_the_instance_folder(app, tmp_path):
    from guest_registration.schema import LOCATIONS_FILE, remembered_locations, version_locations

    listed = Path(app.instance_path) / LOCATIONS_FILE
    assert listed.is_file()  # the app's setup wrote it
    assert listed.stat().st_mode & 0o077 == 0  # the instance folder's own: 0600
    with app.app_context():
        assert remembered_locations(app) == [f for f in version_locations(app)[1:]]
        with db.engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO schema_location (folder) VALUES (:f)"),
                         {"f": str(tmp_path)})
        assert str(tmp_path) not in version_locations(app)
    listed.write_text("{not json")
    with app.app_context():
        assert remembered_locations(app) == []  # a broken list: the loaded plugins only
