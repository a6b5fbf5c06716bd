"""The backup lines of ``manage.py status``."""

from __future__ import annotations

from datetime import datetime, timezone

from flask import Flask


from guest_registration.extensions import db
from guest_registration.formatting import human_size
from guest_registration.maintenance import StatusCheck, folder_check

from guest_backup.archive.format import list_archives
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
    checks = [folder_check("backup folder", settings.backup_folder)]
    try:
        engine = ctx.engine_for(db.engine.dialect.name)
        try:
            with db.engine.connect() as conn:
                tool = engine.tool(settings.engine_settings, conn)
        except BackupError:
            raise
        except Exception:  # the database line of the host says why it is unreachable
            tool = engine.tool(settings.engine_settings, None)
        checks.append(StatusCheck("backup dump tool", tool.ok, tool.detail))
    except BackupError as exc:
        checks.append(StatusCheck("backup dump tool", False, str(exc)))
    try:
        checks.append(StatusCheck("backup signing key", True,
                                  f"{settings.signer().public_key} (keep it with your "
                                  f"recovery notes)"))
    except BackupError as exc:
        checks.append(StatusCheck("backup signing key", False, str(exc)))
    try:
        recipients = parse_recipients(settings.age_recipients)
        checks.append(StatusCheck("backup encryption", True,
                                  f"to {len(recipients)} age recipient(s)" if recipients else
                                  "off (set BACKUP_AGE_RECIPIENTS to encrypt archives)"))
    except BackupError as exc:
        checks.append(StatusCheck("backup encryption", False, str(exc)))
    archives = list_archives(settings.backup_folder)
    if archives:
        newest = archives[0]
        checks.append(StatusCheck("newest backup", True,
                                  f"{newest.name}, {human_size(newest.size)}, {_age(newest.created)}"
                                  f" ({len(archives)} archive{'s' if len(archives) != 1 else ''})"))
    else:
        checks.append(StatusCheck("newest backup", True,
                                  "no archive yet (run: python manage.py backup)"))
    return checks
