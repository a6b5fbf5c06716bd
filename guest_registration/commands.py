"""Core commands: ``setup``, ``status``, ``demo-data``, ``plugins``, ``auth-token``,
``serve``, ``worker``, ``test``.

Flask's own ``run``, ``shell`` and ``routes`` and Flask-Security's ``users``/``roles``
come with the Flask CLI; plugins return theirs from the ``register_commands`` hook
and :func:`init_app` adds them, refusing a name that is already taken. The entry
point (``manage.py``, ``guest-registration``) is :mod:`guest_registration.cli`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import ScriptInfo, with_appcontext

from .paths import checkout_root
from .registry import items_by_plugin, plugin_infos, unique_items
from .tasks import worker_command

#: Commands of ``flask.cli.FlaskGroup`` itself: a plugin command of that name would be hidden.
FLASK_COMMANDS = ("run", "shell", "routes")
#: Flask-Migrate's command group (the web app's, :mod:`.schema`)
MIGRATE_COMMAND = "db"
#: Commands that run on the web app (``create_app()``), every other one on the
#: command-line app (:mod:`.cli`): serving the pages, the worker (it runs what the
#: pages queue), those that need Flask-Security (``setup`` creates the admin user,
#: ``auth-token``, its own ``users`` and ``roles``) or Flask-Migrate (``setup``, ``db``).
WEB_APP_COMMANDS = frozenset({"serve", "worker", "setup", "auth-token", "users", "roles",
                              MIGRATE_COMMAND})


@click.command("setup")
@click.option("--admin-email", envvar="ADMIN_EMAIL", help="Create or update this admin user.")
@click.option("--admin-password", envvar="ADMIN_PASSWORD", help="Password for --admin-email.")
@click.option("--reset-password", is_flag=True,
              help="Also set --admin-password on an admin that already exists.")
@with_appcontext
def setup_command(admin_email: str | None, admin_password: str | None,
                  reset_password: bool) -> None:
    """Bring the schema up to date (migrations), create the admin role and the folders;
    optionally an admin user (idempotent: an existing user's password changes only
    with --reset-password)."""
    from sqlalchemy.exc import OperationalError

    from . import maintenance
    from .instance_folder import handed_to_their_owner
    from .schema import SchemaError

    try:
        with handed_to_their_owner(*_service_paths(current_app)):  # run as root: theirs
            for line in maintenance.setup(current_app, admin_email, admin_password,
                                          reset_password):
                click.echo(line)
    except OperationalError as exc:  # one line naming the database, never a traceback
        raise click.ClickException(maintenance.unreachable(current_app, exc)) from None
    except (SchemaError, ValueError) as exc:  # a wrong option or folder (a plugin's too)
        raise click.ClickException(str(exc)) from None


def _service_paths(app: Flask) -> list[Path]:
    """What ``setup`` (or ``status`` on a fresh instance: its SQLite file) may make
    for the service: the instance folder, the upload folder, an SQLite database
    (with its -wal, -shm and -journal) and the folders of the settings plugins name
    (``SETUP_FOLDERS``: a plugin's archive folder, say)."""
    from sqlalchemy.engine import make_url

    from .instance_folder import SETUP_FOLDERS

    paths = [Path(app.instance_path), Path(app.config["UPLOAD_FOLDER"])]
    url = make_url(app.config["SQLALCHEMY_DATABASE_URI"])
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        database = Path(app.instance_path) / url.database  # a relative one is the instance's
        paths += [database.with_name(database.name + end) for end in ("", "-wal", "-shm",
                                                                       "-journal")]
    for setting in app.extensions.get(SETUP_FOLDERS, ()):
        if app.config.get(setting):
            paths.append(Path(app.config[setting]))
    return paths


@click.command("status")
@with_appcontext
def status_command() -> None:
    """Check the database, folders, plugins and formats; exit 1 if something is broken."""
    from . import maintenance
    from .instance_folder import handed_to_their_owner

    broken = 0
    with handed_to_their_owner(*_service_paths(current_app)):  # a fresh SQLite file: theirs
        for check in maintenance.status_checks(current_app):
            mark = "ok  " if check.ok else "FAIL"
            click.echo(f"[{mark}] {check.name}: {check.detail}")
            broken += not check.ok
    if broken:
        click.echo(f"{broken} check(s) failed.", err=True)
        sys.exit(1)


@click.command("demo-data")
@click.option("--force", is_flag=True, help="Add demo data even if trips exist.")
@with_appcontext
def demo_data_command(force: bool) -> None:
    """Load a few trips, registrations, guests and uploads (skipped if trips exist)."""
    from . import demo

    click.echo(demo.load(current_app, force=force))


@click.command("plugins")
@with_appcontext
def plugins_command() -> None:
    """List the plugins, where they come from and what each contributes."""
    pm = current_app.extensions["plugin_manager"]
    formats = current_app.extensions["export_formats"]
    owned = items_by_plugin(pm, "register_export_formats")
    for info in plugin_infos(pm):
        state = " [disabled]" if info.disabled else ""
        click.echo(f"{info.name}{state}: {info.module} from {info.distribution} {info.version}")
        if info.disabled:
            continue
        click.echo(f"    hooks: {', '.join(info.hooks) or '-'}")
        names = [f.name for f in owned.get(info.name, [])]
        if names:
            click.echo(f"    export formats: {', '.join(names)}")
    click.echo(f"export formats available: {', '.join(formats.names()) or 'none'}")


@click.command("auth-token")
@click.argument("email")
@with_appcontext
def auth_token_command(email: str) -> None:
    """Print an API token (the Authentication-Token header) for an active admin."""
    user = current_app.extensions["security"].datastore.find_user(email=email)
    if user is None or not user.active or not user.has_role("admin"):
        raise click.ClickException(f"{email} is not an active admin user")
    click.echo(user.get_auth_token())


def _app_factory():
    """How the running CLI builds the app (``manage.py``'s ``load_app``): each
    server worker builds its own with it, never a copy of this process's."""
    info = click.get_current_context().ensure_object(ScriptInfo)
    if info.create_app is not None:
        return info.create_app
    return lambda: ScriptInfo(app_import_path=info.app_import_path).load_app()


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, envvar="HOST")
@click.option("--port", default=8000, show_default=True, type=int, envvar="PORT")
@click.option("--workers", default=None, type=click.IntRange(1, 64), envvar="WEB_CONCURRENCY",
              help="Worker processes (default 2).")
@click.option("--threads", default=None, type=click.IntRange(1, 256), envvar="WEB_THREADS",
              help="Threads per worker (default 32).")
def serve_command(host: str, port: int, workers: int | None, threads: int | None) -> None:
    """Serve the app with gunicorn (production): threaded workers, timeouts that allow
    long exports, graceful restarts (kill -HUP). Put it behind a reverse proxy that
    buffers request bodies and terminates HTTPS."""
    from .server import DEFAULT_THREADS, DEFAULT_WORKERS, serve

    serve(host, port, workers or DEFAULT_WORKERS, threads or DEFAULT_THREADS,
          load_app=_app_factory())


@click.command("test", context_settings={"ignore_unknown_options": True})
@click.argument("pytest_args", nargs=-1, type=click.UNPROCESSED)
def test_command(pytest_args: tuple[str, ...]) -> None:
    """Run the test suite (arguments go to pytest)."""
    root = checkout_root() or Path.cwd()  # the tests are in a checkout, not in a wheel
    sys.exit(subprocess.call([sys.executable, "-m", "pytest", *pytest_args], cwd=root))


#: The host's commands, in ``--help`` order
HOST_COMMANDS = (setup_command, status_command, demo_data_command, plugins_command,
                 auth_token_command, serve_command, worker_command, test_command)


def reserved_names(app: Flask) -> dict[str, str]:
    """Command name → who holds it: Flask, the web app's extensions (Flask-Security's
    ``users``/``roles`` as configured, Flask-Migrate's ``db``) and the host. The same
    names in the command-line app, which lacks those extensions: a plugin command
    is refused alike whichever app is built."""
    reserved = {name: "Flask" for name in FLASK_COMMANDS}
    for key, default in (("SECURITY_CLI_USERS_NAME", "users"),
                         ("SECURITY_CLI_ROLES_NAME", "roles")):
        if app.config.get(key, default):
            reserved[app.config.get(key, default)] = "Flask-Security"
    reserved[MIGRATE_COMMAND] = "Flask-Migrate"
    for name in [command.name for command in HOST_COMMANDS] + list(app.cli.commands):
        reserved.setdefault(name, "the host")
    return reserved


def init_app(app: Flask) -> None:
    """Add the core commands, then every plugin's (``register_commands``).

    A plugin command whose name the host, Flask or Flask-Security already uses,
    or that two plugins return, stops start-up with a message naming them.
    """
    for command in HOST_COMMANDS:
        app.cli.add_command(command)
    reserved = reserved_names(app)
    commands = unique_items(app.extensions["plugin_manager"], "register_commands",
                            kind="command", key=lambda c: c.name, expect=click.Command,
                            reserved=reserved)
    for command in commands.values():
        app.cli.add_command(command)
