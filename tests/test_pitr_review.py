"""Findings of the PITR review, on one real throwaway cluster for the module
(tests/pitr_cluster.py; the app reaches it over TCP, 127.0.0.1): browse and drill
scratch databases dropped in the recovered cluster, the audit trail carried into
it, SIGHUP ending `pitr restore` as Ctrl-C does, interrupted recoveries audited
``aborted``, a page job whose process died finishing its audit entry; and, without
a cluster, the libpq environment of a unix-socket URL and the signals a command
maps to Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest

from guest_backup.engines.libpq import pg_environment
from guest_backup.ops import jobs
from guest_backup.physical.state import retarget
from guest_backup.wiring import backup_context
from guest_registration import cli
from guest_registration.extensions import db
from tests.helpers import ADMIN, ROOT, make_backup, make_config
from tests.live_server import APP_ENV
from tests.pitr_cluster import TestCluster, add_registrations, require
from tests.test_pitr import pitr, restore, set_up

SOCKET = "/var/run/postgresql"  # the machine's own server


def test_a_socket_url_s_host_and_port_reach_the_libpq_tools():
    """``?host=/socket&port=N`` (what `pitr restore` prints for the recovered cluster)
    wins over the netloc, as SQLAlchemy connects: psql reaches the machine's server
    through its socket, not 127.0.0.1:1 where nothing listens."""
    url = f"postgresql://postgres@127.0.0.1:1/postgres?host={SOCKET}&port=5432"
    env = pg_environment(url)
    assert (env.get("PGHOST"), env.get("PGPORT")) == (SOCKET, "5432")
    out = subprocess.run(["psql", "-X", "-A", "-t", "-c", "SELECT inet_server_addr() IS NULL"],
                         env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == "t", out.stderr
    recovered = pg_environment(retarget(f"postgresql://app:pw@/guests?host={SOCKET}&port=5432",
                                        5433))
    assert (recovered["PGHOST"], recovered["PGPORT"]) == (SOCKET, "5433")
    several = pg_environment("postgresql://u@/db?host=a:5001&host=b:5002")
    assert (several["PGHOST"], several["PGPORT"]) == ("a,b", "5001,5002")


def test_sighup_and_sigquit_end_a_command_as_ctrl_c_but_serve_and_worker_keep_theirs(
        monkeypatch):
    names = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
    saved = {s: signal.getsignal(s) for s in names}
    monkeypatch.setattr(click.Group, "resolve_command",
                        lambda self, ctx, args: (args[0], None, args[1:]))
    try:
        for s in names:
            signal.signal(s, signal.SIG_DFL)
        signal.signal(signal.SIGQUIT, signal.SIG_IGN)  # nohup's: left as it is
        cli._sigterm_as_interrupt()
        assert signal.getsignal(signal.SIGHUP) is cli._interrupted
        assert signal.getsignal(signal.SIGQUIT) is signal.SIG_IGN
        signal.signal(signal.SIGQUIT, cli._interrupted)
        group = cli.GuestGroup(program=True)
        group.resolve_command(None, ["pitr", "restore"])
        assert all(signal.getsignal(s) is cli._interrupted for s in names)
        group.resolve_command(None, ["worker"])
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGQUIT) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGTERM) is cli._interrupted  # until RQ sets its own
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


@pytest.fixture(scope="module")
def pitr_setup(tmp_path_factory):
    """The cluster (TCP for the app), the app set up for PITR, 3 registrations and a
    full pgBackRest backup; (cluster, app, config)."""
    from guest_registration import create_app
    from guest_registration.maintenance import setup as set_up_app

    require()
    c = TestCluster.create(listen_addresses="'127.0.0.1'")
    c.url = lambda name, port=None: f"postgresql://postgres@127.0.0.1:{port or c.port}/{name}"
    tmp = tmp_path_factory.mktemp("pitr-review")
    try:
        c.start()
        c.sql("CREATE DATABASE guests")
        config = make_config(tmp, c.url("guests"), PITR_PG_DATA=str(c.data), PITR_PG_PORT=c.port,
                             PITR_PG_SOCKET=str(c.sock), PITR_FOLDER=str(c.base / "pgbackrest"),
                             PITR_ARCHIVE_TIMEOUT=10)
        app = create_app(config, instance_path=str(c.base / "instance"))
        with app.app_context():
            list(set_up_app(app, *ADMIN))
            db.session.remove()
        set_up(c, app)
        add_registrations(c, 3, "before")
        pitr(app, "backup", "--type", "full")
        yield c, app, config
        with app.app_context():
            db.engine.dispose()
    finally:
        c.cleanup()


def _whole(c, guest: str, database: str, port: int | None = None) -> str:
    return c.value(f"SELECT first_name || ' ' || document_number FROM guest WHERE id = {guest}",
                   database, port)


@pytest.fixture(scope="module")
def recovered(pitr_setup):
    """A browse session's scratch database and a drill's open at the moment, a guest
    erased after it, `pitr restore` to the moment; (output, port, erased guest,
    scratch names, the live audit trail before the restore)."""
    c, app, _ = pitr_setup
    runner = app.test_cli_runner()
    archive = make_backup(runner)
    out = runner.invoke(args=["browse", archive.name, "--search", "Guest"])
    assert out.exit_code == 0, out.output
    c.sql("CREATE DATABASE gr_drill_0123456789ab")
    scratch = [r[0] for r in c.sql("SELECT datname FROM pg_database WHERE datname LIKE "
                                   "'guest_browse_%' OR datname LIKE 'gr_drill_%' ORDER BY 1")]
    assert len(scratch) == 2, scratch
    time.sleep(1.2)
    moment = c.now()
    time.sleep(1.2)
    erased = c.value("SELECT min(id) FROM guest", "guests")
    out = runner.invoke(args=["erase", "--guest", erased, "--yes"])
    assert out.exit_code == 0, out.output
    live = c.sql("SELECT id, action, outcome FROM audit_log ORDER BY id", "guests")
    output, port = restore(app, c, moment, "recovered")
    try:
        yield output, port, erased, scratch, live
    finally:
        c.stop_other(c.base / "recovered")
        runner.invoke(args=["browse", archive.name, "--close"])
        c.sql("DROP DATABASE IF EXISTS gr_drill_0123456789ab")
        with app.app_context():
            db.engine.dispose()


def test_browse_and_drill_scratch_databases_are_dropped_in_the_recovered_cluster(
        pitr_setup, recovered):
    """Before, guest_browse_<id> came back in the recovered cluster with a guest erased
    after the moment whole (the ledger is re-applied in the app's database only)."""
    c, _, _ = pitr_setup
    output, port, erased, scratch, _ = recovered
    assert _whole(c, erased, "guests", port) == "[erased] [erased]"
    left = c.sql("SELECT datname FROM pg_database WHERE datname LIKE 'guest_browse_%' "
                 "OR datname LIKE 'gr_drill_%'", port=port)
    assert left == [], f"scratch databases left in the recovered cluster: {left}"
    assert f"dropped 2 scratch database(s) of browse sessions and restore drills " \
           f"({', '.join(scratch)})" in output, output


def test_the_audit_trail_is_carried_into_the_recovered_cluster(pitr_setup, recovered):
    """Before, the erasure's entry (after the moment) and the pitr-restore entry stayed
    in the running cluster only."""
    c, _, _ = pitr_setup
    _, port, _, _, live = recovered
    there = c.sql("SELECT id, action, outcome FROM audit_log ORDER BY id", "guests", port)
    missing = [row for row in live if row not in there]
    assert not missing, f"audit entries missing in the recovered cluster: {missing}"
    assert any(row[1] == "erase" for row in live), live
    done = c.sql("SELECT id, action, outcome FROM audit_log WHERE action = 'pitr-restore'",
                 "guests")
    assert done and done[-1] in there, (done, there[-3:])
    past = c.value("SELECT nextval(pg_get_serial_sequence('audit_log', 'id'))", "guests", port)
    assert int(past) > max(int(row[0]) for row in there)


def test_an_interrupted_restore_or_drill_is_audited_aborted(pitr_setup, monkeypatch):
    """Ctrl-C or SIGTERM during a recovery (here: raised where it recovers): before,
    only an Exception was audited, an interrupt left no entry."""
    from guest_backup.ops import pitr as pitr_ops

    c, app, _ = pitr_setup

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pitr_ops, "recover", interrupted)
    with app.app_context():
        ctx = backup_context()
        with pytest.raises(KeyboardInterrupt):
            pitr_ops.restore(ctx, db.engine, to="latest", into=str(c.base / "interrupted"),
                             port=None, actor="cli:test", via="cli")
        with pytest.raises(KeyboardInterrupt):
            pitr_ops.drill(ctx, db.engine, actor="cli:test", via="cli")
        db.engine.dispose()
    rows = c.sql("SELECT action, outcome, message FROM audit_log WHERE action IN "
                 "('pitr-restore', 'pitr-drill') ORDER BY id DESC LIMIT 2", "guests")
    assert rows == [["pitr-drill", "aborted", "interrupted"],
                    ["pitr-restore", "aborted", "interrupted"]], rows
    assert not list((c.base / "pgbackrest").glob("drill-*"))


def _manage_env(c, config: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in APP_ENV and not k.startswith("PITR_")}
    env.update({k: str(config[k]) for k in ("DATABASE_URL", "SECRET_KEY", "SECURITY_PASSWORD_SALT",
                                            "UPLOAD_FOLDER", "BACKUP_FOLDER", "PITR_PG_DATA",
                                            "PITR_PG_PORT", "PITR_PG_SOCKET", "PITR_FOLDER",
                                            "PITR_ARCHIVE_TIMEOUT")})
    env["INSTANCE_PATH"] = str(c.base / "instance")
    return env


def test_a_restore_whose_ssh_session_drops_leaves_no_copy_and_is_audited(pitr_setup):
    """SIGHUP (the SSH session of an hour-long restore dropping) once the recovered
    server has started, while it replays the WAL: before, the process died where it
    stood, the recovered cluster left running (erasures not re-applied), the folder
    full, no audit entry; a retry said only "not an empty folder"."""
    c, app, config = pitr_setup
    c.sql("CREATE TABLE junk AS SELECT g, repeat('x', 200) AS pad "
          "FROM generate_series(1, 1500000) g", "guests")  # WAL to replay: the window
    time.sleep(1.2)
    moment = c.now()
    into = c.base / "hup"
    proc = subprocess.Popen([sys.executable, "manage.py", "pitr", "restore", "--to", moment,
                             "--into", str(into)], cwd=ROOT, env=_manage_env(c, config),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (into / "postmaster.pid").exists():
            assert proc.poll() is None, f"the restore ended first: {proc.stdout.read()}"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGHUP)
        out = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    left = sorted(p.name for p in into.iterdir()) if into.exists() else []
    assert left == [], f"SIGHUP left {len(left)} entries in {into} ({out[-500:]})"
    last = c.sql("SELECT action, outcome FROM audit_log ORDER BY id DESC LIMIT 1", "guests")
    assert last == [["pitr-restore", "aborted"]], (last, out[-500:])


_JOB = r"""
import json, logging, os
from guest_registration import create_app
from guest_registration.extensions import db
from guest_backup.ops import jobs
from guest_backup.wiring import backup_context

app = create_app(json.loads(os.environ["JOB_CONFIG"]), instance_path=os.environ["JOB_INSTANCE"])
with app.app_context():
    ctx = backup_context()
    if os.environ["JOB_KIND"] == "pitr":
        job, lock = jobs.claim(ctx, "admin@example.com", False, jobs.PITR, type="full")
        jobs.run_pitr_job(ctx, db.engine, job, lock, logging.getLogger("job"))
    else:
        job, lock = jobs.claim(ctx, "admin@example.com", False)
        jobs.run_job(ctx, db.engine, job, lock, logging.getLogger("job"))
"""


def _killed_job(c, config: dict, kind: str, action: str, **settings: str) -> str:
    """A page job of ``kind`` run in a process of its own (embedded: its lock a file),
    killed with SIGKILL (its whole process group) once its audit entry is running;
    the entry's id."""
    env = {k: v for k, v in os.environ.items() if k not in APP_ENV}
    env.update(JOB_CONFIG=json.dumps({**config, **settings}), JOB_KIND=kind,
               JOB_INSTANCE=str(c.base / "instance"))
    proc = subprocess.Popen([sys.executable, "-c", _JOB], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (entry := c.sql(f"SELECT id FROM audit_log WHERE action = '{action}' "
                                  f"AND outcome = 'running'", "guests")):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, f"the {kind} job never started"
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return entry[0][0]


@pytest.mark.parametrize("kind", ["pitr", "logical"])
def test_the_audit_entry_of_a_page_job_whose_process_died_is_finished_once(pitr_setup, kind):
    """The process running a page job killed (SIGKILL: nothing of it runs again):
    before, the page said interrupted and the audit entry stayed ``running``."""
    c, app, config = pitr_setup
    if kind == "pitr":  # pgBackRest's backup never ends (its other commands are real)
        action, stall = "pitr-backup", c.base / "stalling-pgbackrest"
        stall.write_text('#!/bin/sh\nfor a; do [ "$a" = backup ] && exec sleep 120; done\n'
                         'exec pgbackrest "$@"\n')
        settings = {"PITR_PGBACKREST": str(stall)}
    else:  # a pg_dump that writes a little and never ends
        action, stall = "backup", c.base / "stalling-pg_dump"
        stall.write_text('#!/bin/sh\ncase "$1" in --version) exec pg_dump --version;; esac\n'
                         "head -c 300000 /dev/urandom | base64\nexec sleep 120\n")
        settings = {"PG_DUMP": str(stall)}
    stall.chmod(0o755)
    entry = _killed_job(c, config, kind, action, **settings)
    job_kind = jobs.PITR if kind == "pitr" else jobs.LOGICAL
    with app.app_context():
        job = jobs.read_job(backup_context(), job_kind)
        assert job["state"] == "failed", job
        row = c.sql(f"SELECT outcome, message, finished_at FROM audit_log WHERE id = {entry}",
                    "guests")
        assert row[0][0] == "failed", f"the page says {job['error']!r}, the audit log {row}"
        assert row[0][1].startswith("interrupted"), row
        again = jobs.read_job(backup_context(), job_kind)  # once: not finished again
        assert again["state"] == "failed" and not again.get("audit_id"), again
        assert c.sql(f"SELECT outcome, message, finished_at FROM audit_log WHERE id = {entry}",
                     "guests") == row
        db.engine.dispose()
    for partial in Path(config["BACKUP_FOLDER"]).glob(".system_backup_*"):
        partial.unlink()
