"""Backup commands; thin wrappers over the service modules."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import click
from flask import current_app
from flask.cli import with_appcontext

from guest_registration.audit import cli_actor
from guest_registration.config import normalise_database_url
from guest_registration.extensions import db
from guest_registration.formatting import human_size
from guest_registration.maintenance import safe_url

from .archive import clean_partials, list_archives
from .context import backup_context
from .create import create_backup
from .encryption import load_identities
from .errors import BackupError
from .guest_export import ExportRequestError, open_export, parse_request
from .restore import restore_archive
from .retention import prune_archives
from .verify import verify


def _fail(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(1)


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
    try:
        req = parse_request({"year": [year], "month": [month], "format": [format_name]},
                            current_app.extensions["export_formats"])
    except ExportRequestError as exc:
        raise click.UsageError(str(exc)) from None
    stream = open_export(db.engine, req,
                         db_engine=backup_context().engines.get(db.engine.dialect.name),
                         actor=cli_actor(), via="cli",
                         fetch_rows=current_app.config["EXPORT_FETCH_ROWS"])
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
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part",
                               dir=target.parent if str(target.parent) else ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in stream.chunks:
                fh.write(chunk)
        os.replace(tmp, target)
    except BaseException:
        stream.chunks.close()
        Path(tmp).unlink(missing_ok=True)
        raise
    click.echo(f"{stream.rows} guests written to {target}", err=True)


@click.command("backup")
@click.option("--output", type=click.Path(), help="Write the archive here (a file or a folder) "
              "instead of BACKUP_FOLDER.")
@click.option("--keep", type=click.IntRange(min=0), default=None,
              help="Keep the N newest archives in BACKUP_FOLDER (default: BACKUP_KEEP), "
                   "besides what BACKUP_KEEP_DAILY/WEEKLY/MONTHLY keep; all 0 = keep all.")
@with_appcontext
def backup_command(output: str | None, keep: int | None) -> None:
    """Make a system backup: database dump + uploads without guest photos, as one ZIP.

    Prints the archive's path as the last line; exits 1 on failure."""
    ctx = backup_context()
    settings = ctx.settings
    if keep is not None:
        settings.keep = keep
    try:
        result = create_backup(db.engine, ctx.engine_for(db.engine.dialect.name), settings,
                               output=output, actor=cli_actor(), via="cli")
    except BackupError as exc:
        _fail(str(exc))
    m = result.manifest
    click.echo(f"{sum(m['row_counts'].values())} rows in {len(m['row_counts'])} tables, "
               f"{len(m['members']) - 1} uploads, {m['excluded_guest_photos']} guest photos left out, "
               f"{human_size(result.size)}")
    click.echo(str(result.path))


@click.command("backup-list")
@with_appcontext
def backup_list_command() -> None:
    """List the archives in BACKUP_FOLDER, newest first."""
    folder = backup_context().settings.backup_folder
    clean_partials(folder)  # leftovers of a killed backup
    archives = list_archives(folder)
    if not archives:
        click.echo(f"no archives in {folder}")
    for a in archives:
        click.echo(f"{a.name}  {human_size(a.size):>10}  {a.created:%Y-%m-%d %H:%M:%S} UTC")


def _trust_and_identity(trusted_key: tuple[str, ...], identity: str | None):
    ctx = backup_context()
    try:
        trusted = ctx.settings.trusted(trusted_key)
        identities = load_identities(identity) if identity else None
    except BackupError as exc:
        _fail(str(exc))
    return ctx, trusted, identities


TRUSTED_KEY = click.option("--trusted-key", multiple=True, metavar="KEY",
                           help="Also trust archives signed by this public key (ed25519:..., "
                                "as backup-key prints it). Repeatable; see BACKUP_TRUSTED_KEYS.")
IDENTITY = click.option("--identity", type=click.Path(dir_okay=False, exists=True),
                        help="age identity file (AGE-SECRET-KEY-...) to decrypt a .zip.age "
                             "archive.")
ALLOW_UNSIGNED = click.option("--allow-unsigned", is_flag=True,
                              help="Accept an archive without a signature (made before "
                                   "archives were signed). Audited.")


@click.command("backup-prune")
@click.option("--dry-run", is_flag=True, help="Only print what would be removed.")
@with_appcontext
def backup_prune_command(dry_run: bool) -> None:
    """Apply the retention rules to BACKUP_FOLDER and print every archive's fate.

    The rules are restic's: BACKUP_KEEP newest archives, plus the newest of each
    of the last BACKUP_KEEP_DAILY days, BACKUP_KEEP_WEEKLY ISO weeks and
    BACKUP_KEEP_MONTHLY months (UTC, from the archive's name). The newest
    archive is always kept; with no rule set nothing is removed."""
    settings = backup_context().settings
    try:
        decisions = prune_archives(settings.backup_folder, settings.retention, dry_run=dry_run,
                                   audit_engine=db.engine, actor=cli_actor(), via="cli")
    except BackupError as exc:
        _fail(str(exc))
    for d in decisions:
        click.echo(f"{d.name}  {d.describe()}")
    removed = sum(not d.keep for d in decisions)
    click.echo(f"{'would remove' if dry_run else 'removed'} {removed} of {len(decisions)} "
               f"archive(s)")


@click.command("backup-key")
@with_appcontext
def backup_key_command() -> None:
    """Print the public key archives are signed with (created on first use).

    Keep it with your recovery notes: a new server trusts this instance's
    archives with --trusted-key KEY. The key is the last line."""
    try:
        signer = backup_context().settings.signer()
    except BackupError as exc:
        _fail(str(exc))
    click.echo(f"archives are signed with the key in {backup_context().settings.signing_key}; "
               "its public key:")
    click.echo(signer.public_key)


@click.command("verify")
@click.argument("archive", type=click.Path(dir_okay=False))
@TRUSTED_KEY
@IDENTITY
@ALLOW_UNSIGNED
@with_appcontext
def verify_command(archive: str, trusted_key: tuple[str, ...], identity: str | None,
                   allow_unsigned: bool) -> None:
    """Check an archive: its signature, every checksum, a complete and clean dump."""
    if not Path(archive).is_file():
        _fail(f"{archive} does not exist")
    ctx, trusted, identities = _trust_and_identity(trusted_key, identity)
    report = verify(archive, ctx.engines, trusted, audit_engine=db.engine, actor=cli_actor(),
                    via="cli", allow_unsigned=allow_unsigned, identities=identities)
    for note in report.notes:
        click.echo(f"WARNING {note}", err=True)
    if not report.ok:
        for problem in report.problems:
            click.echo(f"FAIL {problem}", err=True)
        _fail(f"{archive} did not verify ({len(report.problems)} problem(s))")
    if report.decryption_skipped:
        click.echo(f"OK {archive}: encrypted file signed by {report.signed_by}; decryption "
                   f"skipped (no --identity), so its contents were not checked")
        return
    m = report.manifest
    signed = "UNSIGNED" if report.unsigned else f"signed by {report.signed_by}"
    click.echo(f"OK {archive}: {signed}, {len(m['members'])} members checked, "
               f"{m['database']['engine']} dump complete and clean, created {m['created_at']}")


@click.command("restore")
@click.argument("archive", type=click.Path(dir_okay=False))
@click.option("--database-url", help="Restore into this database (default: the app's own). "
              "Prefer PGPASSWORD or ~/.pgpass to a password in the URL.")
@click.option("--uploads", "uploads_dir", type=click.Path(file_okay=False),
              help="Restore the uploads into this folder (default: UPLOAD_FOLDER).")
@click.option("--replace", is_flag=True, help="Replace a non-empty target database, in one "
              "transaction: if the load fails, it stays as it was.")
@TRUSTED_KEY
@IDENTITY
@ALLOW_UNSIGNED
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@with_appcontext
def restore_command(archive: str, database_url: str | None, uploads_dir: str | None,
                    replace: bool, trusted_key: tuple[str, ...], identity: str | None,
                    allow_unsigned: bool, yes: bool) -> None:
    """Verify an archive, then restore its database and uploads."""
    ctx, trusted, _ = _trust_and_identity(trusted_key, None)
    target = normalise_database_url(database_url or current_app.config["DATABASE_URL"])
    uploads = uploads_dir or current_app.config["UPLOAD_FOLDER"]
    if not yes and Path(archive).is_file():
        click.confirm(f"Restore {archive} into {safe_url(target)} and {uploads}"
                      f"{' (REPLACING the database contents)' if replace else ''}?", abort=True)
    if allow_unsigned:
        click.echo("WARNING: --allow-unsigned: an archive without a signature will be restored; "
                   "its origin cannot be checked", err=True)
    try:
        result = restore_archive(archive, engines=ctx.engines, settings=ctx.settings,
                                 target_url=target, uploads_dir=uploads, replace=replace,
                                 trusted=trusted, engine=db.engine, actor=cli_actor(), via="cli",
                                 allow_unsigned=allow_unsigned, identity=identity)
    except BackupError as exc:
        _fail(str(exc))
    if result.unsigned:
        click.echo("WARNING: the restored archive was UNSIGNED (recorded in the audit log)",
                   err=True)
    click.echo(f"restored {sum(result.row_counts.values())} rows and {result.uploads} uploads "
               f"into {safe_url(target)} and {uploads} ({result.uploads_present} already there, "
               f"{result.uploads_kept} existing files kept as they were)")


COMMANDS = [export_guests_command, backup_command, backup_list_command, backup_prune_command,
            backup_key_command, verify_command, restore_command]
