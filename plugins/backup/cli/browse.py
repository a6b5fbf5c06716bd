"""``browse ARCHIVE``: open an archive in a scratch database (or reuse the one
open already) and show its trips, a search, or a trip compared with today.
Thin over :mod:`guest_backup.ops.browse`, ``browse_search`` and ``compare``."""

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
from guest_backup.wiring import backup_context

KIND_TEXT = {"archive_only": "deleted since", "live_only": "added since", "changed": "changed",
             "same": "same today"}


def _when(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if hasattr(value, "strftime") else str(value or "")


def _guest_line(row: dict, status: str) -> str:
    return plain(f"guest {row['guest_id']}  {row['first_name']} {row['last_name']}  "
            f"{row['document_type']} {row['document_number']}  registration "
            f"{row['registration_id']} <{row['email']}>  trip {row['trip_id']} "
            f"({row['trip_title'] or '?'})  registered {_when(row['registered_at'])}  "
            f"[{status}]")


def _statuses(comparison) -> dict[int, str]:
    out = {}
    for diff in comparison.of("guest"):
        out[diff.id] = KIND_TEXT[diff.kind] + (": " + ", ".join(diff.fields) if diff.fields
                                               else "")
    return out


def _show_search(session, search, as_json: bool) -> None:
    from guest_backup.ops.browse_search import search_guests
    from guest_backup.ops.compare import compare_search

    page = search_guests(session.engine, search)
    comparison = compare_search(session.engine, database_engine(), search)
    if as_json:
        click.echo(json.dumps({"session": session.to_dict(), "search": search.to_dict(),
                               "page": page.to_dict(), "compare": comparison.to_dict()},
                              indent=1, default=str))
        return
    statuses = _statuses(comparison)
    for row in page.rows:
        click.echo(_guest_line(row, statuses.get(row["guest_id"], KIND_TEXT["same"])))
    added = [d for d in comparison.of("guest", "live_only")]
    for diff in added:
        live = diff.live
        click.echo(plain(f"guest {diff.id}  {live['first_name']} {live['last_name']}  "
                         f"registration {live['registration_id']}  [{KIND_TEXT['live_only']}]"))
    if not page.rows and not added:
        click.echo("nothing found")
    if page.next_after:
        click.echo(f"more: --after {page.next_after}")


def _show_trip(session, trip_id: int, as_json: bool) -> None:
    from guest_backup.ops.compare import compare_trip

    comparison = compare_trip(session.engine, database_engine(), trip_id)
    if as_json:
        click.echo(json.dumps({"session": session.to_dict(), "compare": comparison.to_dict()},
                              indent=1, default=str))
        return
    for table in ("trip", "registration", "guest"):
        counts = comparison.counts[table]
        click.echo(f"{table}s: " + ", ".join(f"{counts[k]} {KIND_TEXT[k]}" for k in KIND_TEXT))
    for diff in comparison.differences:
        row = diff.archive or diff.live
        label = (f"{row.get('first_name')} {row.get('last_name')}" if diff.table == "guest"
                 else row.get("email") or row.get("title"))
        extra = (": " + ", ".join(diff.fields)) if diff.fields else ""
        taken = " (id holds another record on the other side)" if diff.id_taken else ""
        click.echo(plain(f"{diff.table} {diff.id}  {label}  [{KIND_TEXT[diff.kind]}{extra}]"
                         f"{taken}"))
    if comparison.truncated:
        click.echo(f"(only the first {comparison.limit} differences are listed)")


def _show_trips(session, as_json: bool) -> None:
    from guest_backup.ops.browse_search import jsonable, trips

    page = trips(session.engine, limit=200)
    if as_json:
        click.echo(json.dumps({"session": session.to_dict(),
                               "trips": [jsonable(r) for r in page.rows]}, indent=1,
                              default=str))
        return
    for row in page.rows:
        click.echo(plain(f"trip {row['id']}  {row['title']}  {row['start_date'] or ''}  "
                         f"{row['registrations']} registrations"))


@click.command("browse")
@click.argument("archive")
@click.option("--search", "text", help="Guests whose name, e-mail or document number "
              "starts with this (several words: all must match a name or document).")
@click.option("--trip", "trip_id", type=int, help="Compare this trip with today (with "
              "--search: search within it).")
@click.option("--from", "date_from", type=click.DateTime(["%Y-%m-%d"]),
              help="Registrations made on or after this day (YYYY-MM-DD).")
@click.option("--to", "date_to", type=click.DateTime(["%Y-%m-%d"]),
              help="Registrations made on or before this day.")
@click.option("--after", type=int, default=0, help="The next page: the number 'more:' printed.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--close", is_flag=True, help="Drop the scratch copy at the end (else it stays "
              "open until BACKUP_BROWSE_IDLE_MINUTES pass unused).")
@IDENTITY
@TRUSTED_KEY
@with_appcontext
def browse_command(archive: str, text: str | None, trip_id: int | None, date_from, date_to,
                   after: int, as_json: bool, close: bool, identity: str | None,
                   trusted_key: tuple[str, ...]) -> None:
    """Open ARCHIVE (a name in the backup folder, a path or a storage URL) in a
    scratch database, verified like a restore, and show its trips, a search
    (with each guest's state today) or a trip compared with today."""
    from guest_backup.ops.browse import open_archive
    from guest_backup.ops.browse_erasures import refresh_erasures
    from guest_backup.ops.browse_search import Search

    ctx = backup_context()
    try:
        session = open_archive(ctx, database_engine(), archive, actor=cli_actor(), via="cli",
                               identity=identity, trusted_keys=trusted_key)
        refresh_erasures(session)  # a guest erased since the archive was opened
    except BackupError as exc:
        _fail(str(exc))
    if not as_json:
        click.echo(f"{session.archive} open in scratch copy {session.id} (load "
                   f"{session.open_seconds or 0:.1f} s, indexes "
                   f"{session.index_seconds or 0:.1f} s, {session.erasures} erasures "
                   f"re-applied)", err=True)
    try:
        if text is not None or date_from or date_to:
            day = (lambda d: d.date() if d else None)  # noqa: E731
            _show_search(session, Search(text or "", trip_id, day(date_from), day(date_to),
                                         after), as_json)
        elif trip_id is not None:
            _show_trip(session, trip_id, as_json)
        else:
            _show_trips(session, as_json)
    finally:
        if close:
            session.close(database_engine(), actor=cli_actor(), via="cli")


COMMANDS = [browse_command]
