"""PROMETHEUS_MULTIPROC_DIR must be the metrics' own folder. ``serve`` removed every
``*.db`` file in it whose name ended in no live pid: set to the instance folder,
that was a SQLite deployment's database; set to a shared folder such as ``/tmp``,
it also made that folder 0700. It now removes only metric files of processes no
longer running, and refuses (leaving everything as it was) a folder that holds
other ``*.db`` files, that anyone may write to, or that belongs to another user."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys

import pytest

from guest_registration import create_app
from guest_registration import metrics_folder
from guest_registration.metrics import MULTIPROC_ENV
from guest_registration.metrics_folder import MetricsFolderError, prepare_folder, use_folder
from tests.helpers import ROOT, make_config
from tests.live_server import free_port

TOKEN = "metrics-folder-test-token"


@pytest.fixture(autouse=True)
def _environment_restored(monkeypatch):
    """prepare_folder names the folder in this process's environment."""
    monkeypatch.setenv(MULTIPROC_ENV, "placeholder")
    monkeypatch.delenv(MULTIPROC_ENV)


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def _app(tmp_path, folder):
    return create_app(make_config(tmp_path, f"sqlite:///{tmp_path / 'x.db'}", METRICS_TOKEN=TOKEN,
                                  PROMETHEUS_MULTIPROC_DIR=str(folder)),
                      instance_path=str(tmp_path / "instance"))


def _state(folder) -> tuple:
    return (stat.S_IMODE(folder.stat().st_mode),
            sorted((p.name, p.read_bytes()) for p in folder.iterdir()))


def test_serve_refuses_the_instance_folder_and_the_database_stays(tmp_path):
    """The folder set to the instance folder, where the default SQLite database
    lives: ``serve`` deleted ``guest_registration.db`` and started."""
    instance = tmp_path / "instance"
    instance.mkdir(mode=0o700)
    database = instance / "guest_registration.db"
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE guest (name TEXT)")
        conn.execute("INSERT INTO guest VALUES ('Ada')")
    conn.close()
    env = {**os.environ, "INSTANCE_PATH": str(instance), "DATABASE_URL": f"sqlite:///{database}",
           "METRICS_TOKEN": TOKEN, MULTIPROC_ENV: str(instance)}
    done = subprocess.run([sys.executable, "manage.py", "serve", "--port", str(free_port())],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr[-800:]
    assert (f"Error: PROMETHEUS_MULTIPROC_DIR {instance} holds files that are not metrics "
            f"(guest_registration.db)") in done.stderr
    assert "Traceback" not in done.stderr
    with sqlite3.connect(database) as conn:
        assert conn.execute("SELECT name FROM guest").fetchall() == [("Ada",)]
    conn.close()


def test_only_the_metric_files_of_dead_processes_are_removed(tmp_path):
    folder = tmp_path / "metrics"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    gone, mine = _dead_pid(), os.getpid()
    dead = [f"counter_{gone}.db", f"histogram_{gone}.db", f"summary_{gone}.db",
            f"gauge_all_{gone}.db", f"gauge_livemostrecent_{gone}.db"]
    kept = [f"counter_{mine}.db", f"gauge_max_{mine}.db", "notes.txt", f"counter_{gone}.db.bak"]
    for name in dead + kept:
        (folder / name).write_bytes(b"")
    assert prepare_folder(_app(tmp_path, folder)) == str(folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted(kept)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert os.environ[MULTIPROC_ENV] == str(folder)


def test_a_missing_folder_is_created_private(tmp_path):
    folder = tmp_path / "a" / "metrics"
    assert prepare_folder(_app(tmp_path, folder)) == str(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


@pytest.mark.parametrize("case, why", [
    ("foreign", "holds files that are not metrics (backup_7.db, counter_x.db, "
                "guest_registration.db and 1 more)"),
    ("sticky", "is a shared folder"),
    ("world-writable", "is a shared folder"),
    ("another user's", "belongs to another user"),
])
def test_a_folder_that_is_not_the_metrics_own_is_refused_as_it_is(tmp_path, monkeypatch, case,
                                                                   why):
    folder = tmp_path / "metrics"
    folder.mkdir()
    (folder / f"counter_{_dead_pid()}.db").write_bytes(b"stale")
    if case == "foreign":
        for name in ("guest_registration.db", "backup_7.db", "counter_x.db", "z.db"):
            (folder / name).write_bytes(b"data")
        os.chmod(folder, 0o700)
    elif case == "sticky":
        os.chmod(folder, 0o1777)  # as /tmp
    elif case == "world-writable":
        os.chmod(folder, 0o777)
    else:
        os.chmod(folder, 0o755)
        real = os.geteuid()
        monkeypatch.setattr(metrics_folder.os, "geteuid", lambda: real + 1)
    before = _state(folder)
    app = _app(tmp_path, folder)
    with pytest.raises(MetricsFolderError, match="give the metrics a folder of their own") as err:
        prepare_folder(app)
    assert f"PROMETHEUS_MULTIPROC_DIR {folder} {why}" in err.value.message
    with pytest.raises(MetricsFolderError):
        use_folder(app)  # manage.py worker: the same
    assert _state(folder) == before
    assert MULTIPROC_ENV not in os.environ


def test_a_file_in_its_place_or_on_its_way_is_refused(tmp_path):
    path = tmp_path / "metrics"
    path.write_bytes(b"not a folder")
    with pytest.raises(MetricsFolderError, match="is not a folder"):
        prepare_folder(_app(tmp_path, path))
    with pytest.raises(MetricsFolderError, match="metrics/inside cannot be created"):
        prepare_folder(_app(tmp_path, path / "inside"))
    assert path.read_bytes() == b"not a folder"
