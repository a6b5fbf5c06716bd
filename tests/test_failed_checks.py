"""Which archives' last check failed: one grouped query over the whole audit log.
It read the newest 5,000 verify and restore-test entries before, so an archive whose
failed check had 5,000 newer checks of other archives after it counted as unchecked
(retention removed it as a good archive), and each call built 10,000 rows."""

from __future__ import annotations

import time

import pytest

from guest_registration import audit
from guest_registration.extensions import db


@pytest.fixture
def backend():
    return "sqlite"


def check(target: str, outcome: str, action: str = "verify") -> int:
    return audit.record(db.engine, action, outcome, actor="cli:test", via="cli",
                        target=target, message=f"{target} {outcome}")


def many_checks(count: int, archives: int = 2_000) -> None:
    """``count`` ok checks of ``archives`` other archives (a daily backup for five
    years and more), in one statement."""
    from guest_registration.models import AuditEntry

    with db.engine.begin() as conn:
        conn.execute(AuditEntry.__table__.insert(), [
            {"action": ("verify", "restore-test")[n % 2], "outcome": "ok", "via": "cli",
             "target": f"system_backup_20250101_{n % archives:06d}.zip"}
            for n in range(count)])


def test_a_failed_check_behind_thousands_of_newer_ones_still_counts(app):
    from guest_backup.ops.retention import failed_checks

    with app.app_context():
        check("system_backup_20260101_030000.zip", "failed")
        check("system_backup_20260102_030000.zip", "failed")
        check("system_backup_20260102_030000.zip", "ok")  # checked again: good now
        audit.start(db.engine, "verify", actor="cli:test", via="cli",
                    target="system_backup_20260103_030000.zip")  # no verdict: not counted
        many_checks(12_000)
        found = failed_checks(audit, db.engine)
        assert list(found) == ["system_backup_20260101_030000.zip"]
        assert found["system_backup_20260101_030000.zip"]["action"] == "verify"
        assert found["system_backup_20260101_030000.zip"]["message"].endswith("failed")
        check("system_backup_20260101_030000.zip", "ok", action="restore-test")
        assert failed_checks(audit, db.engine) == {}


def test_it_stays_fast_with_a_long_log(app):
    from guest_backup.ops.retention import failed_checks

    with app.app_context():
        many_checks(100_000)
        check("system_backup_20260101_030000.zip", "failed", action="restore-test")
        took = []
        for _ in range(5):
            started = time.perf_counter()
            assert list(failed_checks(audit, db.engine)) == ["system_backup_20260101_030000.zip"]
            took.append(time.perf_counter() - started)
        print(sorted(took))
        assert sorted(took)[2] < 0.25
