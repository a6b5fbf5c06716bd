"""``restore-select``: bring back chosen registrations or a whole trip from an
archive into the live database, previewed first. A thin wrapper over
:mod:`guest_backup.ops.browse` (the archive opened into a scratch database) and
:mod:`guest_backup.ops.selection` (the plan, the restore, the audit entry)."""

from __future__ import annotations

import json

import click
from flask.cli import with_appcontext

from guest_registration.audit import cli_actor
from guest_registration.extensions import database_engine

from guest_backup.cli.backup import _fail
from guest_backup.cli.restore import IDENTITY, TRUSTED_KEY
from guest_backup.cli.terminal import plain
from guest_backup.errors import BackupError
from guest_backup.ops.selection_steps import (ACTIONS, PHOTO_NOTES, REASONS, Plan, Selection,
                                              SelectionError)
from guest_backup.wiring import backup_context

HEAD = {"insert": "INSERT", "overwrite": "OVERWRITE", "leave": "LEAVE", "erased": "ERASED"}
#: an id as the tables hold it (INTEGER): a larger one never names a row, and SQLite
#: could not even look it up ("failed (OverflowError)")
ID = click.IntRange(1, 2**31 - 1)


def describe(plan: Plan, archive: str) -> list[str]:
    """The preview as lines for the operator (names included: on the terminal, their
    control characters escaped)."""
    lines = [f"Selective restore from {archive}: {plan.selection.describe()}"]
    for action in ACTIONS:
        for step in plan.of(action):
            where = ("" if step.new_id is None else f" → new id {step.new_id}"
                     if action == "insert" else f" (today id {step.new_id})")
            fields = f" [{', '.join(step.fields)}]" if step.fields else ""
            label = f" {step.label}" if step.label else ""
            lines.append(f"{HEAD[action]:<9} {step.table} {step.id}{where}{label}{fields}: "
                         f"{REASONS[step.reason]}")
            if step.photo:
                lines.append(f"          photo: {PHOTO_NOTES[step.photo]}")
    counts = plan.counts()
    lines.append("Totals: " + "; ".join(
        f"{action} {c['trip']} trips, {c['registration']} registrations, {c['guest']} guests"
        for action, c in counts.items()))
    mapped = [f"{table} {old} → {new}" for table, ids in plan.mapping().items()
              for old, new in ids.items()]
    if mapped:
        lines.append("New ids: " + ", ".join(mapped))
    return [plain(line) for line in lines]


def _selection(trip: tuple[int, ...], registration: tuple[int, ...], overwrite: tuple[int, ...],
               overwrite_registration: tuple[int, ...]) -> Selection:
    if trip and registration:
        raise click.UsageError("give --trip or --registration, not both")
    try:
        return Selection(trip, registration, overwrite, overwrite_registration)
    except SelectionError as exc:
        raise click.UsageError(f"{exc} (--trip ID or --registration ID)") from None


@click.command("restore-select")
@click.argument("archive")
@click.option("--trip", type=ID, multiple=True, metavar="ID",
              help="Bring back this trip (its id in the archive) with every registration.")
@click.option("--registration", type=ID, multiple=True, metavar="ID",
              help="Bring back this registration with its guests. Repeatable.")
@click.option("--overwrite", type=ID, multiple=True, metavar="GUEST_ID",
              help="Overwrite this existing, changed guest with the archive's values "
                   "(otherwise existing rows are left alone). Repeatable.")
@click.option("--overwrite-registration", type=ID, multiple=True, metavar="ID",
              help="Overwrite this existing, changed registration (e-mail, language, "
                   "status) with the archive's values. Repeatable.")
@IDENTITY
@TRUSTED_KEY
@click.option("--dry-run", is_flag=True, help="Print the preview and change nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print the preview (and the outcome) "
              "as JSON.")
@click.option("--keep-open", is_flag=True, help="Leave the archive's scratch copy open for "
              "browsing (it is dropped after BACKUP_BROWSE_IDLE_MINUTES).")
@with_appcontext
def restore_select_command(archive: str, trip, registration, overwrite, overwrite_registration,
                           identity, trusted_key, dry_run: bool, yes: bool, as_json: bool,
                           keep_open: bool) -> None:
    """Restore chosen registrations (--registration ID ...) or a whole trip (--trip
    ID) of ARCHIVE (a stored archive's name, a file or a storage URL) into the live
    database, in one transaction while the site keeps serving. Missing rows come
    back (with new ids when theirs are taken), existing rows are left alone unless
    --overwrite, erased guests never come back. Shows the preview first."""
    from guest_backup.ops.browse import find_session, open_archive
    from guest_backup.ops.browse_erasures import refresh_erasures
    from guest_backup.ops.selection_apply import restore_selection

    selection = _selection(trip, registration, overwrite, overwrite_registration)
    ctx, actor = backup_context(), cli_actor()
    was_open = find_session(ctx, archive, identity, trusted_key) is not None
    try:
        session = open_archive(ctx, database_engine(), archive, actor=actor, via="cli",
                               identity=identity, trusted_keys=trusted_key)
    except BackupError as exc:
        _fail(str(exc))
    try:
        try:  # the ledger grown since the copy was opened, older lines too (as the page)
            refresh_erasures(session)
        except BackupError as exc:
            _fail(str(exc))
        _run(ctx, session, selection, actor, dry_run=dry_run, yes=yes, as_json=as_json,
             restore=restore_selection)
    finally:
        if not (was_open or keep_open):
            session.close(database_engine(), actor=actor, via="cli")


def _run(ctx, session, selection: Selection, actor: str, *, dry_run: bool, yes: bool,
         as_json: bool, restore) -> None:
    args = dict(archive=session.archive, actor=actor, via="cli")
    try:
        preview = restore(ctx, database_engine(), session.engine, selection, dry_run=True,
                          reapplied_at=session.opened_at, **args)
    except BackupError as exc:
        _fail(str(exc))
    plan = preview.plan
    if as_json and (dry_run or yes):
        if dry_run:
            click.echo(json.dumps(preview.to_dict(), indent=1, default=str))
    else:  # with --json, the preview to confirm goes to stderr: stdout stays one document
        click.echo("\n".join(describe(plan, session.archive)), err=as_json)
    if dry_run:
        click.echo("dry run: nothing was changed", err=True)
        return
    if not any(plan.of(a) for a in ("insert", "overwrite")):
        click.echo("nothing to restore: every selected row exists today or was erased",
                   err=True)
        return
    if not yes:
        click.confirm("Restore these rows into the live database?", abort=True, err=True)
    try:
        result = restore(ctx, database_engine(), session.engine, selection, plan=plan, **args)
    except BackupError as exc:
        _fail(str(exc))
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=1, default=str))
        return
    counts = plan.counts()
    click.echo(f"restored {sum(counts['insert'].values())} rows and overwrote "
               f"{sum(counts['overwrite'].values())} in {result.seconds:.2f} s "
               f"(audited as restore-select)")

COMMANDS = [restore_select_command]
