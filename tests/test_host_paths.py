"""The default instance folder: ``INSTANCE_PATH`` wins; in a checkout it is
``<checkout>/instance`` as before; installed, ``$XDG_DATA_HOME/guest-registration``
(``~/.local/share/guest-registration``), never inside the virtualenv. An installed
wheel brings its own templates and static files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from flask import Flask

from guest_registration import create_app, paths
from guest_registration.paths import checkout_root, default_instance_path
from tests.helpers import ROOT, make_config, pip, pythonpath_env

PACKAGE = ROOT / "guest_registration"


def installed_package(tmp_path: Path) -> tuple[Path, Path]:
    """A package folder as pip installs it into a virtualenv: (prefix, package)."""
    prefix = tmp_path / "venv"
    package = prefix / "lib" / "python3.11" / "site-packages" / "guest_registration"
    package.mkdir(parents=True)
    return prefix, package


def test_instance_path_from_the_environment_wins(tmp_path, monkeypatch):
    _, package = installed_package(tmp_path)
    assert default_instance_path(package, {"INSTANCE_PATH": "/srv/gr"}) == "/srv/gr"
    assert default_instance_path(PACKAGE, {"INSTANCE_PATH": "/srv/gr"}) == "/srv/gr"
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path / "from-env"))
    app = create_app(make_config(tmp_path, f"sqlite:///{tmp_path}/p.db"))
    assert app.instance_path == str(tmp_path / "from-env")


def test_in_a_checkout_the_default_is_unchanged():
    assert checkout_root(PACKAGE) == ROOT
    assert default_instance_path(PACKAGE, {}) == str(ROOT / "instance")
    # what Flask chose before for a package that is not installed
    assert default_instance_path(PACKAGE, {}) == Flask("guest_registration").instance_path


def test_installed_the_default_is_the_users_data_folder(tmp_path):
    prefix, package = installed_package(tmp_path)
    home = tmp_path / "home"
    assert checkout_root(package) is None
    assert default_instance_path(package, {"HOME": str(home)}) == str(
        home / ".local" / "share" / "guest-registration")
    data = tmp_path / "data"
    assert default_instance_path(package, {"HOME": str(home), "XDG_DATA_HOME": str(data)}) == \
        str(data / "guest-registration")
    # a relative XDG_DATA_HOME is ignored (XDG base directory specification)
    assert default_instance_path(package, {"HOME": str(home), "XDG_DATA_HOME": "rel"}) == str(
        home / ".local" / "share" / "guest-registration")
    for environ in ({"HOME": str(home)}, {"XDG_DATA_HOME": str(data)}):
        assert not Path(default_instance_path(package, environ)).is_relative_to(prefix)


def test_site_packages_is_never_a_checkout(tmp_path):
    _, package = installed_package(tmp_path)
    (package.parent / "setup.cfg").write_text("")  # some other distribution's stray file
    (package.parent / "manage.py").write_text("")
    assert checkout_root(package) is None
    elsewhere = tmp_path / "unpacked" / "guest_registration"  # e.g. copied, no markers
    elsewhere.mkdir(parents=True)
    assert checkout_root(elsewhere) is None
    assert default_instance_path(elsewhere, {"XDG_DATA_HOME": str(tmp_path)}) == str(
        tmp_path / "guest-registration")


def test_create_app_when_installed_uses_the_data_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("INSTANCE_PATH", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setattr(paths, "checkout_root", lambda package_dir=None: None)
    config = make_config(tmp_path, f"sqlite:///{tmp_path}/p.db")
    del config["SECRET_KEY"]  # generated into the instance folder
    app = create_app(config)
    instance = tmp_path / "data" / "guest-registration"
    assert app.instance_path == str(instance)
    assert (instance / "secret_key").is_file()
    assert oct(instance.stat().st_mode & 0o777) == "0o700"


WHEEL_CHECK = textwrap.dedent("""
    import json, sys
    from guest_registration import create_app
    from guest_registration.extensions import db
    app = create_app({"DATABASE_URL": "sqlite:///" + sys.argv[1], "TESTING": True})
    with app.app_context():
        from guest_registration.maintenance import setup
        list(setup(app))
    client = app.test_client()
    start, icon = client.get("/"), client.get("/favicon.ico")
    print(json.dumps({"module": __import__("guest_registration").__file__,
                      "instance": app.instance_path, "start": start.status_code,
                      "text": start.get_data(as_text=True), "icon": icon.status_code,
                      "icon_type": icon.mimetype, "nope": client.get("/nope").status_code}))
""")


@pytest.mark.pip
def test_an_installed_wheel_has_its_templates_and_its_own_data_folder(tmp_path):
    source = tmp_path / "src"  # a copy: the build leaves nothing in the repository
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("guest_registration", "plugins"):
        shutil.copytree(ROOT / folder, source / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    target = tmp_path / "site-packages"
    pip("install", "-q", "--no-build-isolation", "--no-deps", "--target", str(target), str(source))
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("INSTANCE_PATH", "XDG_DATA_HOME", "TEMPLATE_OVERRIDES")}
    env.update(pythonpath_env(target), HOME=str(home), DISABLED_PLUGINS="backup")
    proc = subprocess.run([sys.executable, "-c", WHEEL_CHECK, str(tmp_path / "w.db")], cwd=work,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(found["module"]).is_relative_to(target)
    assert found["instance"] == str(home / ".local" / "share" / "guest-registration")
    assert (found["start"], found["icon"], found["nope"]) == (200, 200, 404)
    assert found["icon_type"] == "image/svg+xml"
    assert "Register for a trip" in found["text"] and 'rel="icon"' in found["text"]
    assert not (target / "templates").exists()  # no top-level folder outside the package
