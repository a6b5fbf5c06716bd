"""The plugin host: discovery through entry points, a pip-installed plugin (in a
temporary directory, never into the environment), DISABLED_PLUGINS, and start-up
errors that name the guilty plugins."""

from __future__ import annotations

import importlib.metadata
import inspect
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from guest_registration import create_app, hookimpl, hookspecs
from guest_backup import hookspecs as backup_hookspecs
from guest_registration.exports import DuplicateFormatError, ExportFormat
from guest_registration.plugins import PluginLoadError, build_plugin_manager, plugin_infos
from tests.helpers import ROOT, installed_distribution, make_config, manage, pip, pythonpath_env

DUMMY = ROOT / "tests" / "dummy_plugin"


@pytest.fixture
def dummy_installed(tmp_path_factory) -> Path:
    """The dummy plugin distribution, pip-installed for this test only: into a
    temporary ``--target`` directory (yielded), first on ``sys.path`` for the
    test; subprocesses see it with ``env=pythonpath_env(dummy_installed)``."""
    with installed_distribution(DUMMY, tmp_path_factory.mktemp("dummy-dist")) as target:
        yield target


def test_builtin_plugins_come_from_entry_points():
    pm = build_plugin_manager()
    infos = {i.name: i for i in plugin_infos(pm)}
    for name, module in [("backup", "guest_backup"), ("csv", "guest_formats.csv_format"),
                         ("json", "guest_formats.json_format")]:
        assert infos[name].module == module
        assert infos[name].distribution == "guest-registration"
    assert "register_admin_views" in infos["backup"].hooks


def test_plugins_command_lists_builtins(tmp_path):
    out = manage("plugins", tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "backup: guest_backup from guest-registration 0.1.0" in out.stdout
    assert "csv: guest_formats.csv_format from guest-registration" in out.stdout
    assert "json: guest_formats.json_format from guest-registration" in out.stdout
    assert "export formats available: csv, json" in out.stdout


@pytest.mark.pip
def test_pip_installed_plugin_is_picked_up_and_can_be_disabled(dummy_installed, tmp_path):
    env = pythonpath_env(dummy_installed)
    out = manage("plugins", env=env, tmp_path=tmp_path)
    assert "dummy: gr_dummy_plugin from gr-dummy-plugin 1.2.3" in out.stdout
    assert "export formats available: csv, json, dummy" in out.stdout
    assert manage("dummy-hello", env=env, tmp_path=tmp_path).stdout.strip() == "hello from the dummy plugin"
    # in-process too: a new app sees the new format without any code change
    app = create_app(make_config(tmp_path, f"sqlite:///{tmp_path}/x.db"),
                     instance_path=str(tmp_path / "i"))
    assert "dummy" in app.extensions["export_formats"]
    disabled = manage("plugins", env={**env, "DISABLED_PLUGINS": "dummy"}, tmp_path=tmp_path)
    assert "dummy [disabled]" in disabled.stdout
    assert "export formats available: csv, json\n" in disabled.stdout
    assert "dummy-hello" not in manage("--help", env={**env, "DISABLED_PLUGINS": "dummy"},
                                       tmp_path=tmp_path).stdout


@pytest.mark.pip
def test_installed_plugin_leaves_the_environment_untouched(dummy_installed, tmp_path):
    """The test's installation lives in its own directory: the environment running
    the tests (and so every other test, and a run killed mid-test) never has it."""
    probe = [sys.executable, "-c",
             "import importlib.metadata as m, sys\n"
             "try:\n    print(m.version('gr-dummy-plugin'))\n"
             "except m.PackageNotFoundError:\n    print('not installed')\n"]
    fresh = subprocess.run(probe, env=dict(os.environ), capture_output=True, text=True,
                           timeout=60)
    assert fresh.returncode == 0, fresh.stderr
    assert fresh.stdout.strip() == "not installed"
    # the same probe with the target on PYTHONPATH does see it (the check above is not vacuous)
    seen = subprocess.run(probe, env={**os.environ, **pythonpath_env(dummy_installed)},
                          capture_output=True, text=True, timeout=60)
    assert seen.stdout.strip() == "1.2.3", seen.stderr
    assert importlib.metadata.version("gr-dummy-plugin") == "1.2.3"  # in-process: on sys.path
    # pip of the environment does not know it, and nothing of it is in site-packages
    show = pip("show", "gr-dummy-plugin", check=False)
    assert show.returncode != 0 and "not found" in show.stderr.lower(), show
    listed = pip("list", "--format=freeze").stdout.lower()
    assert "guest-registration" in listed and "gr-dummy-plugin" not in listed
    site = {Path(sysconfig.get_paths()[key]) for key in ("purelib", "platlib")}
    assert not [p for d in site for p in d.glob("gr_dummy_plugin*")]
    assert (dummy_installed / "gr_dummy_plugin.py").is_file()
    assert any(dummy_installed.glob("gr_dummy_plugin-1.2.3.dist-info"))


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


@pytest.mark.parametrize("module", [hookspecs, backup_hookspecs],
                         ids=["host", "backup plugin"])
def test_every_hook_is_documented_and_tested(module):
    """Datasette-style: every hookspec (the host's and the backup plugin's own) has a
    docstring, an entry in the plugin guide (docs/plugins.md) and a test that names it."""
    guide = (ROOT / "docs" / "plugins.md").read_text()
    tests = "".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    specs = [name for name, fn in inspect.getmembers(module, inspect.isfunction)
             if hasattr(fn, "guest_registration_spec")]
    assert specs
    for name in specs:
        assert getattr(module, name).__doc__, name
        assert f"`{name}" in guide, f"{name} is not documented in docs/plugins.md"
        assert f"def {name}(" in tests, f"no test implements {name}"


def test_export_format_rejects_bad_names():
    with pytest.raises(ValueError):
        ExportFormat(name="Bad Name", label="x", media_type="text/plain", extension="txt",
                     write=lambda r, f: iter(()))
    with pytest.raises(ValueError):
        ExportFormat(name="ok", label="x", media_type="text/plain", extension="../x",
                     write=lambda r, f: iter(()))
