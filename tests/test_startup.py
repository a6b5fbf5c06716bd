"""Start-up (issue 26): a command imports what it uses. ``backup --help`` and
``backup-list`` run on the command-line app (no Flask-Admin, Flask-Security,
Flask-Babel, Flask-Migrate; boto3 and pyrage only when a backup needs them), the
commands that serve pages or need Flask-Security still get the web app."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner
from flask import current_app

from guest_registration import cli, create_app, hookimpl
from tests.helpers import ROOT, make_config

#: what the web app needs and the command-line app must not import (top-level packages)
WEB_ONLY = ("flask_admin", "flask_security", "flask_babel", "flask_migrate", "alembic",
            "flask_wtf", "flask_limiter")
#: imported only by the backup or restore that needs them
ON_USE = ("boto3", "botocore", "pyrage")
#: imported by the first command that touches the database, not by ``--help`` or a listing
DATABASE = ("sqlalchemy", "flask_sqlalchemy")

#: operations a command module imports inside its commands, not at start-up (add a
#: module here once its command modules do so: ops.listing once cli.browse, and
#: those of cli.restore, cli.pitr, cli.select and export.cli)
OPERATIONS = ("guest_backup.ops.pipeline", "guest_backup.ops.retention",
              "guest_backup.ops.erasure", "guest_backup.ops.rights",
              "guest_backup.ops.subject_access", "guest_backup.ops.pitr",
              "guest_backup.export.stream", "guest_backup.ops.browse",
              "guest_backup.ops.compare", "guest_backup.ops.selection_apply",
              "guest_backup.ops.listing")

#: runs ``manage.py ARGS`` in this interpreter and prints which of the packages it imported
PROBE = """
import json, runpy, sys
sys.argv = ["manage.py", *sys.argv[1:]]
code = 0
try:
    runpy.run_path("manage.py", run_name="__main__")
except SystemExit as exc:
    code = exc.code
watched = set(json.loads(WATCHED))
print(json.dumps({"code": code, "imported": sorted(
    m for m in sys.modules if m.split(".")[0] in watched or m in watched)}))
"""


def environment(tmp_path, **extra) -> dict:
    """The test's environment for a command; an ``extra`` of None removes that variable."""
    env = {**os.environ, "INSTANCE_PATH": str(tmp_path / "instance"),
           "DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", **extra}
    return {name: value for name, value in env.items() if value is not None}


def probe(tmp_path, *args: str, watched: tuple[str, ...] = WEB_ONLY + ON_USE, **env) -> dict:
    """``manage.py ARGS`` in a subprocess: its exit code and the watched packages
    (or modules) it imported (its output is the probe's last line)."""
    script = PROBE.replace("WATCHED", repr(json.dumps(watched)))
    out = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, timeout=120,
                         env=environment(tmp_path, **env), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("args", [("backup", "--help"), ("backup-list",),
                                  ("restore", "--help"), ("export-guests", "--help")])
def test_backup_commands_import_no_web_part(tmp_path, args):
    found = probe(tmp_path, *args)
    assert found["code"] in (0, None)
    assert found["imported"] == []


@pytest.mark.parametrize("args", [("backup", "--help"), ("restore", "--help"),
                                  ("export-guests", "--help"), ("browse", "--help")])
def test_help_imports_no_sqlalchemy(tmp_path, args):
    found = probe(tmp_path, *args, watched=DATABASE)
    assert found["code"] in (0, None) and found["imported"] == []


def test_listing_real_archives_imports_no_sqlalchemy(tmp_path):
    """``backup-list`` over two signed archives checks their seals without the database
    layer; ``backup`` itself (it dumps the database) binds it on first use."""
    env = environment(tmp_path)
    for args in (["setup"], ["backup"], ["backup"]):
        done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    listed = subprocess.run([sys.executable, "manage.py", "backup-list"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert len([line for line in listed.stdout.splitlines() if "system_backup_" in line]) == 2
    found = probe(tmp_path, "backup-list", watched=DATABASE + WEB_ONLY + ON_USE)
    assert found["code"] in (0, None) and found["imported"] == []
    found = probe(tmp_path, "status", watched=DATABASE)  # it queries: bound on first use
    assert found["code"] in (0, None) and "flask_sqlalchemy" in found["imported"]


def test_a_backup_counts_only_where_a_scrape_reads_it(tmp_path):
    """Without PROMETHEUS_MULTIPROC_DIR a command's counts die with it: a backup
    imports no prometheus_client (about 10 ms at its end); with the folder it counts
    there, for serve's workers to add up."""
    done = subprocess.run([sys.executable, "manage.py", "setup"], cwd=ROOT, timeout=120,
                          env=environment(tmp_path), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    found = probe(tmp_path, "backup", watched=("prometheus_client",),
                  PROMETHEUS_MULTIPROC_DIR=None)
    assert found["code"] in (0, None) and found["imported"] == []
    folder = tmp_path / "prometheus"
    folder.mkdir()
    found = probe(tmp_path, "backup", watched=("prometheus_client",),
                  PROMETHEUS_MULTIPROC_DIR=str(folder))
    assert found["code"] in (0, None) and "prometheus_client" in found["imported"]
    assert [p.name for p in folder.glob("counter_*.db")] != []


def test_backup_help_imports_no_operation(tmp_path):
    found = probe(tmp_path, "backup", "--help", watched=OPERATIONS)
    assert found["code"] in (0, None) and found["imported"] == []


#: what only reading or signing an archive needs: the signing keys (cryptography)
#: and the dump screens (their patterns take ~10 ms to compile)
ON_ARCHIVE = ("cryptography", "guest_backup.archive.signing", "guest_backup.engines.pgscreen",
              "guest_backup.engines.pgscreen_statements", "guest_backup.engines.sqlitescreen")


@pytest.mark.parametrize("args", [("backup", "--help"), ("restore", "--help"),
                                  ("browse", "--help")])
def test_help_reads_no_archive_machinery(tmp_path, args):
    found = probe(tmp_path, *args, watched=ON_ARCHIVE)
    assert found["code"] in (0, None) and found["imported"] == []


def test_help_needs_no_database(tmp_path):
    found = probe(tmp_path, "backup", "--help",
                  DATABASE_URL="postgresql://postgres:pw@127.0.0.1:1/nowhere")
    assert found["code"] in (0, None) and found["imported"] == []


@pytest.mark.parametrize("args", [("users", "--help"), ("setup", "--help"), ("routes",)])
def test_commands_that_need_the_web_app_get_it(tmp_path, args):
    found = probe(tmp_path, *args)
    assert found["code"] in (0, None)
    assert {"flask_security", "flask_admin", "flask_migrate"} <= {
        m.split(".")[0] for m in found["imported"]}


def test_the_installed_entry_point_is_as_lean(tmp_path):
    script = ("import sys, runpy; sys.argv = ['guest-registration', 'backup', '--help']\n"
              "try:\n    runpy.run_module('guest_registration', run_name='__main__')\n"
              "except SystemExit:\n    pass\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] in "
              f"{WEB_ONLY + ON_USE!r}))")
    out = subprocess.run([sys.executable, "-c", script], env=environment(tmp_path),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Usage: guest-registration backup" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "[]"


def _cpu_seconds(args: list[str], env: dict) -> float:
    """CPU time (user + system) of one run: steadier than wall time on a busy machine."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(args, cwd=ROOT, env=env, check=True, capture_output=True, timeout=120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def test_backup_help_starts_in_a_fraction_of_the_web_app(tmp_path):
    """``backup --help`` over ``python -c pass`` costs well under what building
    the web app (``routes``) does, measured alternately in this test (best of 3):
    about 0.15 of it since the command-line app binds SQLAlchemy on first use
    (0.3 before that; all of it before the command-line app)."""
    env = environment(tmp_path)
    python, manage = [sys.executable, "-c", "pass"], [sys.executable, "manage.py"]
    runs: dict[str, list[float]] = {"pass": [], "help": [], "web": []}
    for _ in range(3):
        runs["pass"].append(_cpu_seconds(python, env))
        runs["help"].append(_cpu_seconds(manage + ["backup", "--help"], env))
        runs["web"].append(_cpu_seconds(manage + ["routes"], env))
    base = min(runs["pass"])
    help_cost, web_cost = min(runs["help"]) - base, min(runs["web"]) - base
    assert help_cost < 0.25 * web_cost, runs
    assert help_cost < 2.0, runs  # seconds of CPU: a gross regression on any machine


FREEZE_PROBE = """
import atexit, gc, runpy, sys
atexit.register(lambda: print("frozen", gc.get_freeze_count()))
"""
#: manage.py run as the program, and a group a caller builds and runs (as a test does)
RUNS = {"program": 'sys.argv = ["manage.py", "backup", "--help"]\n'
                   'runpy.run_path("manage.py", run_name="__main__")',
        "caller": "from click.testing import CliRunner\n"
                  "from guest_registration.cli import GuestGroup\n"
                  "print(CliRunner().invoke(GuestGroup(), ['backup', '--help']).output)"}


@pytest.mark.parametrize("run,frozen", [("program", True), ("caller", False)])
def test_the_program_freezes_its_start_up_and_exit(tmp_path, run, frozen):
    """Run as the program, a command ends with everything frozen (the
    interpreter's collections at exit walk none of it); a group built by a
    caller (a test's ``CliRunner``) never freezes that caller's objects."""
    out = subprocess.run([sys.executable, "-c", FREEZE_PROBE + RUNS[run]], cwd=ROOT,
                         env=environment(tmp_path), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Usage:" in out.stdout
    count = int(out.stdout.split("frozen")[-1])
    assert (count > 10_000) if frozen else count == 0, count


def test_a_commands_garbage_is_finalised_before_the_exit_freeze(tmp_path):
    """Freezing at exit does not take away a finaliser: an object left in a
    reference cycle by the command (a file to flush, a temporary to delete) is
    collected first, as at any exit."""
    marker = tmp_path / "finalised"
    script = f"""
import click
from guest_registration.cli import GuestGroup

class Cycle:
    def __del__(self):
        open({str(marker)!r}, "w").write("done")

@click.command("leave-cycle")
def leave_cycle():
    cycle = Cycle()
    cycle.me = cycle  # only the cycle collector frees it

group = GuestGroup(program=True)
group.add_command(leave_cycle)
group(["leave-cycle"])
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=environment(tmp_path),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert marker.read_text() == "done"


# --- the choice of app, in process --------------------------------------------------------

@click.command("lean-probe")
def lean_probe():
    click.echo(f"web={current_app.extensions['guest_web']}")


@click.command("web-probe")
def web_probe():
    click.echo(f"web={current_app.extensions['guest_web']} "
               f"security={'security' in current_app.extensions}")


web_probe.web_app = True  # a plugin command that needs Flask-Security asks for the web app


class Probes:
    @hookimpl
    def register_commands(self):
        return [lean_probe, web_probe]


@pytest.fixture
def group(tmp_path, monkeypatch):
    """``manage.py``'s group on an SQLite app with the probes' plugin."""
    config = make_config(tmp_path, f"sqlite:///{tmp_path / 'app.db'}")
    built: list[bool] = []

    def create(web: bool = True):
        built.append(web)
        return create_app(config, instance_path=str(tmp_path / "instance"),
                          extra_plugins=[("probes", Probes())], web=web)

    monkeypatch.setattr(cli, "create_app", create)
    return cli.GuestGroup(), built


@pytest.mark.parametrize("name,output,built", [
    ("lean-probe", "web=False", [False]),
    ("web-probe", "web=True security=True", [False, True]),
    ("auth-token", "Usage:", [True]),
])
def test_each_command_gets_the_app_it_needs(group, name, output, built):
    command_group, apps = group
    args = [name] if name.endswith("probe") else [name, "--help"]
    result = CliRunner().invoke(command_group, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert output in result.output
    assert apps == built


def test_the_command_list_comes_from_the_web_app(group):
    command_group, apps = group
    result = CliRunner().invoke(command_group, ["--help"], catch_exceptions=False)
    assert result.exit_code == 0
    assert {"users", "roles", "db", "lean-probe", "backup"} <= set(
        line.split()[0] for line in result.output.split("Commands:")[1].splitlines() if line)
    assert apps == [True]


BIND_PROBE = """
import sys
from guest_registration import create_app, extensions

def app(folder):
    return create_app({"DATABASE_URL": f"sqlite:///{folder}/app.db", "SECRET_KEY": "k",
                       "SECURITY_PASSWORD_SALT": "s", "UPLOAD_FOLDER": f"{folder}/uploads",
                       "BACKUP_FOLDER": f"{folder}/backups"},
                      instance_path=f"{folder}/instance", web=False)

apps = [app(folder) for folder in sys.argv[1:3]]
assert "sqlalchemy" not in sys.modules and "db" not in vars(extensions)
with apps[1].app_context():
    second = extensions.database_engine()  # made now: both waiting apps are bound
with apps[0].app_context():
    first = extensions.database_engine()
    with first.connect() as conn:
        pragma = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
with app(sys.argv[3]).app_context():  # made after db: bound at once
    third = extensions.database_engine()
print(first.url.database, second.url.database, third.url.database, pragma)
"""


def test_command_line_apps_are_bound_to_their_own_database_on_first_use(tmp_path):
    """In a fresh interpreter: two command-line apps wait for ``db``; its first use
    binds both, each to its own database (SQLite pragmas included), and an app made
    afterwards is bound at once."""
    folders = [tmp_path / name for name in ("one", "two", "three")]
    for folder in folders:
        folder.mkdir()
    out = subprocess.run([sys.executable, "-c", BIND_PROBE, *map(str, folders)], cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(f / "app.db") for f in folders] + ["wal"]
