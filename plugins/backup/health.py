"""``backup-health``: is there a recent archive in every storage, did the last
backup (and its upload) succeed, and was a restore drill passed recently?

Exit codes, for monitoring: 0 healthy, 1 unhealthy, 2 a storage can't be reached.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from sqlalchemy import select
from sqlalchemy.engine import Engine

from guest_registration.i18n import N_
from guest_registration.models import AuditEntry

from .context import BackupContext
from .storages import StorageError

HEALTHY, UNHEALTHY, UNREACHABLE = 0, 1, 2
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> timedelta:
    """``26h``, ``35d``, ``90m``, ``2w`` or plain seconds."""
    m = _DURATION.match(text or "")
    if not m:
        raise ValueError(f"{text!r} is not a duration (e.g. 26h, 35d, 90m)")
    return timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])


def _iso(when: datetime | None) -> str | None:
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _latest(engine: Engine, action: str, outcomes=("ok", "failed", "aborted")) -> dict | None:
    table = AuditEntry.__table__
    with engine.connect() as conn:
        row = conn.execute(select(table).where(table.c.action == action,
                                               table.c.outcome.in_(outcomes))
                           .order_by(table.c.id.desc()).limit(1)).mappings().first()
    if row is None:
        return None
    return {"outcome": row["outcome"], "at": _iso(row["finished_at"] or row["created_at"]),
            "target": row["target"], "message": row["message"],
            "_when": (row["finished_at"] or row["created_at"]).replace(tzinfo=timezone.utc)}


#: the problems ``health`` reports, worded once: the report (and ``backup-health``)
#: gives them in English, the Backup page in its language (:func:`problem_text`)
OLD_ARCHIVE = N_("%(storage)s: the newest archive is %(age)s old (more than %(limit)s)")
NO_ARCHIVE = N_("%(storage)s: no archive yet")
BACKUP_FAILED = N_("the last backup failed at %(at)s: %(message)s")
UPLOAD_FAILED = N_("the last upload failed at %(at)s: %(message)s")
NO_DRILL = N_("no restore drill yet (run: manage.py restore-test)")
DRILL_FAILED = N_("the last restore drill failed at %(at)s: %(message)s")
OLD_DRILL = N_("the last restore drill is %(age)s old (more than %(limit)s)")
PROBLEMS = (OLD_ARCHIVE, NO_ARCHIVE, BACKUP_FAILED, UPLOAD_FAILED, NO_DRILL, DRILL_FAILED,
            OLD_DRILL)


def health(ctx: BackupContext, engine: Engine, *, max_age: timedelta,
           max_drill_age: timedelta, listing=None) -> tuple[dict, int]:
    """The report and its exit code; ``listing`` (from ``list_everywhere``) saves
    listing the storages a second time."""
    now = datetime.now(timezone.utc)
    problems: list[str] = []
    code = HEALTHY
    storages = []
    if listing is not None:
        results = listing.by_storage
    else:
        try:
            targets = ctx.storages()
        except StorageError as exc:
            targets, code = [ctx.local()], UNREACHABLE
            problems.append(str(exc))
        results = []
        for storage in targets:
            try:
                results.append((storage, storage.list()))
            except StorageError as exc:
                results.append((storage, exc))
    for storage, archives in results:
        entry: dict = {"name": storage.name, "url": storage.url}
        if isinstance(archives, StorageError):
            exc = archives
            entry.update(reachable=False, problem=str(exc))
            problems.append(str(exc))
            code = UNREACHABLE
            storages.append(entry)
            continue
        entry.update(reachable=True, archives=len(archives), newest=None)
        if archives:
            newest = archives[0]
            age = now - newest.created
            entry["newest"] = {"name": newest.name, "created": _iso(newest.created),
                               "age_seconds": int(age.total_seconds())}
            if age > max_age:
                problems.append(OLD_ARCHIVE % {"storage": storage.name, "age": _human(age),
                                               "limit": _human(max_age)})
        else:
            problems.append(NO_ARCHIVE % {"storage": storage.name})
        storages.append(entry)
    last_backup = _latest(engine, "backup")
    last_upload = _latest(engine, "upload")
    last_drill = _latest(engine, "restore-test")
    failures = [e for e in (last_backup, last_upload) if e and e["outcome"] != "ok"]
    for failed in failures:
        problem = BACKUP_FAILED if failed is last_backup else UPLOAD_FAILED
        problems.append(problem % {"at": failed["at"], "message": failed["message"]})
    if last_drill is None:
        problems.append(NO_DRILL)
    elif last_drill["outcome"] != "ok":
        problems.append(DRILL_FAILED % {"at": last_drill["at"], "message": last_drill["message"]})
    elif now - last_drill["_when"] > max_drill_age:
        problems.append(OLD_DRILL % {"age": _human(now - last_drill["_when"]),
                                     "limit": _human(max_drill_age)})
    if problems and code == HEALTHY:
        code = UNHEALTHY
    past = [e for e in (_latest(engine, "backup", ("failed", "aborted")),
                        _latest(engine, "upload", ("failed", "aborted"))) if e]
    last_failure = max(past, key=lambda e: e["_when"]) if past else None
    for entry in (last_backup, last_upload, last_drill, *past):
        if entry:
            entry.pop("_when", None)
    report = {
        "status": {HEALTHY: "healthy", UNHEALTHY: "unhealthy", UNREACHABLE: "unreachable"}[code],
        "checked_at": _iso(now),
        "storages": storages,
        "last_backup": last_backup,
        "last_upload": last_upload,
        "last_failure": last_failure,
        "last_drill": last_drill,
        "problems": problems,
    }
    return report, code


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# --- the problems above, in the page's language (the report itself stays English) -------

def _pattern(message: str) -> re.Pattern:
    parts = re.split(r"%\((\w+)\)s", message)  # literal, name, literal, ...
    return re.compile("^" + "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>.*?)"
                                    for i, p in enumerate(parts)) + "$", re.S)


_PATTERNS = [(message, _pattern(message)) for message in PROBLEMS]


def problem_text(problem: str) -> str:
    """One of the report's problems in the page's language (a storage's own error,
    which no pattern matches, as it is)."""
    from flask_babel import gettext

    for message, pattern in _PATTERNS:
        match = pattern.match(problem)
        if match:
            return gettext(message, **match.groupdict())
    return problem
