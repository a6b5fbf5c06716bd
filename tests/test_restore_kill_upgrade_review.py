"""A restore or a browse opening killed while it upgrades the loaded copy, and a
browse session opened before an upgrade of the code (review findings).

The loaded copy of an SQLite restore (``.<db>.restoring``) holds every guest of
the archive, erased ones too until the ledger is re-applied: it must not outlive
the command (SIGTERM: removed, audited ``aborted``, like Ctrl-C) nor the session
(SIGKILL: removed when the orphaned session is reaped). A scratch copy loaded at
other schema heads than the code's is stale: it is reloaded, not restored from."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from guest_registration import create_app, hookimpl
from guest_registration.extensions import db
from tests.helpers import ROOT, make_backup
from tests.test_erasure import add_people
from tests.test_migrations import HOST_HEAD

#: a new release's revision that waits, once it started, until it is killed
SLOW = textwrap.dedent('''
    """Revision ID: 9000_slow
    Revises: {head}
    """
    import os, time
    revision, down_revision, branch_labels, depends_on = "9000_slow", "{head}", None, None

    def upgrade():
        open(os.environ["GR_TEST_UPGRADING"], "w").close()
        time.sleep(60)

    def downgrade():
        pass
''')

#: the command run with that release, in a process of its own (to be killed)
CHILD = textwrap.dedent('''
    import sys
    from guest_registration import create_app, hookimpl
    class Newer:
        @hookimpl
        def register_migrations(self):
            return [sys.argv[3]]
    app = create_app(eval(sys.argv[1]), instance_path=sys.argv[2],
                     extra_plugins=[("newer", Newer())])
    app.test_cli_runner().invoke(args=sys.argv[4:], catch_exceptions=False)
''')

#: a new release's revision: a column, filled for every guest (a data migration)
DATA_MIGRATION = textwrap.dedent('''
    """Revision ID: 9000_test_note
    Revises: {head}
    """
    import sqlalchemy as sa
    from alembic import op
    revision, down_revision, branch_labels, depends_on = "9000_test_note", "{head}", None, None

    def upgrade():
        with op.batch_alter_table("guest") as batch:
            batch.add_column(sa.Column("test_note", sa.String(40), nullable=True))
        op.execute("UPDATE guest SET test_note = 'migrated'")

    def downgrade():
        with op.batch_alter_table("guest") as batch:
            batch.drop_column("test_note")
''')


class Newer:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @hookimpl
    def register_migrations(self):
        return [str(self.folder)]


def killed_while_upgrading(app_config, tmp_path: Path, args, sig: int) -> None:
    """``args`` run with the slow release, sent ``sig`` inside its upgrade of the loaded copy."""
    versions = tmp_path / "slow"
    versions.mkdir()
    (versions / "9000_slow.py").write_text(SLOW.format(head=HOST_HEAD))
    marker = tmp_path / "upgrading"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, repr(dict(app_config)),
                             str(tmp_path / "instance"), str(versions), *args], cwd=ROOT,
                            env={**os.environ, "GR_TEST_UPGRADING": str(marker)})
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), "the load never reached the upgrade"
    finally:
        proc.send_signal(sig)
        proc.wait(30)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".restoring" in p.name)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_restore_ended_by_sigterm_removes_its_copy_and_is_audited(app, runner, app_config,
                                                                     tmp_path):
    ids = add_people(app)
    archive = make_backup(runner)
    assert runner.invoke(args=["erase", "--guest", str(ids["jana"]), "--yes"]).exit_code == 0
    killed_while_upgrading(app_config, tmp_path, ["restore", str(archive), "--replace", "--yes"],
                           signal.SIGTERM)  # systemctl stop, kill, a timeout
    assert not leftovers(tmp_path), "the loaded copy (with the erased guest) was left"
    with app.app_context():
        outcome = db.session.execute(sa.text(
            "SELECT outcome FROM audit_log WHERE action = 'restore' ORDER BY id DESC")).first()
        erased = db.session.execute(sa.text("SELECT count(*) FROM guest WHERE id = :i AND "
                                            "document_number = 'AB 123 456'"),
                                    {"i": ids["jana"]}).scalar_one()
    assert outcome is not None and outcome[0] == "aborted", outcome
    assert erased == 0


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["term", "kill"])
def test_a_browse_opening_killed_leaves_no_copy_once_reaped(app, runner, app_config, tmp_path,
                                                           sig):
    from guest_backup.ops.browse import reap
    from guest_backup.wiring import backup_context

    ids = add_people(app)
    archive = make_backup(runner)
    assert runner.invoke(args=["erase", "--guest", str(ids["jana"]), "--yes"]).exit_code == 0
    killed_while_upgrading(app_config, tmp_path, ["restore-select", archive.name,
                                                  "--registration", "1", "--dry-run"], sig)
    reap(backup_context(app))  # the orphaned (or failed) opening goes (any later browse does it)
    browse = tmp_path / "instance" / "browse"
    left = sorted(p.name for p in browse.iterdir() if not p.name.startswith("sessions.json"))
    assert not left, f"left in {browse}: {left}"


@pytest.mark.parametrize("backend", ["sqlite"])
def test_reaping_removes_scratch_files_of_no_session(app, runner, tmp_path):
    """Files an earlier version left for sessions no longer registered go too."""
    from guest_backup.ops.browse import reap, sessions
    from guest_backup.wiring import backup_context

    add_people(app)
    archive = make_backup(runner)
    opened = runner.invoke(args=["restore-select", archive.name, "--registration", "1",
                                 "--dry-run", "--keep-open"])
    assert opened.exit_code == 0, opened.output
    browse = tmp_path / "instance" / "browse"
    stray = [browse / ".0123456789abcdef.db.restoring", browse / "0123456789abcdef.db.lock",
             browse / ".0123456789abcdef.db.restoring-journal"]
    for path in stray:
        path.write_bytes(b"guest data")
    ctx = backup_context(app)
    [session] = sessions(ctx)
    reap(ctx)
    assert not [p for p in stray if p.exists()]
    assert Path(session.database).is_file()  # a registered session keeps its copy
    session.close()


def test_a_session_opened_before_an_upgrade_is_reloaded_after_it(app, runner, app_config,
                                                                  tmp_path, backend):
    from guest_backup.ops.browse import find_session, get_session, sessions
    from guest_backup.wiring import backup_context

    ids = add_people(app)
    archive = make_backup(runner)
    with app.app_context():
        reg = db.session.execute(sa.text("SELECT registration_id FROM guest WHERE id = :i"),
                                 {"i": ids["petr"]}).scalar_one()
    opened = runner.invoke(args=["restore-select", archive.name, "--registration", str(reg),
                                 "--dry-run", "--keep-open"])  # looked at, left open
    assert opened.exit_code == 0, opened.output
    [before] = sessions(backup_context(app))
    folder = tmp_path / "newer"  # a new release: one more host revision, then setup
    folder.mkdir()
    (folder / "9000_test_note.py").write_text(DATA_MIGRATION.format(head=HOST_HEAD))
    code = create_app(dict(app_config), instance_path=str(tmp_path / "instance"),
                      extra_plugins=[("newer", Newer(folder))])
    ctx = backup_context(code)
    try:
        assert code.test_cli_runner().invoke(args=["setup"]).exit_code == 0
        assert get_session(ctx, before.id) is None
        assert find_session(ctx, archive.name) is None
        with code.app_context():
            db.session.execute(sa.text("DELETE FROM guest WHERE registration_id = :r"),
                               {"r": reg})
            db.session.execute(sa.text("DELETE FROM registration WHERE id = :r"), {"r": reg})
            db.session.commit()
        result = code.test_cli_runner().invoke(args=["restore-select", archive.name,
                                                     "--registration", str(reg), "--yes"])
        assert result.exit_code == 0, result.output
        with code.app_context():
            notes = db.session.execute(sa.text("SELECT test_note FROM guest WHERE "
                                               "registration_id = :r"), {"r": reg}).scalars().all()
        assert notes and all(n == "migrated" for n in notes), notes
        assert not Path(before.database).exists() or before.dialect != "sqlite"
    finally:
        for session in sessions(ctx):
            session.close()
        before.close()
        with code.app_context():  # the app fixture's teardown drops what it knows of
            db.engine.dispose()
