"""What a killed SQLite restore or restore drill leaves, whose a new database is,
a symlinked name of the database, and a file where an archive has a folder
(review findings of the full restore).

The loaded copy of an SQLite restore (``.<db>.restoring``) and a drill's scratch
folder hold every guest of the archive, erased ones too until the ledger is
re-applied: what a SIGKILL left must not stay for good."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from guest_registration.extensions import db
from tests.helpers import db_engine_of, make_backup, missing
from tests.test_erasure import add_people
from tests.test_restore_kill_upgrade_review import killed_while_upgrading, leftovers

ERASED_DOCUMENT = "AB 123 456"


def _erased_rows(paths, guest_id: int) -> list:
    found = []
    for path in paths:
        try:
            with sqlite3.connect(path) as con:
                found += [(str(path), *row) for row in con.execute(
                    "SELECT id, document_number FROM guest WHERE id = ?", (guest_id,))]
        except sqlite3.Error:
            pass
    return [row for row in found if row[2] == ERASED_DOCUMENT]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_restore_killed_with_sigkill_leaves_no_copy_after_the_next_backup(
        app, runner, app_config, tmp_path):
    ids = add_people(app)
    archive = make_backup(runner)
    assert runner.invoke(args=["erase", "--guest", str(ids["jana"]), "--yes"]).exit_code == 0
    killed_while_upgrading(app_config, tmp_path, ["restore", str(archive), "--replace", "--yes"],
                           signal.SIGKILL)
    assert leftovers(tmp_path), "the kill came too late to leave the loaded copy"
    assert runner.invoke(args=["backup"]).exit_code == 0
    left = leftovers(tmp_path)
    assert not left, (left, _erased_rows([tmp_path / n for n in left], ids["jana"]))


@pytest.mark.parametrize("backend", ["sqlite"])
def test_status_removes_a_killed_restores_copy_and_the_lock_removes_it_too(app, runner,
                                                                           tmp_path):
    with app.app_context():
        live = Path(db.engine.url.database)
    copy = live.with_name(f".{live.name}.restoring")
    for path in (copy, Path(f"{copy}-journal")):
        path.write_bytes(b"guest data")
    runner.invoke(args=["status"])
    assert not copy.exists() and not Path(f"{copy}-journal").exists()
    copy.write_bytes(b"guest data")
    with db_engine_of(app).exclusive(f"sqlite:///{live}"):  # an erasure, a restore
        assert not copy.exists()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_running_restores_copy_and_the_contents_kept_aside_stay(app, runner, tmp_path,
                                                                  caplog):
    """A backup while a restore holds the lock leaves its copy; the previous
    contents a restore kept aside may be the only copy of them: never removed,
    logged instead."""
    with app.app_context():
        live = Path(db.engine.url.database)
    copy = live.with_name(f".{live.name}.restoring")
    kept = live.with_name(f".{live.name}.before-restore")
    copy.write_bytes(b"a running restore's copy")
    kept.write_bytes(b"the database as it was")
    engine = db_engine_of(app)
    with engine.exclusive(f"sqlite:///{live}"):
        copy.write_bytes(b"a running restore's copy")
        assert runner.invoke(args=["backup"]).exit_code == 0
        assert copy.exists()
    with caplog.at_level(logging.WARNING):
        runner.invoke(args=["status"])
    assert kept.read_bytes() == b"the database as it was"
    assert not copy.exists()
    with caplog.at_level(logging.WARNING):
        with engine.exclusive(f"sqlite:///{live}"):
            pass
    assert kept.exists() and str(kept) in caplog.text


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_drill_killed_with_sigkill_leaves_nothing_once_the_next_drill_ran(
        app, runner, app_config, tmp_path, monkeypatch):
    ids = add_people(app)
    make_backup(runner)
    assert runner.invoke(args=["erase", "--guest", str(ids["jana"]), "--yes"]).exit_code == 0
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    killed_while_upgrading(app_config, tmp_path, ["restore-test"], signal.SIGKILL)
    files = [p for p in tmp.rglob("*") if p.is_file()]
    assert _erased_rows(files, ids["jana"]), "the kill came too late to leave the copy"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # a drill running in another process keeps its folders
        running = [tmp / f"gr-drill-{sleeper.pid}-abc", tmp / f"gr-drill-uploads-{sleeper.pid}-x"]
        for folder in running:
            folder.mkdir()
        (tmp / "gr-drill-olderformat").mkdir()  # not named with a process: not ours to say
        assert runner.invoke(args=["restore-test"]).exit_code == 0
        left = sorted(p.name for p in tmp.iterdir())
    finally:
        sleeper.kill()
        sleeper.wait()
    files = [p for p in tmp.rglob("*") if p.is_file()]
    assert not _erased_rows(files, ids["jana"])
    assert left == sorted(["gr-drill-olderformat", *(p.name for p in running)]), left


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_root_restore_into_a_new_sqlite_file_is_the_folder_owners(app, runner, tmp_path):
    if os.geteuid() != 0:
        missing("REQUIRE_PGBACKREST", "a restore as root into another user's folder needs root")
    archive = make_backup(runner)
    svc = tmp_path / "svc"
    svc.mkdir(mode=0o700)
    os.chown(svc, 65534, 65534)
    target = svc / "new.db"
    result = runner.invoke(args=["restore", str(archive), "--database-url", f"sqlite:///{target}",
                                 "--uploads", str(svc / "up"), "--yes"])
    assert result.exit_code == 0, result.output
    owners = {p.name: p.stat().st_uid for p in svc.iterdir()}
    assert set(owners.values()) == {65534}, owners
    assert target.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_restore_through_a_symlinked_name_waits_for_the_databases_lock(app, runner,
                                                                        tmp_path):
    add_people(app)
    archive = make_backup(runner)
    with app.app_context():
        real = Path(db.engine.url.database)
    link = tmp_path / "elsewhere"
    link.mkdir()
    (link / real.name).symlink_to(real)
    with db_engine_of(app).exclusive(f"sqlite:///{real}"):  # as an erasure holds it
        result = runner.invoke(args=["restore", str(archive), "--replace", "--yes",
                                     "--database-url", f"sqlite:///{link / real.name}"])
    assert result.exit_code == 75, (result.exit_code, result.output)
    assert not [p for p in link.iterdir() if p.name != real.name]  # no copy beside the link


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_file_where_the_archive_has_a_folder_is_kept_and_the_rest_restored(app, runner,
                                                                             tmp_path, caplog):
    add_people(app)
    uploads = Path(app.config["UPLOAD_FOLDER"])
    (uploads / "docs" / "sub").mkdir(parents=True)
    (uploads / "docs" / "terms.txt").write_text("terms v1")
    (uploads / "docs" / "sub" / "deep.txt").write_text("deep")
    (uploads / "other.txt").write_text("other")
    archive = make_backup(runner)
    target = tmp_path / "up2"
    target.mkdir()
    (target / "docs").write_text("an unrelated file named docs")
    with caplog.at_level(logging.WARNING):
        result = runner.invoke(args=["restore", str(archive), "--database-url",
                                     f"sqlite:///{tmp_path / 'other.db'}",
                                     "--uploads", str(target), "--yes"])
    assert result.exit_code == 0, result.output
    assert (target / "docs").read_text() == "an unrelated file named docs"
    assert (target / "other.txt").read_text() == "other"
    assert "uploads/docs/terms.txt" in caplog.text and "uploads/docs/sub/deep.txt" in caplog.text
    assert "2 existing files kept as they were" in result.output, result.output
