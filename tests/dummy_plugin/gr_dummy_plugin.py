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
