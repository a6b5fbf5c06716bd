"""The plugin host: discovery through entry points, a pip-installed plugin,
DISABLED_PLUGINS, and start-up errors that name the guilty plugins."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from guest_registration import create_app, hookimpl, hookspecs
from guest_registration.exports import DuplicateFormatError, ExportFormat
from guest_registration.plugins import PluginLoadError, build_plugin_manager, plugin_infos
from tests.conftest import ROOT, make_config

DUMMY = ROOT / "tests" / "dummy_plugin"


def manage(*args: str, env: dict | None = None, tmp_path: Path) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "INSTANCE_PATH": str(tmp_path / "instance"),
                "DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", **(env or {})}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=120)


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
                   check=True, capture_output=True, timeout=300)


@pytest.fixture
def dummy_installed():
    """Install the dummy plugin distribution with pip; always uninstall it again."""
    pip("install", "--no-build-isolation", str(DUMMY))
    try:
        yield
    finally:
        pip("uninstall", "-y", "gr-dummy-plugin")
        import importlib
        importlib.invalidate_caches()


def test_builtin_plugins_come_from_entry_points():
    pm = build_plugin_manager()
    infos = {i.name: i for i in plugin_infos(pm)}
    for name, module in [("backup", "plugins.backup"), ("csv", "plugins.export_formats.csv_format"),
                         ("json", "plugins.export_formats.json_format")]:
        assert infos[name].module == module
        assert infos[name].distribution == "guest-registration"
    assert "register_admin_views" in infos["backup"].hooks


def test_plugins_command_lists_builtins(tmp_path):
    out = manage("plugins", tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "backup: plugins.backup from guest-registration 0.1.0" in out.stdout
    assert "csv: plugins.export_formats.csv_format from guest-registration" in out.stdout
    assert "json: plugins.export_formats.json_format from guest-registration" in out.stdout
    assert "export formats available: csv, json" in out.stdout


def test_pip_installed_plugin_is_picked_up_and_can_be_disabled(dummy_installed, tmp_path):
    out = manage("plugins", tmp_path=tmp_path)
    assert "dummy: gr_dummy_plugin from gr-dummy-plugin 1.2.3" in out.stdout
    assert "export formats available: csv, json, dummy" in out.stdout
    assert manage("dummy-hello", tmp_path=tmp_path).stdout.strip() == "hello from the dummy plugin"
    # in-process too: a new app sees the new format without any code change
    app = create_app(make_config(tmp_path, f"sqlite:///{tmp_path}/x.db"),
                     instance_path=str(tmp_path / "i"))
    assert "dummy" in app.extensions["export_formats"]
    disabled = manage("plugins", env={"DISABLED_PLUGINS": "dummy"}, tmp_path=tmp_path)
    assert "dummy [disabled]" in disabled.stdout
    assert "export formats available: csv, json\n" in disabled.stdout
    assert "dummy-hello" not in manage("--help", env={"DISABLED_PLUGINS": "dummy"},
                                       tmp_path=tmp_path).stdout


def test_disabled_builtin_plugin_removes_its_contribution(tmp_path):
    app = create_app(make_config(tmp_path, f"sqlite:///{tmp_path}/x.db", DISABLED_PLUGINS=["json"]),
                     instance_path=str(tmp_path / "i"))
    assert app.extensions["export_formats"].names() == ["csv"]


def test_duplicate_format_names_both_plugins(tmp_path):
    class Rogue:
        @hookimpl
        def register_export_formats(self):
            return [ExportFormat(name="csv", label="Fake", media_type="text/plain",
                                 extension="txt", write=lambda rows, fields: iter(()))]

    with pytest.raises(DuplicateFormatError, match="'csv' is registered by both plugin 'csv' and plugin 'rogue'"):
        create_app(make_config(tmp_path, f"sqlite:///{tmp_path}/x.db"),
                   instance_path=str(tmp_path / "i"), extra_plugins=[("rogue", Rogue())])


def test_misspelled_hook_fails_at_start_up(tmp_path):
    class Typo:
        @hookimpl
        def register_export_format(self):  # missing "s"
            return []

    with pytest.raises(PluginLoadError, match="register_export_format"):
        build_plugin_manager(extra_plugins=[("typo", Typo())])


def test_each_app_gets_its_own_plugin_manager(tmp_path):
    a = create_app(make_config(tmp_path, f"sqlite:///{tmp_path}/a.db"), instance_path=str(tmp_path / "a"))
    b = create_app(make_config(tmp_path, f"sqlite:///{tmp_path}/b.db", DISABLED_PLUGINS="json"),
                   instance_path=str(tmp_path / "b"))
    assert a.extensions["plugin_manager"] is not b.extensions["plugin_manager"]
    assert "json" in a.extensions["export_formats"] and "json" not in b.extensions["export_formats"]


def test_every_hook_is_documented():
    """Datasette-style: every hookspec has a docstring and a README entry."""
    readme = (ROOT / "README.md").read_text()
    specs = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
             if hasattr(fn, "guest_registration_spec")]
    assert {"register_admin_views", "register_export_formats", "register_blueprints",
            "register_commands", "report_status"} <= set(specs)
    for name in specs:
        assert getattr(hookspecs, name).__doc__, name
        assert f"`{name}" in readme, f"{name} is not documented in README.md"


def test_export_format_rejects_bad_names():
    with pytest.raises(ValueError):
        ExportFormat(name="Bad Name", label="x", media_type="text/plain", extension="txt",
                     write=lambda r, f: iter(()))
    with pytest.raises(ValueError):
        ExportFormat(name="ok", label="x", media_type="text/plain", extension="../x",
                     write=lambda r, f: iter(()))
