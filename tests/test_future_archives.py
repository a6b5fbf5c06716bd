"""An archive signed with a creation time in the future (a backup made while the
clock ran ahead, or forged with a trusted key) is not counted as a backup (found by
a review: it stayed "the newest" until that time, so health called a backup folder
fresh that had had no backup for days, every restore drill restored it instead of
the newest real one, and retention's "last 1" kept it and deleted the backup just
made). It is reported, kept, and counted again once its time has come."""

from __future__ import annotations

import json
import time
from pathlib import Path
from datetime import datetime, timedelta

import pytest

import guest_backup.ops.create as create_mod


class _Ahead(datetime):
    @classmethod
    def now(cls, tz=None):
        return datetime.now(tz) + timedelta(days=300)


def _backup(runner, monkeypatch, ahead: bool = False) -> str:
    monkeypatch.setattr(create_mod, "datetime", _Ahead if ahead else datetime)
    try:
        result = runner.invoke(args=["backup"])
    finally:
        monkeypatch.setattr(create_mod, "datetime", datetime)
    assert result.exit_code == 0, result.output
    return result.output.strip().splitlines()[-1].rsplit("/", 1)[-1]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_health_and_the_drill_do_not_count_an_archive_dated_in_the_future(app, runner,
                                                                          monkeypatch):
    future = _backup(runner, monkeypatch, ahead=True)
    real = _backup(runner, monkeypatch)
    drill = runner.invoke(args=["restore-test"])
    assert drill.exit_code == 0, drill.output
    assert real in drill.output and future not in drill.output
    time.sleep(2.2)
    health = runner.invoke(args=["backup-health", "--max-age", "2s"])
    report = json.loads(health.output)
    assert health.exit_code == 1, health.output
    assert report["last_drill"]["target"] == real
    local = next(s for s in report["storages"] if s["name"] == "local")
    assert local["newest"]["name"] == real and local["newest"]["age_seconds"] >= 2
    ids = [p["id"] for p in report["problem_ids"]]
    assert "old_archive" in ids and "future_archive" in ids, ids
    text = next(p["text"] for p in report["problem_ids"] if p["id"] == "future_archive")
    assert future in text and "check this machine's clock" in text
    listed = runner.invoke(args=["backup-list"])
    assert real in listed.output


@pytest.mark.parametrize("backend", ["sqlite"])
def test_retention_keeps_the_archive_made_now_and_the_one_dated_in_the_future(app, runner,
                                                                              monkeypatch):
    future = _backup(runner, monkeypatch, ahead=True)
    time.sleep(1.1)
    real = _backup(runner, monkeypatch)
    app.config["BACKUP_KEEP"] = 1
    pruned = runner.invoke(args=["backup-prune"])
    assert pruned.exit_code == 0, pruned.output
    assert f"{real}  keep (last 1)" in pruned.output, pruned.output
    assert f"{future}  keep (signed with a creation time in the future" in pruned.output
    print(pruned.output)
    folder = Path(app.config["BACKUP_FOLDER"])
    assert (folder / future).is_file() and (folder / real).is_file()
