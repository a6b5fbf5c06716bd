"""Retention with restic's rules (keep-last/daily/weekly/monthly), on many
archives, through ``backup-prune [--dry-run]`` and after each backup."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, timedelta
from pathlib import Path

import pytest

from guest_registration.extensions import db
from guest_registration.models import AuditEntry
from guest_backup.archive.format import name_time
from guest_backup.ops.retention import Policy, plan
from tests.helpers import sealed

TODAY = date(2026, 11, 26)


def name(day: date, hour: int = 3, suffix: str = ".zip") -> str:
    return f"system_backup_{day:%Y%m%d}_{hour:02d}0000{suffix}"


def newest_per(days: list[date], key, count: int) -> set[date]:
    """Independent of the code under test: group by bucket, take the newest day of
    each of the ``count`` newest buckets."""
    groups: dict = defaultdict(list)
    for d in days:
        groups[key(d)].append(d)
    return {max(groups[k]) for k in sorted(groups, reverse=True)[:count]}


@pytest.mark.parametrize("backend", ["sqlite"])
def test_400_daily_archives_keep_exactly_restics_set(app, runner, backend):
    folder = Path(app.config["BACKUP_FOLDER"])
    days = [TODAY - timedelta(days=i) for i in range(400)]
    extra = [name(TODAY, 1), name(TODAY - timedelta(days=1), 1)]  # an older one the same day
    sealed(app, folder, [name(d) for d in days] + extra)
    app.config.update(BACKUP_KEEP=2, BACKUP_KEEP_DAILY=7, BACKUP_KEEP_WEEKLY=4,
                      BACKUP_KEEP_MONTHLY=12)
    archives = lambda: sorted(p.name for p in folder.iterdir()  # noqa: E731
                              if p.name.startswith("system_") and not p.name.endswith(".sig"))
    before = archives()
    dry = runner.invoke(args=["backup-prune", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert archives() == before  # nothing removed
    lines = dry.output.strip().splitlines()
    assert len(lines) == 403 and lines[-1].startswith("would remove")

    kept_days = (set(sorted(days, reverse=True)[:7])
                 | newest_per(days, lambda d: d.isocalendar()[:2], 4)
                 | newest_per(days, lambda d: (d.year, d.month), 12))
    expected = {name(d) for d in kept_days} | {name(TODAY), name(TODAY, 1)}  # last 2 archives
    for line in lines[:-1]:
        archive, verdict = line.split("  ", 1)
        assert verdict.startswith("keep (") == (archive in expected), line
    assert f"{name(TODAY)}  keep (last 1, daily 2026-11-26, weekly 2026-W48, monthly 2026-11)" \
        in lines
    assert f"{name(TODAY, 1)}  keep (last 2)" in lines
    assert f"{name(TODAY - timedelta(days=1), 1)}  remove" in lines  # not its day's newest

    done = runner.invoke(args=["backup-prune"])
    assert done.exit_code == 0, done.output
    assert set(archives()) == expected
    # 7 days, one more of the newest day (last 2), 2 older weeks' Sundays (W47's is
    # inside the 7 days), 11 older month ends
    assert len(expected) == 1 + 7 + 2 + 11
    with app.app_context():
        entry = db.session.query(AuditEntry).filter_by(action="prune").one()
        assert entry.outcome == "ok" and entry.message.startswith(f"local: removed {402 - len(expected)} of 402")


def test_no_rule_keeps_everything_and_the_newest_is_always_kept():
    names = [name(TODAY - timedelta(days=i)) for i in range(5)]
    dated = lambda names: [(n, name_time(n)) for n in names]  # noqa: E731
    assert all(d.keep for d in plan(dated(names), Policy()))
    decisions = plan(dated(names + ["system_backup_20261126_235959.zip.age"]),
                     Policy(monthly=1))
    kept = [d.name for d in decisions if d.keep]
    assert kept == ["system_backup_20261126_235959.zip.age"]  # the newest, also the month's
    decisions = plan(dated(names), Policy(weekly=1))
    assert decisions[0].describe() == "keep (weekly 2026-W48)"
    assert [d.keep for d in decisions].count(True) == 1


def test_pruning_after_a_backup_removes_sidecars_and_never_the_new_archive(app, runner):
    folder = Path(app.config["BACKUP_FOLDER"])
    old = [name(TODAY - timedelta(days=i), suffix=".zip.age") for i in range(1, 4)]
    sealed(app, folder, old)
    app.config.update(BACKUP_KEEP=1)
    result = runner.invoke(args=["backup"])
    assert result.exit_code == 0, result.output
    left = sorted(p.name for p in folder.iterdir() if p.name.startswith("system_"))
    new = Path(result.output.strip().splitlines()[-1]).name
    assert left == [new, new + ".sig"]
