"""``export-guests``: one month of guests to a file or standard output, the same
bytes as ``GET /api/backup/guests``."""

from __future__ import annotations

import os
import stat
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
@click.option("--output", type=click.Path(dir_okay=False, writable=True, allow_dash=True),
              help="Write to this file, or into this pipe or device (default, or -: "
                   "standard output).")
@with_appcontext
def export_guests_command(year: str, month: str, format_name: str, output: str | None) -> None:
    """Export one month of guests: the same bytes as GET /api/backup/guests."""
    from guest_registration.config_errors import ConfigError

    from guest_backup.export.request import ExportRequestError, parse_request
    from guest_backup.export.settings import check_settings
    from guest_backup.export.stream import open_export

    try:
        check_settings(current_app.config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        req = parse_request({"year": [year], "month": [month], "format": [format_name]},
                            current_app.extensions["export_formats"])
    except ExportRequestError as exc:
        raise click.UsageError(str(exc)) from None
    sink = _Output(None if output == "-" else output)  # opened before the export
    engine = database_engine()
    try:
        stream = open_export(engine, req, db_engine=backup_context().engine_for(
                                 engine.dialect.name, required=False),
                             actor=cli_actor(), via="cli",
                             fetch_rows=current_app.config["EXPORT_FETCH_ROWS"])
    except BaseException:
        sink.discard()
        raise
    try:
        for chunk in stream.chunks:
            sink.write(chunk)
        sink.finish()
    except BaseException:
        stream.chunks.close()
        sink.discard()
        raise
    if sink.target is not None:
        click.echo(f"{stream.rows} guests written to {sink.target}", err=True)


class _Output:
    """Where ``export-guests`` writes: standard output (``target`` None); straight
    into an existing pipe, device or link (never replaced: ``/dev/null`` stays a
    device); else a new file beside the target, put in its place once whole."""

    def __init__(self, target: str | None) -> None:
        self.target, self._tmp = target, None
        if target is None:
            self._fh = sys.stdout.buffer
            return
        path = Path(target)
        if not target or target.endswith(("/", os.sep)) or path.name in ("", ".", ".."):
            raise click.BadParameter(f"{target!r} is not a file name; give one, or - for "
                                     "standard output", param_hint="'--output'")
        if _exists_and_not_a_file(path):
            try:
                self._fh = open(path, "wb")  # noqa: SIM115 (closed by finish or discard)
            except OSError as exc:
                raise click.ClickException(f"cannot write to {target} ({exc.strerror}); "
                                           "nothing was exported") from None
        else:
            fd, self._tmp = _part_file(path)
            self._fh = os.fdopen(fd, "wb")  # the file made, never one put there by name

    def write(self, chunk: bytes) -> None:
        self._fh.write(chunk)

    def finish(self) -> None:
        self._fh.flush()
        if self.target is not None:
            self._fh.close()
        if self._tmp is not None:
            os.replace(self._tmp, self.target)

    def discard(self) -> None:
        if self.target is not None:
            self._fh.close()
        if self._tmp is not None:
            Path(self._tmp).unlink(missing_ok=True)


def _exists_and_not_a_file(path: Path) -> bool:
    """A pipe, a device, a socket or a symbolic link (``/dev/stdout``): what is
    written into where it is, not replaced by a new file."""
    try:
        return not stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


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
