"""Commands that read archives: ``verify``, ``restore`` (also straight from a
remote storage: ``s3://bucket/prefix/NAME``), ``restore-test`` and
``backup-health``. Thin wrappers over the service modules."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from flask import current_app
from flask.cli import with_appcontext

from guest_registration.audit import cli_actor
from guest_registration.config import normalise_database_url
from guest_registration.extensions import database_engine
from guest_registration.maintenance import safe_url

from guest_backup.cli.backup import _busy, _fail
from guest_backup.wiring import backup_context
from guest_backup.archive.encryption import load_identities
from guest_backup.engines import parse_url
from guest_backup.errors import BackupBusy, BackupError
from guest_backup.ops.fetch import is_url, local_copy


def _trust_and_identity(trusted_key: tuple[str, ...], identity: str | None):
    ctx = backup_context()
    try:
        trusted = ctx.settings.trusted(trusted_key)
        identities = load_identities(identity) if identity else None
    except BackupError as exc:
        _fail(str(exc))
    return ctx, trusted, identities


def _explicit(trusted_key: tuple[str, ...]) -> list[str]:
    """The keys given on the command line, as the signatures name them: archives
    they signed may come from another installation."""
    from guest_backup.archive.signing import TrustedKeys  # cryptography: not for --help

    return list(TrustedKeys(trusted_key))


TRUSTED_KEY = click.option("--trusted-key", multiple=True, metavar="KEY",
                           help="Also trust archives signed by this public key (ed25519:..., "
                                "as backup-key prints it). Repeatable; see BACKUP_TRUSTED_KEYS.")
IDENTITY = click.option("--identity", type=click.Path(dir_okay=False, exists=True),
                        help="age identity file (AGE-SECRET-KEY-...) to decrypt a .zip.age "
                             "archive.")
ALLOW_UNSIGNED = click.option("--allow-unsigned", is_flag=True,
                              help="Accept an archive without a signature (made before "
                                   "archives were signed). Audited.")


@click.command("verify")
@click.argument("archive")
@TRUSTED_KEY
@IDENTITY
@ALLOW_UNSIGNED
@with_appcontext
def verify_command(archive: str, trusted_key: tuple[str, ...], identity: str | None,
                   allow_unsigned: bool) -> None:
    """Check an archive (a file, or s3://bucket/prefix/NAME): its signature, every
    checksum, a complete and clean dump."""
    from guest_backup.archive.manifest import shown
    from guest_backup.ops.schema import archive_revisions
    from guest_backup.ops.verify import audit_target, verify

    if not is_url(archive) and not Path(archive).is_file():
        _fail(f"{archive} does not exist")
    ctx, trusted, identities = _trust_and_identity(trusted_key, identity)
    try:
        with local_copy(ctx, archive) as path:
            report = verify(path, ctx.engines, trusted, audit=ctx.audit,
                            audit_engine=database_engine(), actor=cli_actor(), via="cli",
                            allow_unsigned=allow_unsigned, identities=identities,
                            installation=ctx.settings.installation(),
                            explicit_keys=_explicit(trusted_key),
                            target=audit_target(archive, path, ctx.settings.backup_folder))
    except BackupError as exc:
        _fail(str(exc))
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
    try:  # verify refused revisions that are not names: quoted cut short all the same
        revisions, legacy = archive_revisions(m)
    except BackupError as exc:
        _fail(str(exc))
    names = shown(", ".join(shown(r, 64) for r in sorted(revisions)), 300)
    click.echo("schema: " + (f"made before migrations (counts as {names})" if legacy else names))


def _target_url(database_url: str | None, password_prompt: bool) -> str:
    """The restore target: ``--database-url`` (or RESTORE_DATABASE_URL), else the app's
    database as the app's engine names it: a relative SQLite path in DATABASE_URL is
    the instance folder's (Flask-SQLAlchemy resolves it there). Taken raw, it was the
    working folder's: the restore wrote a copy of the archive's guests there, locked
    another file than an erasure, and said it restored the app's database, which kept
    its data. A relative SQLite path given to --database-url or RESTORE_DATABASE_URL is
    the working folder's, as any path an operator types, made absolute here so that
    the question, the lock and the message name the one file. A password asked for
    goes into the URL in memory only (psql gets it as PGPASSWORD, never as an argument)."""
    if database_url:
        target = _absolute_sqlite(normalise_database_url(database_url))
    else:
        target = database_engine().url.render_as_string(hide_password=False)
    url = parse_url(target)
    source = click.get_current_context().get_parameter_source("database_url")
    if url.password and source == click.core.ParameterSource.COMMANDLINE:
        click.echo("WARNING: a password on the command line is visible to every user of "
                   "this machine (ps, /proc); use PGPASSWORD, ~/.pgpass or --password-prompt",
                   err=True)
    if password_prompt:
        password = click.prompt(f"Password for {safe_url(target)}", hide_input=True,
                                err=True)
        target = url.set(password=password).render_as_string(hide_password=False)
    return target


def _absolute_sqlite(target: str) -> str:
    """An SQLite URL's relative path made absolute against the working folder."""
    url = parse_url(target)
    name = url.database
    if url.get_backend_name() != "sqlite" or not name or name == ":memory:" \
            or name.startswith("file:") or os.path.isabs(name):
        return target
    return url.set(database=os.path.abspath(name)).render_as_string(hide_password=False)


@click.command("restore")
@click.argument("archive")
@click.option("--database-url", envvar="RESTORE_DATABASE_URL", show_envvar=True,
              help="Restore into this database (default: the app's own). Give its password "
              "by PGPASSWORD, ~/.pgpass or --password-prompt, never in a URL on the "
              "command line (other users see command lines).")
@click.option("--password-prompt", is_flag=True,
              help="Ask for the target database's password (not echoed).")
@click.option("--uploads", "uploads_dir", type=click.Path(file_okay=False),
              help="Restore the uploads into this folder (default: UPLOAD_FOLDER).")
@click.option("--replace", is_flag=True, help="Replace a non-empty target database, in one "
              "transaction: if the load fails, it stays as it was.")
@TRUSTED_KEY
@IDENTITY
@ALLOW_UNSIGNED
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@with_appcontext
def restore_command(archive: str, database_url: str | None, password_prompt: bool,
                    uploads_dir: str | None, replace: bool, trusted_key: tuple[str, ...], identity: str | None,
                    allow_unsigned: bool, yes: bool) -> None:
    """Verify an archive (a file, or s3://bucket/prefix/NAME), then restore its
    database and uploads."""
    from guest_backup.ops.finishing import erasures_for
    from guest_backup.ops.restore import restore_archive

    ctx, trusted, _ = _trust_and_identity(trusted_key, None)
    target = _target_url(database_url, password_prompt)
    uploads = uploads_dir or current_app.config["UPLOAD_FOLDER"]
    if not yes:
        click.confirm(f"Restore {archive} into {safe_url(target)} and {uploads}"
                      f"{' (REPLACING the database contents)' if replace else ''}?", abort=True)
    if allow_unsigned:
        click.echo("WARNING: --allow-unsigned: an archive without a signature will be restored; "
                   "its origin cannot be checked", err=True)
    try:
        with local_copy(ctx, archive) as path:
            result = restore_archive(path, engines=ctx.engines, settings=ctx.settings,
                                     target_url=target, uploads_dir=uploads, replace=replace,
                                     trusted=trusted, engine=database_engine(),
                                     audit=ctx.audit, actor=cli_actor(), via="cli",
                                     allow_unsigned=allow_unsigned, identity=identity,
                                     explicit_keys=_explicit(trusted_key),
                                     migrations=ctx.migrations() if ctx.migrations else None,
                                     erasures=lambda: erasures_for(ctx))
    except BackupBusy as exc:  # another restore or an erasure holds the target: exit 75
        _busy(exc)
    except BackupError as exc:
        _fail(str(exc))
    if result.unsigned:
        click.echo("WARNING: the restored archive was UNSIGNED (recorded in the audit log)",
                   err=True)
    if result.schema:
        click.echo(result.schema)
    click.echo(f"{result.erasures} erasure{'s' if result.erasures != 1 else ''} re-applied")
    click.echo(f"restored {sum(result.row_counts.values())} rows and {result.uploads} uploads "
               f"into {safe_url(target)} and {uploads} ({result.uploads_present} already there, "
               f"{result.uploads_kept} existing files kept as they were)")


COMMANDS = [verify_command, restore_command]


@click.command("restore-test")
@IDENTITY
@TRUSTED_KEY
@click.option("--queue", "queued", is_flag=True, help="Queue the drill for `manage.py worker` "
              "(needs REDIS_URL) instead of running it here; its result goes to the audit log.")
@click.option("--pitr", is_flag=True, help="Drill point-in-time recovery instead: recover to "
              "a random moment of the last day into a scratch cluster (same as `pitr drill`).")
@with_appcontext
def restore_test_command(identity: str | None, trusted_key: tuple[str, ...],
                         queued: bool, pitr: bool) -> None:
    """Restore drill: restore the newest archive (the remote copy when one is
    configured) into a scratch database, compare every table's row count with the
    manifest, and remove the scratch database. Exits 1 on any mismatch, 75 when a
    backup is running. With --pitr, the point-in-time drill."""
    from guest_backup.ops.drill import restore_drill

    if pitr:
        from guest_backup.cli.pitr import drill_command

        click.get_current_context().invoke(drill_command)
        return

    if queued:
        from guest_backup.tasks import enqueue_drill

        try:
            job_id = enqueue_drill(current_app, cli_actor(), identity, trusted_key)
        except BackupError as exc:
            _fail(str(exc))
        click.echo(f"queued restore drill {job_id}: `manage.py worker` runs it; its result "
                   f"is in the audit log (restore-test)")
        return

    try:
        result = restore_drill(backup_context(), database_engine(), identity=identity,
                               trusted_keys=trusted_key, actor=cli_actor(), via="cli")
    except BackupBusy as exc:
        _busy(exc)
    except BackupError as exc:
        _fail(f"restore drill failed: {exc}")
    for problem in result.mismatches:
        click.echo(f"MISMATCH {problem}", err=True)
    if not result.ok:
        _fail(f"restore drill of {result.archive} failed ({len(result.mismatches)} mismatch(es))")
    click.echo(f"OK restore drill of {result.archive} from {result.storage}: {result.tables} "
               f"tables, {result.rows} rows, all as the manifest says; {result.erasures} "
               f"erasure{'s' if result.erasures != 1 else ''} re-applied")


class _HealthCommand(click.Command):
    """A wrong option or value exits 1, not click's 2: to monitoring, backup-health's 2
    means "a storage cannot be reached" (a typo in the script, --max-age "26 hours",
    said that)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            exc.exit_code = 1
            raise


def _duration(ctx: click.Context, param: click.Parameter, value: str):
    """An option's duration (26h, 35d), or an error that names the option."""
    from guest_backup.ops.health_problems import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("backup-health", cls=_HealthCommand)
@click.option("--max-age", default="26h", show_default=True, callback=_duration,
              help="Unhealthy when a storage's newest archive is older (e.g. 26h, 2d).")
@click.option("--max-drill-age", default="35d", show_default=True, callback=_duration,
              help="Unhealthy when the last passed restore drill is older.")
@with_appcontext
def backup_health_command(max_age, max_drill_age) -> None:
    """Print the backups' health as JSON; exit 0 healthy, 1 unhealthy (or a wrong
    option), 2 when a storage cannot be reached."""
    import json

    from guest_backup.ops.health import health

    report, code = health(backup_context(), database_engine(), max_age=max_age,
                          max_drill_age=max_drill_age)
    click.echo(json.dumps(report, indent=2))
    sys.exit(code)


COMMANDS += [restore_test_command, backup_health_command]
