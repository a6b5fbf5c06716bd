"""The backup lines of ``manage.py status``."""

from __future__ import annotations

from datetime import datetime, timezone

from flask import Flask


from guest_registration.extensions import database_engine
from guest_registration.formatting import human_size
from guest_registration.maintenance import StatusCheck, folder_check

from guest_backup.ops.listing import recognised
from guest_backup.wiring import backup_context
from guest_backup.archive.encryption import parse_recipients
from guest_backup.errors import BackupError


def _age(when: datetime) -> str:
    seconds = int((datetime.now(timezone.utc) - when).total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "just now"


def backup_status(app: Flask) -> list[StatusCheck]:
    ctx = backup_context(app)
    settings = ctx.settings
    return [_folder_check(settings.backup_folder), _uploads_check(ctx),
            _tool_check(ctx),
            _check("backup signing key", lambda: f"{settings.signer().public_key} (keep it "
                                                 f"with your recovery notes)"),
            _check("backup encryption", lambda: _encryption(settings.age_recipients)),
            _check("newest backup", lambda: _newest(ctx)), *_may_create_databases()]


def _folder_check(folder: str) -> StatusCheck:
    """FAIL for a shared folder (sticky, as /tmp), which every backup refuses with
    the same message: it was "present and writable" while no backup could run."""
    from pathlib import Path

    from guest_registration.config_errors import SharedFolderError
    from guest_registration.instance_folder import refuse_shared_folder

    try:
        refuse_shared_folder(Path(folder), "BACKUP_FOLDER")
    except SharedFolderError as exc:
        return StatusCheck("backup folder", False, str(exc))
    return folder_check("backup folder", folder)


def _uploads_check(ctx) -> StatusCheck:
    """FAIL when the upload folder holds the backup or instance folder (or the
    reverse); a warning once the uploads near what one archive holds."""
    from guest_backup.archive import format as archive_format
    from guest_backup.ops.uploads import count_uploads, overlap_problem

    settings = ctx.settings
    if problem := overlap_problem(settings, ctx.instance_path):
        return StatusCheck("backup upload folder", False, f"{problem}; backups are refused")
    limit = archive_format.MAX_MEMBERS - 3  # the dump, the manifest and its signature
    count = count_uploads(settings.upload_folder, limit + 1)
    text = f"{count:,}{'+' if count > limit else ''} files"
    if count >= archive_format.MEMBERS_WARN_SHARE * archive_format.MAX_MEMBERS:
        return StatusCheck("backup upload folder", True,
                           f"{text}: WARNING an archive holds at most {limit:,} uploads; past "
                           f"that every backup fails (move old uploads elsewhere)")
    return StatusCheck("backup upload folder", True,
                       f"{text} go into each backup (an archive holds at most {limit:,})")


def _may_create_databases() -> list[StatusCheck]:
    """On PostgreSQL, whether DATABASE_URL's role may create databases: the restore
    drill (``restore-test``, nightly) and browsing an archive load it into a new
    scratch database, and without CREATEDB every drill failed while ``status`` was
    all ok. Nothing when the database cannot be reached (its own line says why)."""
    from sqlalchemy import text

    engine = database_engine()
    if engine.dialect.name != "postgresql":
        return []
    try:
        with engine.connect() as conn:
            role, may = conn.execute(text(
                "SELECT current_user, rolcreatedb OR rolsuper FROM pg_roles "
                "WHERE rolname = current_user")).one()
    except Exception:
        return []
    if may:
        return [StatusCheck("database role", True, f"{role} may create databases (restore "
                                                   f"drills and browsing need it)")]
    return [StatusCheck("database role", False,
                        f"{role} may not create databases: restore-test and browsing an "
                        f"archive load it into a new scratch database and fail (as a "
                        f"superuser: ALTER ROLE \"{role}\" CREATEDB)")]


def _check(name: str, detail) -> StatusCheck:
    """A line whose ``detail()`` raising BackupError makes it FAIL with the reason."""
    try:
        return StatusCheck(name, True, detail())
    except BackupError as exc:
        return StatusCheck(name, False, str(exc))


def _tool_check(ctx) -> StatusCheck:
    settings = ctx.settings
    try:
        engine = ctx.engine_for(database_engine().dialect.name)
        try:
            with database_engine().connect() as conn:
                tool = engine.tool(settings.engine_settings, conn)
        except BackupError:
            raise
        except Exception:  # the database line of the host says why it is unreachable
            tool = engine.tool(settings.engine_settings, None)
        return StatusCheck("backup dump tool", tool.ok, tool.detail)
    except BackupError as exc:
        return StatusCheck("backup dump tool", False, str(exc))


def _encryption(recipients_setting) -> str:
    try:
        recipients = parse_recipients(recipients_setting)
    except BackupError as exc:
        raise BackupError(str(exc)) from None
    return (f"to {len(recipients)} age recipient(s)" if recipients else
            "off (set BACKUP_AGE_RECIPIENTS to encrypt archives)")


def _newest(ctx) -> str:
    """The newest archive; FAIL when some file there cannot be read by this user
    (a root-run command's): they are not backups this user can list or restore."""
    unreadable: list[str] = []
    archives, unknown = recognised(ctx, ctx.local(), unreadable=unreadable)
    extra = (f"; {len(unknown) - len(unreadable)} unrecognised file(s) in the folder"
             if len(unknown) > len(unreadable) else "")
    if not archives:
        text = f"no archive yet (run: python manage.py backup){extra}"
    else:
        newest = archives[0]
        text = (f"{newest.name}, {human_size(newest.size)}, {_age(newest.created)} "
                f"({len(archives)} archive{'s' if len(archives) != 1 else ''}){extra}")
    if unreadable:
        raise BackupError(f"{text}; {len(unreadable)} file(s) this user cannot read "
                          f"({unreadable[0]}): run commands as the folder's owner, or chown "
                          f"them")
    return text
