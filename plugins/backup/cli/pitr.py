"""``pitr setup|check|backup|restore|info|drill``: point-in-time recovery with
pgBackRest, thin over :mod:`guest_backup.ops.pitr`."""

from __future__ import annotations

import json
import shlex
import sys

import click
from flask.cli import with_appcontext

from guest_registration.audit import cli_actor
from guest_registration.extensions import database_engine
from guest_registration.formatting import human_size
from guest_registration.maintenance import safe_url

from guest_backup.cli.backup import _busy, _fail
from guest_backup.errors import BackupBusy, BackupError
from guest_backup.wiring import backup_context

#: exit code of `pitr setup` when the operator's turn has come (a restart, --apply)
EXIT_TODO = 3
_MARKS = {"ok": "OK  ", "todo": "TODO", "failed": "FAIL"}


def _pitr():
    """The PITR operations (and the nine ``physical`` modules under them), imported
    when a command runs, not for ``--help``."""
    from guest_backup.ops import pitr

    return pitr


def _engine():
    """The app's database: the audit log, and the archiver's state when this
    process may not run tools as the cluster's owner."""
    return database_engine()


@click.group("pitr")
def pitr_group() -> None:
    """Point-in-time recovery with pgBackRest: WAL archiving and backups of the
    cluster in PITR_PG_DATA, recovery to any moment into a new cluster."""


@pitr_group.command("setup")
@click.option("--apply", is_flag=True, help="Set archive_mode, archive_command, "
              "archive_timeout and wal_level with ALTER SYSTEM (else they are printed).")
@with_appcontext
def setup_command(apply: bool) -> None:
    """Check the cluster, write the pgBackRest configuration, create the stanza, and
    set (or print) the archiving settings; after the restart it asks for, run it
    again: it runs pgBackRest's check and says what is still missing. Exits 0 when
    everything is in place, 3 when it is the operator's turn, 1 on a failure."""
    try:
        report = _pitr().setup(backup_context(), apply)
    except BackupError as exc:
        _fail(str(exc))
    for state, text in report.steps:
        click.echo(f"{_MARKS[state]} {text}")
    if report.statements:
        click.echo("\n".join(["", *report.statements, ""]))
    if report.complete:
        click.echo("Point-in-time recovery is set up.")
        return
    if any(state == "failed" for state, _ in report.steps):
        sys.exit(1)
    sys.exit(EXIT_TODO)


@pitr_group.command("check")
@with_appcontext
def check_command() -> None:
    """A checkpoint and pgBackRest's check (a WAL segment archived end to end), then
    the state. Run it after PostgreSQL restarts from a crash: until its next
    checkpoint, archive_timeout is not honoured."""
    ctx = backup_context()
    try:
        p = _pitr().check(ctx)
    except BackupError as exc:
        _fail(str(exc))
    click.echo(f"OK pgBackRest check of stanza {p.config.stanza}: WAL archiving into "
               f"{p.config.repository} works")
    _print_status(_pitr().status(ctx, _engine()))


@pitr_group.command("backup")
@click.option("--type", "kind", type=click.Choice(["full", "diff", "incr"]), default="incr",
              show_default=True, help="full: everything; diff: changes since the last full; "
              "incr: changes since the last backup (a full one when there is none).")
@with_appcontext
def backup_command(kind: str) -> None:
    """A pgBackRest backup of the cluster. Exits 75 when another one is running."""
    try:
        made = _pitr().backup(backup_context(), _engine(), kind, actor=cli_actor(), via="cli")
    except BackupBusy as exc:
        _busy(exc)
    except BackupError as exc:
        _fail(str(exc))
    click.echo(f"{made.type} backup {made.label}: cluster {human_size(made.size)}, "
               f"{human_size(made.repo_delta)} into the repository, "
               f"{int(made.duration.total_seconds())} s, WAL {made.wal_start}–{made.wal_stop}")


@pitr_group.command("restore")
@click.option("--to", "to", required=True, metavar="MOMENT|latest",
              help='The moment to recover to, e.g. "2026-12-04 17:39:00+01" (without an '
                   "offset: this machine's time zone), or latest.")
@click.option("--into", required=True, type=click.Path(file_okay=False),
              help="A new, empty folder for the recovered cluster (absolute path).")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="The recovered cluster's port (default: a free one).")
@with_appcontext
def restore_command(to: str, into: str, port: int | None) -> None:
    """Recover the cluster as it was at a moment into a NEW cluster beside the
    running one (which is not touched), start it, check it and re-apply the
    erasure ledger. It keeps running: switch the app to it, or stop it."""
    ctx = backup_context()
    try:
        result = _pitr().restore(ctx, _engine(), to=to, into=into, port=port, actor=cli_actor(),
                              via="cli")
    except BackupError as exc:
        _fail(str(exc))
    _print_recovered(result)
    owner, data = result.cluster.owner.name, result.cluster.data
    click.echo(f"The recovered cluster runs on port {result.cluster.port} ({data}); archiving "
               f"is off in it.")
    click.echo(f"To switch the app to it: DATABASE_URL={shlex.quote(safe_url(result.database_url))}"
               f" (and restart the app), then run `manage.py erasure-ledger apply`: erasures "
               f"recorded in the running cluster from now on are not in it; to make it the "
               f"protected cluster, set PITR_PG_DATA="
               f"{data} and PITR_PG_PORT={result.cluster.port}, then run `pitr setup --apply`.")
    click.echo(f"To stop it: runuser -u {owner} -- {result.cluster.tool('pg_ctl')} -D {data} stop")


@pitr_group.command("drill")
@with_appcontext
def drill_command() -> None:
    """Recover to a random moment of the last day into a scratch cluster, check it,
    stop and remove it (audited; backup-health reports the last drill)."""
    try:
        result = _pitr().drill(backup_context(), _engine(), actor=cli_actor(), via="cli")
    except BackupError as exc:
        _fail(f"PITR drill failed: {exc}")
    if result.scratch_left:
        click.echo(f"OK PITR drill; WARNING {result.scratch_left}:")
    else:
        click.echo("OK PITR drill (the scratch cluster is removed):")
    _print_recovered(result)


@pitr_group.command("info")
@click.option("--json", "as_json", is_flag=True, help="Print the state as JSON.")
@with_appcontext
def info_command(as_json: bool) -> None:
    """The backups (type, sizes, duration, WAL range), the recoverable window and
    WAL archiving, from pgBackRest's info and pg_stat_archiver."""
    state = _pitr().status(backup_context(), _engine())
    if as_json:
        click.echo(json.dumps(state.as_dict(), indent=2))
    else:
        _print_status(state)
    if state.errors and state.repo is None:
        sys.exit(1)


def _print_recovered(result) -> None:
    click.echo(f"{_pitr().target_text(result.target)} from backup {result.backup.label}")
    click.echo("rows: " + _pitr().counts_text(result.counts) + "; schema revision: "
               + (", ".join(result.revisions) or "none"))
    for note in result.notes:
        click.echo(f"note: {note}")
    if result.erasures is not None:
        click.echo(f"{result.erasures} erasures re-applied")


def _print_status(state) -> None:
    for error in state.errors:
        click.echo(f"WARNING {error}", err=True)
    if state.config is None:
        if not state.errors:
            click.echo("point-in-time recovery is off (PITR_PG_DATA is empty)")
        return
    if state.repo is not None:
        repo = state.repo
        when = "" if state.live else f" (as read at {state.read_at:%Y-%m-%d %H:%M} UTC)"
        click.echo(f"stanza {repo.stanza} in {state.config.repository}: {repo.status}, "
                   f"cipher {repo.cipher}{when}")
        for b in repo.backups:
            click.echo(f"{b.label}  {b.type:<4}  {b.stop:%Y-%m-%d %H:%M:%S} UTC  "
                       f"{int(b.duration.total_seconds()):>5} s  {human_size(b.size):>10}  "
                       f"repo {human_size(b.repo_delta):>10}  WAL {b.wal_start}–{b.wal_stop}")
    window = state.window
    click.echo(f"You can recover to any moment from {window[0]:%Y-%m-%d %H:%M:%S} to "
               f"{window[1]:%Y-%m-%d %H:%M:%S} UTC." if window else "No backup yet: nothing "
               "to recover from.")
    a = state.archiver
    if a is not None:
        click.echo(f"WAL archiving: {a.archived_count} archived, the last "
                   f"{a.last_archived_wal or '-'} at {_at(a.last_archived_time)}; "
                   f"{a.failed_count} failed" + (f", the last at {_at(a.last_failed_time)}"
                                                 f" (FAILING)" if a.failing else "")
                   + (f"; {a.ready} waiting" if a.ready else ""))


def _at(when) -> str:
    return f"{when:%Y-%m-%d %H:%M:%S} UTC" if when else "never"


COMMANDS = [pitr_group]
