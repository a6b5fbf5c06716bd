"""The backup lines of ``manage.py status``."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from flask import Flask

from guest_registration.extensions import db
from guest_registration.maintenance import StatusCheck

from .context import backup_settings, dumper_for
from .service import BackupError, list_archives


def _age(when: datetime) -> str:
    seconds = int((datetime.now(timezone.utc) - when).total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "just now"


def backup_status(app: Flask) -> list[StatusCheck]:
    settings = backup_settings(app)
    checks = []
    try:
        dumper = dumper_for(app, db.engine.dialect.name)
        try:
            with db.engine.connect() as conn:
                tool = dumper.tool(settings.dumper_settings, conn)
        except BackupError:
            raise
        except Exception:
            tool = dumper.tool(settings.dumper_settings, None)
        checks.append(StatusCheck("backup dump tool", tool.ok, tool.detail))
    except BackupError as exc:
        checks.append(StatusCheck("backup dump tool", False, str(exc)))
    # (the folder itself is checked by the host's "backup folder" line)
    archives = list_archives(Path(settings.backup_folder))
    if archives:
        newest = archives[0]
        checks.append(StatusCheck("newest backup", True,
                                  f"{newest.name}, {newest.size / 1e6:.1f} MB, {_age(newest.created)}"
                                  f" ({len(archives)} archive{'s' if len(archives) != 1 else ''})"))
    else:
        checks.append(StatusCheck("newest backup", True,
                                  "no archive yet (run `python manage.py backup`)"))
    return checks
