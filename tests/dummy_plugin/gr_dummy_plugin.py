"""A third-party plugin as the test suite installs it: one export format, one command."""

import click

from guest_registration import hookimpl
from guest_registration.exports import ExportFormat


def write_lines(rows, fields):
    yield ("|".join(fields) + "\n").encode()
    for row in rows:
        yield ("|".join("" if v is None else str(v) for v in row) + "\n").encode()


@hookimpl
def register_export_formats():
    return [ExportFormat(name="dummy", label="Dummy pipes", media_type="text/plain; charset=utf-8",
                         extension="txt", write=write_lines)]


@click.command("dummy-hello")
def hello():
    """Say hello from the dummy plugin."""
    click.echo("hello from the dummy plugin")


@hookimpl
def register_commands():
    return [hello]


# --- its own message catalogue (Czech), found through the host's hook --------------

@hookimpl
def register_translations():
    from pathlib import Path

    from guest_registration.i18n import Catalog

    return [Catalog(Path(__file__).resolve().parent / "gr_dummy_translations", "gr_dummy")]


@hookimpl
def register_blueprints(app):
    from flask import Blueprint
    from flask_babel import gettext

    bp = Blueprint("dummy", __name__)
    bp.add_url_rule("/dummy/hello", "hello",
                    lambda: gettext("Hello from the dummy plugin"))
    return [bp]
