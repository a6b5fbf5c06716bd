"""``export-guests``: one month of guests to a file or standard output, the same
bytes as ``GET /api/backup/guests``."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import click
from flask import current_app
from flask.cli import with_appcontext

from guest_registration.audit import cli_actor
from guest_registration.extensions import database_engine

from guest_backup.wiring import backup_context


@click.command("export-guests")
@click.option("--year", required=True, help="Year, e.g. 2025.")
@click.option("--month", required=True, help="Month, 1-12.")
@click.option("--format", "format_name", default="csv", show_default=True,
              help="Export format (see: manage.py plugins).")
@click.option("--output", type=click.Path(dir_okay=False, writable=True),
              help="Write to this file (default: standard output).")
@with_appcontext
def export_guests_command(year: str, month: str, format_name: str, output: str | None) -> None:
    """Export one month of guests: the same bytes as GET /api/backup/guests."""
    from guest_backup.export.request import ExportRequestError, parse_request
    from guest_backup.export.stream import open_export

    try:
        req = parse_request({"year": [year], "month": [month], "format": [format_name]},
                            current_app.extensions["export_formats"])
    except ExportRequestError as exc:
        raise click.UsageError(str(exc)) from None
    fd, tmp = (None, None) if output is None else _part_file(Path(output))
    engine = database_engine()
    try:
        stream = open_export(engine, req, db_engine=backup_context().engine_for(
                                 engine.dialect.name, required=False),
                             actor=cli_actor(), via="cli",
                             fetch_rows=current_app.config["EXPORT_FETCH_ROWS"])
    except BaseException:
        if tmp is not None:
            os.close(fd)
            Path(tmp).unlink(missing_ok=True)
        raise
    if output is None:
        out = sys.stdout.buffer
        try:
            for chunk in stream.chunks:
                out.write(chunk)
            out.flush()
        finally:
            stream.chunks.close()
        return
    target = Path(output)
    try:
        with os.fdopen(fd, "wb") as fh:  # the file made, never one put there by name
            for chunk in stream.chunks:
                fh.write(chunk)
        os.replace(tmp, target)
    except BaseException:
        stream.chunks.close()
        Path(tmp).unlink(missing_ok=True)
        raise
    click.echo(f"{stream.rows} guests written to {target}", err=True)


def _part_file(target: Path) -> tuple[int, str]:
    """A new empty file beside ``target`` (0600), made before the export starts: a
    folder this user may not write is one line naming it, not a traceback (and no
    export is opened, audited and aborted for it)."""
    folder = target.parent if str(target.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=folder)
    except OSError as exc:
        raise click.ClickException(f"cannot write to the folder {folder.absolute()} "
                                   f"({exc.strerror}); nothing was exported") from None
    return fd, tmp


COMMANDS = [export_guests_command]
