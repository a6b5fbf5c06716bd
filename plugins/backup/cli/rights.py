"""Guests' rights: ``erase``, ``erasure-ledger check|publish``, ``retention-enforce``,
``subject-access``. Thin wrappers over :mod:`guest_backup.ops.erasure`,
:mod:`guest_backup.ops.rights` and :mod:`guest_backup.ops.subject_access`, imported
inside the commands (every command is registered at start-up; see ``cli.backup``)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click
from flask.cli import with_appcontext

from guest_registration.audit import cli_actor
from guest_registration.extensions import database_engine

from guest_backup.cli.backup import _busy, _fail
from guest_backup.cli.terminal import plain
from guest_backup.errors import BackupBusy, BackupError
from guest_backup.wiring import backup_context

if TYPE_CHECKING:  # pragma: no cover
    from guest_backup.ops.erasure import ErasurePlan, Target


def _target(guest: int | None, registration: int | None, email: str | None) -> Target:
    given = [v for v in (guest, registration, email) if v is not None]
    if len(given) != 1:
        raise click.UsageError("give exactly one of --guest, --registration, --email")
    from guest_backup.ops.erasure import Target

    if guest is not None:
        return Target.guest(guest)
    if registration is not None:
        return Target.registration(registration)
    return Target.of_email(email)


def _describe(plan: ErasurePlan) -> list[str]:
    """The plan, for the operator who confirms it (names included, on the terminal)."""
    lines = [f"{plan.label}: {len(plan.guests)} guest(s) with personal data, "
             f"{sum(g.photo for g in plan.guests)} document photo(s), "
             f"{len(plan.closed)} registration e-mail(s) will be erased"]
    for g in plan.guests:
        lines.append(f"  guest {g.id} of registration {g.registration_id}: {g.first_name} "
                     f"{g.last_name}, {g.age_category}, {g.document_type}"
                     + (", photo" if g.photo else ""))
    for r in plan.registrations:
        lines.append(f"  registration {r.id} ({r.trip}): "
                     + (f"e-mail {r.email} erased" if r.closes else "e-mail kept"))
    return [plain(line) for line in lines]


@click.command("erase")
@click.option("--guest", type=int, metavar="ID", help="Erase this guest.")
@click.option("--registration", type=int, metavar="ID",
              help="Erase this registration and all its guests.")
@click.option("--email", metavar="ADDRESS",
              help="Erase every registration of this e-mail address (any case).")
@click.option("--yes", is_flag=True, help="Do not show the plan and ask for confirmation.")
@with_appcontext
def erase_command(guest: int | None, registration: int | None, email: str | None,
                  yes: bool) -> None:
    """Erase a guest's personal data (GDPR): names and document number become
    [erased], the document photo is deleted; the erasure goes to the erasure
    ledger, so a restore of an older archive erases it again."""
    from guest_backup.ops.erasure import NothingToErase, erase, plan_erasure

    target = _target(guest, registration, email)
    ctx = backup_context()
    try:
        plan = plan_erasure(database_engine(), target)
        if plan.empty:
            click.echo(f"nothing to erase: {target} holds no personal data any more")
            _finish_pending(ctx)
            return
        if not yes:
            click.echo("\n".join(_describe(plan)))
            click.confirm("Erase this permanently? It cannot be undone.", abort=True)
        result = erase(ctx, database_engine(), target, actor=cli_actor(), via="cli",
                       expected=None if yes else plan.fingerprint)  # what was confirmed
    except NothingToErase as exc:
        click.echo(f"nothing to erase: {exc}")
        _finish_pending(ctx)
        return
    except BackupError as exc:
        _fail(str(exc))
    for warning in result.warnings:
        click.echo(f"WARNING {warning}", err=True)
    p = result.plan
    click.echo(f"erased {p.label}: {len(p.guests)} guest(s), {len(p.closed)} registration "
               f"e-mail(s), {result.photos_deleted} photo(s) deleted; erasure ledger line "
               f"{result.seq}")


def _finish_pending(ctx) -> None:
    """What an erasure cut off after its commit left undone (its photos, the
    ledger's copies), finished: a second ``erase`` is what an operator tries, and
    ``erasure-ledger apply`` what the audit entry says."""
    from guest_backup.ops.erasure import finish_pending

    done = finish_pending(ctx, database_engine(), actor=cli_actor(), via="cli")
    for line in done.describe():
        click.echo(line)
    for warning in done.warnings:
        click.echo(f"WARNING {warning}", err=True)


@click.group("erasure-ledger")
def erasure_ledger_group() -> None:
    """The erasure ledger: every erasure, kept outside the database and copied
    beside the archives of every storage."""


@erasure_ledger_group.command("check")
@with_appcontext
def ledger_check_command() -> None:
    """Check every copy (the instance folder's and each storage's). Exit 1 when a
    copy is broken, forked or behind (it is named), 2 when a storage cannot be read."""
    from guest_backup.ops.ledger import ErasureLedger
    from guest_backup.ops.rights import check_ledger, ledger_problems

    ctx = backup_context()
    ledger = ErasureLedger.in_folder(ctx.instance_path)
    try:
        checks = check_ledger(ledger, ctx.storages())
    except BackupError as exc:
        _fail(str(exc))
    for c in checks:
        if c.unreadable:
            click.echo(f"UNREADABLE {c.label}: {c.problem}", err=True)
        elif c.problem:
            click.echo(f"BROKEN {c.label}: {c.problem}", err=True)
        elif c.lines is None:
            click.echo(f"OK {c.label}: no erasure recorded")
        else:
            click.echo(f"OK {c.label}: {c.lines} erasure(s), chain intact")
    broken, unreadable = ledger_problems(checks)
    if broken:
        _fail("the erasure ledger is not sound: "
              + ", ".join(c.label for c in checks if c.problem and not c.unreadable))
    if unreadable:
        sys.exit(2)


@erasure_ledger_group.command("publish")
@with_appcontext
def ledger_publish_command() -> None:
    """Merge every copy and write the result to the instance folder and to every
    storage (after a storage was unreachable during an erasure)."""
    from guest_backup.ops.ledger import ErasureLedger
    from guest_backup.ops.rights import publish_ledger

    ctx = backup_context()
    try:
        lines = publish_ledger(ErasureLedger.in_folder(ctx.instance_path), ctx.storages())
    except BackupError as exc:
        _fail(str(exc))
    click.echo(f"the erasure ledger ({lines} erasure(s)) is in every storage")


@erasure_ledger_group.command("apply")
@with_appcontext
def ledger_apply_command() -> None:
    """Re-apply to the app's database the erasures it does not reflect yet (the
    lines past its erasure mark; every line, once, when the mark is not known), then
    mark it. Run it after switching the app to a recovered cluster (pitr restore)
    or when backup-health says the database misses erasures. Exit 75 while a
    restore or an erasure of the database runs."""
    from guest_backup.ops.erasure_mark import apply_missing

    ctx = backup_context()
    try:
        done = apply_missing(ctx, database_engine(), actor=cli_actor(), via="cli")
    except BackupBusy as exc:
        _busy(exc)
    except BackupError as exc:
        _fail(str(exc))
    click.echo(done.describe())
    _finish_pending(ctx)  # and the browse copies erased too, SQLite's log emptied


@click.command("retention-enforce")
@click.option("--dry-run", is_flag=True, help="Only count what would be erased and pruned.")
@with_appcontext
def retention_enforce_command(dry_run: bool) -> None:
    """Legal retention (GUEST_RETENTION_YEARS, from the end of the stay): erase every
    registration whose stay ended longer ago, and delete older archives from every
    storage, whatever the backup retention rules keep."""
    from guest_backup.ops.rights import enforce_retention

    ctx = backup_context()
    try:
        run = enforce_retention(ctx, database_engine(), dry_run=dry_run, actor=cli_actor(),
                                via="cli")
    except BackupBusy as exc:
        _busy(exc)
    except BackupError as exc:
        _fail(str(exc))
    if run.before is None:
        click.echo("GUEST_RETENTION_YEARS is 0: the legal retention is off")
        return
    for warning in run.warnings:
        click.echo(f"WARNING {warning}", err=True)
    verb = "would erase" if dry_run else "erased"
    click.echo(f"{verb} {run.registrations} registration(s) with {run.guests} guest(s) and "
               f"{run.photos} photo(s): stays that ended before {run.before} "
               f"({run.years} years)")
    for storage, decisions in run.pruned.items():
        removed = [d.name for d in decisions if not d.keep]
        click.echo(f"{'would remove' if dry_run else 'removed'} {len(removed)} of "
                   f"{len(decisions)} archive(s) from {storage}")
        for name in removed:
            click.echo(f"  {name}")
        for d in decisions:  # past the horizon, but the storage does not let them go yet
            if d.held is not None and d.past_horizon:
                click.echo(f"WARNING {storage}: {d.name} is past the legal retention but kept: "
                           f"{d.held}; run retention-enforce again then", err=True)


@click.command("subject-access")
@click.option("--email", metavar="ADDRESS", help="The person's registration e-mail (any case).")
@click.option("--document", metavar="NUMBER", help="The person's document number (spaces and "
              "case do not matter).")
@click.option("--output", required=True, type=click.Path(file_okay=False),
              help="Write the JSON and CSV files into this folder (created 0700; an "
                   "existing one must be 0700 and yours).")
@with_appcontext
def subject_access_command(email: str | None, document: str | None, output: str) -> None:
    """Everything held about one person (GDPR Art. 15): one JSON and one CSV file
    (0600) with their registrations and guests, and the archives that may still
    hold them."""
    if (email is None) == (document is None):
        raise click.UsageError("give exactly one of --email, --document")
    from guest_backup.ops.subject_access import subject_access

    try:
        report = subject_access(backup_context(), database_engine(), output_dir=output,
                                actor=cli_actor(), via="cli", email=email, document=document)
    except BackupError as exc:
        _fail(str(exc))
    for problem in report.problems:
        click.echo(f"WARNING {problem}", err=True)
    click.echo(f"{report.registrations} registration(s), {report.guests} guest(s); "
               f"{len(report.archives)} archive(s) may hold them")
    for e in report.erasures:  # archives are never edited: those made before still hold them
        public = e.public()
        click.echo(f"erased at {public['erased_at']} (erasure ledger line {e.seq}): the archives "
                   f"made before it still hold them until retention removes them")
    for a in report.archives:
        click.echo(f"  {a['name']} ({a['storage']}, {a['created_at']})")
    click.echo(str(report.json_path))
    click.echo(str(report.csv_path))


COMMANDS = [erase_command, erasure_ledger_group, retention_enforce_command,
            subject_access_command]
