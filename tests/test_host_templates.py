"""The host's templates and static files live in the package; a site overrides any
template from its own folders (``TEMPLATE_OVERRIDES``, ``<instance>/templates``,
the checkout's ``templates/``), searched before the package's; every page links
the site's icon and ``/favicon.ico`` answers it."""

from __future__ import annotations

from pathlib import Path

import pytest

from guest_registration import create_app
from guest_registration.maintenance import setup
from guest_registration.paths import template_folders
from tests.helpers import ADMIN, ROOT, csrf_token_from, make_config

PACKAGE_TEMPLATES = ROOT / "guest_registration" / "templates"
#: what the host renders or extends itself
HOST_TEMPLATES = ("base.html", "error.html", "i18n/picker.html", "admin/master.html",
                  "admin/index.html", "admin/actions.html", "admin/model/layout.html",
                  "admin/model/list_responsive.html", "admin/model/row_actions.html",
                  "security/base.html", "security/login_user.html", "registration/index.html",
                  "registration/register.html", "registration/thanks.html")
ICON_LINK = '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">'


def new_app(tmp_path: Path, **config):
    app = create_app(make_config(tmp_path, f"sqlite:///{tmp_path}/t.db", **config),
                     instance_path=str(tmp_path / "instance"))
    with app.app_context():
        list(setup(app))
    return app


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_the_package_carries_the_host_templates():
    missing = [name for name in HOST_TEMPLATES if not (PACKAGE_TEMPLATES / name).is_file()]
    assert missing == []
    assert (ROOT / "guest_registration" / "static" / "favicon.svg").is_file()


def test_the_checkouts_templates_folder_is_for_overrides_only():
    folder = ROOT / "templates"
    readme = (folder / "README.md").read_text()
    assert "override" in readme and "searched first" in readme
    leftovers = [str(p.relative_to(folder)) for p in folder.rglob("*")
                 if p.is_file() and p.name != "README.md"
                 and not p.relative_to(folder).parts[:2] == ("admin", "backup")]
    assert leftovers == []


def test_without_overrides_the_packages_templates_are_used(tmp_path):
    client = new_app(tmp_path).test_client()
    page = client.get("/no-such-page")
    assert page.status_code == 404
    assert "Back to the start page" in page.get_data(as_text=True)


def test_a_template_in_an_override_folder_wins_over_the_packages(tmp_path):
    site = tmp_path / "site-templates"
    write(site, "error.html", "Our own error page: {{ code }}")
    client = new_app(tmp_path, TEMPLATE_OVERRIDES=str(site)).test_client()
    page = client.get("/no-such-page")
    assert page.status_code == 404
    assert page.get_data(as_text=True) == "Our own error page: 404"


def test_the_instance_folders_templates_override_and_the_named_folder_comes_first(tmp_path):
    instance_templates = tmp_path / "instance" / "templates"
    write(instance_templates, "error.html", "instance error page")
    # a layout only the instance overrides: the package's pages extend it
    base = (PACKAGE_TEMPLATES / "base.html").read_text()
    write(instance_templates, "base.html", base.replace("<main", "<p>Site banner</p><main"))
    client = new_app(tmp_path).test_client()
    assert client.get("/nope").get_data(as_text=True) == "instance error page"
    start = client.get("/").get_data(as_text=True)
    assert "Site banner" in start and "Register for a trip" in start

    named = tmp_path / "named"
    write(named, "error.html", "named error page")
    client = new_app(tmp_path, TEMPLATE_OVERRIDES=str(named)).test_client()
    assert client.get("/nope").get_data(as_text=True) == "named error page"
    assert "Site banner" in client.get("/").get_data(as_text=True)


def test_a_missing_override_folder_stops_start_up(tmp_path):
    with pytest.raises(ValueError, match="TEMPLATE_OVERRIDES: .*nowhere is not a folder"):
        create_app(make_config(tmp_path, f"sqlite:///{tmp_path}/t.db",
                               TEMPLATE_OVERRIDES=str(tmp_path / "nowhere")),
                   instance_path=str(tmp_path / "instance"))


def test_the_override_folder_from_the_environment(tmp_path, monkeypatch):
    site = tmp_path / "from-env"
    write(site, "error.html", "from the environment")
    monkeypatch.setenv("TEMPLATE_OVERRIDES", str(site))
    assert new_app(tmp_path).test_client().get("/x").get_data(as_text=True) == \
        "from the environment"


def test_template_folders_in_a_checkout_and_installed(tmp_path):
    checkout = tmp_path / "checkout"
    (checkout / "guest_registration" / "templates").mkdir(parents=True)
    (checkout / "manage.py").write_text("")
    instance = tmp_path / "instance"
    package = checkout / "guest_registration"
    assert template_folders(str(instance), package_dir=package) == [package / "templates"]
    (checkout / "templates").mkdir()
    (instance / "templates").mkdir(parents=True)
    assert template_folders(str(instance), package_dir=package) == [
        instance / "templates", checkout / "templates", package / "templates"]
    # installed: a ``templates`` folder next to the package is someone else's
    site = tmp_path / "lib" / "site-packages"
    (site / "guest_registration" / "templates").mkdir(parents=True)
    (site / "templates").mkdir()
    (site / "setup.cfg").write_text("")
    assert template_folders(str(instance), tmp_path, package_dir=site / "guest_registration") == [
        tmp_path, instance / "templates", site / "guest_registration" / "templates"]


def test_favicon_is_served_and_linked_from_every_page(tmp_path):
    app = new_app(tmp_path)
    with app.app_context():
        list(setup(app, *ADMIN))
    client = app.test_client()
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.mimetype == "image/svg+xml"
    assert icon.data == (ROOT / "guest_registration" / "static" / "favicon.svg").read_bytes()
    assert client.get("/static/favicon.svg").status_code == 200
    for path in ("/", "/login", "/no-such-page"):
        assert ICON_LINK in client.get(path).get_data(as_text=True), path
    token = csrf_token_from(client.get("/login").get_data(as_text=True))
    client.post("/login", data={"email": ADMIN[0], "password": ADMIN[1], "csrf_token": token})
    for path in ("/admin/", "/admin/guest/", "/admin/audit/"):
        page = client.get(path)
        assert page.status_code == 200 and ICON_LINK in page.get_data(as_text=True), path
