"""The host on its own contract: it names nothing of backups, starts and serves
with the backup plugin disabled, calls every hook through ``pm.hook`` (wrappers
apply) in the documented order, fills plugin settings, and refuses at start-up
a command, setting or database engine that two parties claim."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from flask import Blueprint
from flask_admin import expose

from guest_registration import create_app, hookimpl, hookspec
from guest_registration.admin import SecureBaseView
from guest_registration.exports import ExportFormat
from guest_registration.maintenance import StatusCheck, setup
from guest_registration.plugins import DuplicateNameError, PluginLoadError
from tests.helpers import ADMIN, ROOT, csrf_token_from, make_config, manage

HOST = ROOT / "guest_registration"
FORBIDDEN = re.compile(r"plugins\.backup|BACKUP_|PG_DUMP|PSQL|pg_dump|dumper")


def new_app(tmp_path, extra_plugins=(), **config):
    return create_app(make_config(tmp_path, f"sqlite:///{tmp_path}/h.db", **config),
                      instance_path=str(tmp_path / "instance"), extra_plugins=extra_plugins)


def fmt(name: str) -> ExportFormat:
    return ExportFormat(name=name, label=name, media_type="text/plain", extension="txt",
                        write=lambda rows, fields: iter(()))


def test_host_names_nothing_of_backups():
    hits = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
            for path in sorted(HOST.rglob("*")) if path.is_file() and path.suffix != ".pyc"
            for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
            if FORBIDDEN.search(line)]
    assert hits == []


def test_no_module_over_350_lines():
    long = {str(p.relative_to(ROOT)): n for folder in ("guest_registration", "plugins")
            for p in (ROOT / folder).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 350}
    assert long == {}


def test_app_without_the_backup_plugin(tmp_path):
    config = make_config(tmp_path, f"sqlite:///{tmp_path}/h.db", DISABLED_PLUGINS=["backup"])
    del config["BACKUP_FOLDER"]
    app = create_app(config, instance_path=str(tmp_path / "instance"))
    assert "BACKUP_FOLDER" not in app.config and "backup" not in app.extensions
    with app.app_context():
        lines = list(setup(app, *ADMIN))
    assert not any("backups" in line for line in lines)
    client = app.test_client()
    assert client.get("/").status_code == 200
    resp = client.get("/api/backup/guests?year=2025&month=6")
    assert resp.status_code == 404 and resp.is_json
    token = csrf_token_from(client.get("/login").get_data(as_text=True))
    client.post("/login", data={"email": ADMIN[0], "password": ADMIN[1], "csrf_token": token})
    page = client.get("/admin/")
    assert page.status_code == 200
    assert "System Backup" not in page.get_data(as_text=True)
    assert client.get("/admin/backup/").status_code == 404
    assert client.get("/admin/audit/").status_code == 200  # the audit log is the host's


def test_status_and_setup_without_the_backup_plugin(tmp_path):
    env = {"DISABLED_PLUGINS": "backup"}
    setup = manage("setup", env=env, tmp_path=tmp_path)
    assert setup.returncode == 0, setup.stderr
    assert "backups" not in setup.stdout
    status = manage("status", env=env, tmp_path=tmp_path)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "backup" not in status.stdout
    assert "backup" not in manage("--help", env=env, tmp_path=tmp_path).stdout


def test_plugin_command_named_like_a_core_command_stops_start_up(tmp_path):
    @click.command("status")
    def evil():
        click.echo("EVIL STATUS")

    class Evil:
        @hookimpl
        def register_commands(self):
            return [evil]

    with pytest.raises(DuplicateNameError,
                       match="command 'status' is registered by both the host and plugin 'evil'"):
        new_app(tmp_path, extra_plugins=[("evil", Evil())])


@pytest.mark.parametrize("name,holder", [("run", "Flask"), ("users", "Flask-Security"),
                                         ("backup", "plugin 'backup'")])
def test_plugin_command_clashes_name_the_holder(tmp_path, name, holder):
    class Clash:
        @hookimpl
        def register_commands(self):
            return [click.Command(name)]

    with pytest.raises(DuplicateNameError, match=f"command {name!r} is registered by both "
                                                 f"{re.escape(holder)} and plugin 'clash'"):
        new_app(tmp_path, extra_plugins=[("clash", Clash())])


def test_a_command_that_is_no_command_names_the_plugin(tmp_path):
    class Sloppy:
        @hookimpl
        def register_commands(self):
            return ["not a command"]

    with pytest.raises(PluginLoadError, match="plugin 'sloppy' returned 'not a command'"):
        new_app(tmp_path, extra_plugins=[("sloppy", Sloppy())])


EVIL_DIST = {
    "setup.cfg": "[metadata]\nname = gr-evil-status\nversion = 0.0.1\n\n[options]\n"
                 "py_modules = gr_evil_status\n\n[options.entry_points]\n"
                 "guest_registration =\n    evil = gr_evil_status\n",
    "pyproject.toml": '[build-system]\nrequires = ["setuptools>=64"]\n'
                      'build-backend = "setuptools.build_meta"\n',
    "gr_evil_status.py": "import click\nfrom guest_registration import hookimpl\n\n"
                         "@click.command('status')\ndef status():\n    click.echo('EVIL STATUS')\n\n"
                         "@hookimpl\ndef register_commands():\n    return [status]\n",
}


@pytest.mark.pip
def test_installed_distribution_cannot_replace_status(tmp_path):
    source = tmp_path / "evil"
    source.mkdir()
    for name, text in EVIL_DIST.items():
        (source / name).write_text(text)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "install",
                    "--no-build-isolation", "--no-deps", "--target", str(target), str(source)],
                   check=True, capture_output=True, timeout=300)
    out = manage("status", env={"PYTHONPATH": str(target)}, tmp_path=tmp_path)
    assert out.returncode != 0
    assert "EVIL" not in out.stdout + out.stderr
    assert "command 'status' is registered by both the host and plugin 'evil'" in out.stderr
    assert "Traceback" not in out.stderr
    # and without it on the path, the same instance is fine
    assert manage("status", tmp_path=tmp_path).returncode in (0, 1)


def test_two_engines_for_one_dialect_stop_start_up(tmp_path):
    class SecondSQLite:
        @hookimpl
        def register_database_engines(self):
            from guest_backup.engines.sqlite import SQLiteEngine

            return [SQLiteEngine()]

    with pytest.raises(DuplicateNameError, match="database engine 'sqlite' is registered by "
                                                 "both plugin 'backup' and plugin 'second'"):
        new_app(tmp_path, extra_plugins=[("second", SecondSQLite())])


def test_the_backup_plugins_own_hooks_are_validated_at_start_up(tmp_path):
    class Typo:
        @hookimpl
        def register_database_engine(self):  # missing "s"
            return []

    with pytest.raises(PluginLoadError, match="register_database_engine"):
        new_app(tmp_path, extra_plugins=[("typo", Typo())])


def test_hooks_go_through_pluggy_wrappers_and_the_documented_order(tmp_path):
    seen = []

    class Wrapper:
        @hookimpl(wrapper=True)
        def register_export_formats(self):
            results = yield
            seen.append([f.name for result in results for f in result])
            return results + [[fmt("wrapped")]]

    class Extra:
        @hookimpl
        def register_export_formats(self):
            return [fmt("extra")]

    app = new_app(tmp_path, extra_plugins=[("extra", Extra()), ("wrapper", Wrapper())])
    assert seen == [["csv", "json", "extra"]]  # built-ins first, then plugins in code
    assert app.extensions["export_formats"].names() == ["csv", "json", "extra", "wrapped"]


def test_plugin_settings_defaults_environment_and_config(tmp_path, monkeypatch):
    class Settings:
        @hookimpl
        def register_settings(self, instance_path):
            return {"WIDGET_FOLDER": f"{instance_path}/widgets", "WIDGET_COUNT": 3,
                    "WIDGET_ON": False, "WIDGET_TAGS": ["a"]}

    app = new_app(tmp_path, extra_plugins=[("settings", Settings())])
    assert app.config["WIDGET_FOLDER"] == f"{app.instance_path}/widgets"
    assert (app.config["WIDGET_COUNT"], app.config["WIDGET_ON"]) == (3, False)
    assert app.config["BACKUP_KEEP"] == 0  # the backup plugin's own, declared the same way
    monkeypatch.setenv("WIDGET_COUNT", "7")
    monkeypatch.setenv("WIDGET_ON", "yes")
    monkeypatch.setenv("WIDGET_TAGS", "x, y")
    monkeypatch.setenv("BACKUP_KEEP", "4")
    app = new_app(tmp_path, extra_plugins=[("settings", Settings())], WIDGET_COUNT=9)
    assert app.config["WIDGET_COUNT"] == 9  # the app's config wins over the environment
    assert (app.config["WIDGET_ON"], app.config["WIDGET_TAGS"]) == (True, ["x", "y"])
    assert app.config["BACKUP_KEEP"] == 4
    monkeypatch.setenv("WIDGET_COUNT", "many")
    with pytest.raises(ValueError, match="WIDGET_COUNT must be a whole number"):
        new_app(tmp_path, extra_plugins=[("settings", Settings())])


@pytest.mark.parametrize("name,message", [
    ("SECRET_KEY", "setting 'SECRET_KEY' is declared by both the host and plugin 'grabby'"),
    ("BACKUP_FOLDER", "setting 'BACKUP_FOLDER' is declared by both plugin 'backup' and "
                      "plugin 'grabby'"),
])
def test_a_setting_two_parties_declare_stops_start_up(tmp_path, name, message):
    class Grabby:
        @hookimpl
        def register_settings(self, instance_path):
            return {name: "mine"}

    with pytest.raises(DuplicateNameError, match=message):
        new_app(tmp_path, extra_plugins=[("grabby", Grabby())])


def test_help_texts_are_plain(tmp_path):
    listing = manage("--help", tmp_path=tmp_path)
    assert listing.returncode == 0
    commands = re.findall(r"^  ([a-z][a-z-]+) ", listing.stdout.split("Commands:")[1], re.M)
    assert {"setup", "status", "backup", "verify", "restore", "export-guests"} <= set(commands)
    for name in [""] + commands:
        out = manage(*([name] if name else []), "--help", tmp_path=tmp_path).stdout
        assert "``" not in out and ":param" not in out and ":class:" not in out, name


class GreetingSpecs:
    """A plugin's own hook contract, published through add_hookspecs."""

    @hookspec
    def greeting(self, name: str):
        """Return a greeting for ``name``."""


class FullPlugin:
    """One plugin implementing every host hook, to see each one take effect."""

    @hookimpl
    def add_hookspecs(self, pluginmanager):
        pluginmanager.add_hookspecs(GreetingSpecs)

    @hookimpl
    def init_app(self, app):
        app.extensions["full"] = {"ready": True}

    @hookimpl
    def register_blueprints(self, app):
        bp = Blueprint("full", __name__)
        bp.add_url_rule("/full/ping", "ping", lambda: "pong")
        return [bp]

    @hookimpl
    def register_admin_views(self, app):
        class FullView(SecureBaseView):
            @expose("/")
            def index(self):
                return "full admin page"

        return [FullView(name="Full", endpoint="full_admin", url="full")]

    @hookimpl
    def register_commands(self):
        return [click.Command("full-hello", callback=lambda: click.echo("hello, full"))]

    @hookimpl
    def setup_app(self, app):
        yield "full plugin ready"

    @hookimpl
    def report_status(self, app):
        return [StatusCheck("full", True, "all good")]


class Greeter:
    @hookimpl
    def greeting(self, name):
        return f"Hello, {name}"


def test_every_host_hook_takes_effect(tmp_path):
    app = new_app(tmp_path, extra_plugins=[("full", FullPlugin()), ("greeter", Greeter())])
    pm = app.extensions["plugin_manager"]
    assert pm.hook.greeting(name="Jana") == ["Hello, Jana"]  # a plugin's own published hook
    assert app.extensions["full"] == {"ready": True}
    client = app.test_client()
    assert client.get("/full/ping").status_code == 503  # no schema yet: setup first
    runner = app.test_cli_runner()
    assert runner.invoke(args=["full-hello"]).output == "hello, full\n"
    setup_out = runner.invoke(args=["setup", "--admin-email", ADMIN[0], "--admin-password",
                                    ADMIN[1]])
    assert setup_out.exit_code == 0 and "full plugin ready" in setup_out.output
    assert client.get("/full/ping").data == b"pong"
    status = runner.invoke(args=["status"])
    assert "[ok  ] full: all good" in status.output
    token = csrf_token_from(client.get("/login").get_data(as_text=True))
    client.post("/login", data={"email": ADMIN[0], "password": ADMIN[1], "csrf_token": token})
    assert client.get("/admin/full/").data == b"full admin page"


def test_an_implementation_of_an_unpublished_hook_fails_at_start_up(tmp_path):
    with pytest.raises(PluginLoadError, match="greeting"):
        new_app(tmp_path, extra_plugins=[("greeter", Greeter())])


def test_two_storage_types_for_one_scheme_stop_start_up(tmp_path):
    class SecondS3:
        @hookimpl
        def register_storage_types(self):
            from guest_backup.storages.s3 import S3StorageType

            return [S3StorageType()]

    with pytest.raises(DuplicateNameError, match="storage type 's3' is registered by both "
                                                 "plugin 'backup' and plugin 'second'"):
        new_app(tmp_path, extra_plugins=[("second", SecondS3())])


def test_a_third_party_storage_type_serves_its_scheme(tmp_path, monkeypatch):
    """A plugin's storage type (here ``nas://``, a folder) takes the remote copies."""
    from guest_backup.storages.local import LocalStorage

    class NasType:
        scheme = "nas"

        def open(self, url, config):
            return LocalStorage(tmp_path / "nas" / url.split("://", 1)[1], name="remote")

    class Nas:
        @hookimpl
        def register_storage_types(self):
            return [NasType()]

    app = new_app(tmp_path, extra_plugins=[("nas", Nas())], BACKUP_REMOTE_URL="nas://site-a")
    with app.app_context():
        list(setup(app))
    result = app.test_cli_runner().invoke(args=["backup"])
    assert result.exit_code == 0, result.output
    name = Path(result.output.strip().splitlines()[-1]).name
    assert (tmp_path / "nas" / "site-a" / name).read_bytes() == Path(
        result.output.strip().splitlines()[-1]).read_bytes()
