"""``notify-test`` (send a test message to every BACKUP_NOTIFY_URLS address, saying
which accepted it) and ``notify-check`` (health and storages now, a message on a
change of state: run it from a timer). URLs are shown masked."""

from __future__ import annotations

import sys

import click
from flask.cli import with_appcontext

from guest_registration.extensions import database_engine

from guest_backup.ops import notify
from guest_backup.wiring import backup_context


@click.command("notify-test")
@with_appcontext
def notify_test_command() -> None:
    """Send a test notification to each BACKUP_NOTIFY_URLS address; exit 1 unless
    every one accepted it."""
    urls = notify.notify_urls(backup_context())
    if not urls:
        raise click.ClickException("BACKUP_NOTIFY_URLS is not set: nothing to test")
    title = "Test notification"
    results = notify.send(urls, title, notify.message(
        title, "Backup notifications reach this address."))
    for shown, accepted in results:
        click.echo(f"{'OK    ' if accepted else 'FAILED'} {shown}")
    if not all(accepted for _, accepted in results):
        sys.exit(1)


@click.command("notify-check")
@click.option("--max-age", default="26h", show_default=True,
              help="Degraded when a storage's newest archive is older (e.g. 26h, 2d).")
@click.option("--max-drill-age", default="35d", show_default=True,
              help="Degraded when the last passed restore drill is older.")
@with_appcontext
def notify_check_command(max_age: str, max_drill_age: str) -> None:
    """Check the backups' health and each storage now; notify BACKUP_NOTIFY_URLS
    once when either changes (degraded, unreachable, recovered). Prints the status."""
    from guest_backup.ops.health import health
    from guest_backup.ops.health_problems import parse_duration

    try:
        limits = parse_duration(max_age), parse_duration(max_drill_age)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    ctx = backup_context()
    report, _code = health(ctx, database_engine(), max_age=limits[0], max_drill_age=limits[1])
    notify.after_health(ctx, report)
    click.echo(report["status"])


COMMANDS = [notify_test_command, notify_check_command]
