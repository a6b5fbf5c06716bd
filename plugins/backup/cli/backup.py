"""``backup``, ``backup-list``, ``backup-prune``, ``backup-key``: thin wrappers
over :mod:`guest_backup.ops`.

The operations are imported inside the commands: every command of the app is
registered at start-up, and ``backup --help`` should not import a backup.
"""

from __future__ import annotations

import sys

import click
from flask.cli import with_appcontext

from guest_registration.audit import cli_actor
from guest_registration.extensions import database_engine
from guest_registration.formatting import human_size

from guest_backup.wiring import backup_context
from guest_backup.errors import BackupBusy, BackupError


#: exit code of a command refused because another backup runs (EX_TEMPFAIL: try later)
EXIT_BUSY = 75


def _fail(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(1)


def _busy(exc: Exception) -> None:
    """Another backup holds the lock: say so and exit 75, a skipped run."""
    click.echo(f"Error: {exc}", err=True)
    sys.exit(EXIT_BUSY)


@click.command("backup")
@click.option("--output", type=click.Path(), help="Write the archive here (a file or a folder) "
              "instead of BACKUP_FOLDER.")
@click.option("--keep", type=click.IntRange(min=0), default=None,
              help="Keep the N newest archives in each storage (BACKUP_FOLDER and "
                   "BACKUP_REMOTE_URL; default: BACKUP_KEEP), besides what "
                   "BACKUP_KEEP_DAILY/WEEKLY/MONTHLY keep; all 0 = keep all.")
@with_appcontext
def backup_command(output: str | None, keep: int | None) -> None:
    """Make a system backup: database dump + uploads without guest photos, as one
    signed ZIP (encrypted with BACKUP_AGE_RECIPIENTS), copied to BACKUP_REMOTE_URL.

    Prints the archive's path as the last line. Exits 1 on failure (also when
    only the remote copy failed: the local archive is kept), 75 when another
    backup is running."""
    from guest_backup.ops.pipeline import run_backup
    from guest_backup.ops.uploads import left_out_text

    ctx = backup_context()
    try:
        run = run_backup(ctx, database_engine(), output=output, keep=keep,
                         actor=cli_actor(), via="cli")
    except BackupBusy as exc:
        _busy(exc)
    except BackupError as exc:
        _fail(str(exc))
    result = run.result
    for url in run.uploaded_to:
        click.echo(f"copied to {url}")
    for storage, removed in run.pruned.items():
        if removed:
            click.echo(f"retention removed {len(removed)} archive(s) from {storage}")
    m = result.manifest
    click.echo(f"{sum(m['row_counts'].values())} rows in {len(m['row_counts'])} tables, "
               f"{len(m['members']) - 1} uploads, {m['excluded_guest_photos']} guest photos left out, "
               f"{human_size(result.size)}")
    if left_out := left_out_text(m.get("left_out_uploads")):
        click.echo(f"WARNING {left_out} (their names are in the log)", err=True)
    click.echo(str(result.path))


@click.command("backup-list")
@with_appcontext
def backup_list_command() -> None:
    """List the archives, newest first, with where each one is (local, remote)."""
    from guest_backup.ops.folders import clean_partials
    from guest_backup.ops.listing import list_everywhere

    ctx = backup_context()
    clean_partials(ctx)  # leftovers of a killed backup
    try:
        listing = list_everywhere(ctx)
    except BackupError as exc:
        _fail(str(exc))
    for problem in listing.problems:
        click.echo(f"WARNING {problem}", err=True)
    if not listing.archives:
        click.echo(f"no archives in {', '.join(listing.urls)}")
    for storage, names in listing.unreadable.items():  # root's files in the service's folder
        click.echo(f"WARNING {storage}: {len(names)} file(s) named like archives cannot be read "
                   f"by this user: {'; '.join(names[:3])}{'; …' if len(names) > 3 else ''} "
                   f"(run commands as the backup folder's owner, or chown them)", err=True)
    for storage, names in listing.unrecognised.items():  # as health counts them
        if count := len(names) - len(listing.unreadable.get(storage, ())):
            click.echo(f"WARNING {storage}: {count} file(s) named like archives are not "
                       f"recognised (no valid seal of a trusted key, or another "
                       f"installation's)", err=True)
    for storage, ahead in listing.future.items():
        click.echo(f"WARNING {storage}: {len(ahead)} archive(s) signed with a creation time "
                   f"in the future: check this machine's clock", err=True)
    for a in listing.archives:
        click.echo(f"{a.name}  {human_size(a.size):>10}  {a.created:%Y-%m-%d %H:%M:%S} UTC  "
                   f"{', '.join(a.locations)}")


@click.command("backup-prune")
@click.option("--dry-run", is_flag=True, help="Only print what would be removed.")
@with_appcontext
def backup_prune_command(dry_run: bool) -> None:
    """Apply the retention rules to each storage and print every archive's fate.

    The rules are restic's: BACKUP_KEEP newest archives, plus the newest of each
    of the last BACKUP_KEEP_DAILY days, BACKUP_KEEP_WEEKLY ISO weeks and
    BACKUP_KEEP_MONTHLY months (UTC, from the archive's name). The newest
    archive is always kept; with no rule set nothing is removed."""
    from guest_backup.ops.retention import Policy, prune_archives

    ctx = backup_context()
    settings = ctx.settings
    try:
        found = prune_archives(ctx, ctx.storages(), Policy.of(settings),
                               lock=ctx.lock(), dry_run=dry_run,
                               audit_engine=database_engine(), actor=cli_actor(), via="cli")
    except BackupBusy as exc:
        _busy(exc)
    except BackupError as exc:
        _fail(str(exc))
    for storage, decisions in found.items():
        if len(found) > 1:
            click.echo(f"{storage}:")
        for d in decisions:
            click.echo(f"{d.name}  {d.describe()}")
        removed = sum(not d.keep for d in decisions)
        click.echo(f"{'would remove' if dry_run else 'removed'} {removed} of {len(decisions)} "
                   f"archive(s)" + (f" from {storage}" if len(found) > 1 else ""))


@click.command("backup-key")
@with_appcontext
def backup_key_command() -> None:
    """Print the public key archives are signed with (created on first use).

    Keep it with your recovery notes: a new server trusts this instance's
    archives with --trusted-key KEY. The key is the last line."""
    settings = backup_context().settings
    try:
        signer = settings.signer()
        path = settings.signing_key_file()
    except BackupError as exc:
        _fail(str(exc))
    click.echo(f"archives are signed with the key in {path}; its public key:")
    click.echo(signer.public_key)


COMMANDS = [backup_command, backup_list_command, backup_prune_command,
            backup_key_command]
