"""An audit trail that survives a restore: entries written after the archive was
taken (and the final state of entries the archive holds as running) are carried
across a whole restore of the app's own database, followed by the restore's own
entry; a failed restore loses nothing either."""

from __future__ import annotations

import sqlalchemy as sa

from guest_registration import audit
from guest_registration.extensions import db
from tests.helpers import make_backup


def entries(app) -> list[tuple]:
    with app.app_context(), db.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(
            "SELECT id, action, outcome, actor, target FROM audit_log ORDER BY id"))]


def restore_replace(runner, archive):
    return runner.invoke(args=["restore", str(archive), "--replace", "--yes"])


def test_the_weeks_audit_entries_survive_a_whole_restore(app, runner):
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    archive = make_backup(runner)
    with app.app_context():  # the week after the archive: exports, a verify, a download
        for i in range(5):
            audit.record(db.engine, "export", "ok", actor=f"clerk{i}@example.com", via="api",
                         target=f"2026-{i + 1:02d} 100% \\ 'x'")  # psql text written in
        running = audit.start(db.engine, "export", actor="late@example.com", via="api")
        audit.finish(db.engine, running, "ok", rows=7)
    assert runner.invoke(args=["verify", str(archive)]).exit_code == 0
    before = entries(app)
    result = restore_replace(runner, archive)
    assert result.exit_code == 0, result.output
    after = entries(app)
    assert after[:len(before)] == before  # every entry, its id and final state
    (last,) = after[len(before):]
    assert last[1:3] == ("restore", "ok")  # then the restore's own entry
    with app.app_context():  # new entries get fresh ids
        fresh = audit.record(db.engine, "export", "ok", actor="next@example.com", via="api")
    assert fresh > last[0]


def test_a_failed_restore_loses_no_audit_entry(app, runner, tmp_path):
    archive = make_backup(runner)
    with app.app_context():
        audit.record(db.engine, "export", "ok", actor="x@example.com", via="api")
    before = entries(app)
    broken = tmp_path / archive.name
    broken.write_bytes(archive.read_bytes()[:-100])  # truncated: refused
    result = restore_replace(runner, broken)
    assert result.exit_code == 1
    after = entries(app)
    assert after[:len(before)] == before and after[-1][1:3] == ("restore", "failed")


def test_an_unexpected_restore_failure_is_called_a_restore_failure(app, runner, monkeypatch):
    """The safe message of an unexpected error named the backup ("the backup failed
    (TypeError)") in a restore's output and audit entry."""
    from guest_backup.ops import restore as restore_module

    archive = make_backup(runner)

    def broken(*args, **kwargs):
        raise TypeError("an internal detail")

    monkeypatch.setattr(restore_module, "_load", broken)
    result = restore_replace(runner, archive)
    assert result.exit_code == 1
    assert "the restore failed (TypeError)" in result.output
    assert "backup failed" not in result.output and "internal detail" not in result.output
    with app.app_context(), db.engine.connect() as conn:
        last = conn.execute(sa.text("SELECT message FROM audit_log WHERE action = 'restore' "
                                    "ORDER BY id DESC LIMIT 1")).scalar_one()
    assert "the restore failed (TypeError)" in last


def test_an_entry_written_while_the_dump_loads_is_carried_and_keeps_its_id(app, runner,
                                                                           monkeypatch):
    """An entry the live database got after the restore set the audit trail aside
    (a backup starting while the dump loads) was lost, and the restore's own
    entry took its id: that backup's end then rewrote the restore's entry (found
    by a race review). Now it is taken at the last moment and keeps its id."""
    from guest_backup.ops import finishing

    assert runner.invoke(args=["demo-data"]).exit_code == 0
    archive = make_backup(runner)
    real, started = finishing.AuditCarry.set_aside.__func__, []

    def set_aside(cls, *args, **kwargs):
        carry = real(cls, *args, **kwargs)
        with app.app_context():  # a backup begins while the dump loads
            started.append(audit.start(db.engine, "backup", actor="timer", via="cli"))
        return carry

    monkeypatch.setattr(finishing.AuditCarry, "set_aside", classmethod(set_aside))
    result = restore_replace(runner, archive)
    assert result.exit_code == 0, result.output
    (backup_id,) = started
    with app.app_context():  # the backup ends after the restore
        audit.finish(db.engine, backup_id, "ok", target="system_backup_x.zip")
    after = entries(app)
    assert (backup_id, "backup", "ok", "timer", "system_backup_x.zip") in after
    restores = [row for row in after if row[1] == "restore"]
    assert restores and restores[-1][2] == "ok" and restores[-1][0] > backup_id
    assert restores[-1][4] != "system_backup_x.zip"
