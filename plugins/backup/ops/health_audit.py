"""What ``backup-health`` reads from the audit log: the last backup, upload and
drill (as the metrics read them: an --output run is not the storages' backup),
their problems, and the storages' newest archives whose last check failed.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy.engine import Engine

from guest_backup.archive.manifest import format_time
from guest_backup.ops.context import BackupContext
from guest_backup.ops.health_problems import Problem, human_age
from guest_backup.ops.metrics import newest_entry
from guest_backup.ops.retention import failed_checks

#: the report's audit entries, in its order
ENTRIES = ("last_backup", "last_upload", "last_failure", "last_drill")


def latest(ctx: BackupContext, engine: Engine, action: str,
           outcomes=("ok", "failed", "aborted")) -> dict | None:
    """The newest finished audit entry of ``action`` with one of ``outcomes``; of a
    backup, not an --output run's, as in the metrics (a good copy elsewhere cleared a
    failed backup of the storages, a mistyped --output path failed a good one)."""
    row = newest_entry(ctx, engine, action, outcomes)
    if row is None:
        return None
    when = row["finished_at"] or row["created_at"]
    return {"outcome": row["outcome"], "at": format_time(when), "target": row["target"],
            "message": row["message"], "_when": when.replace(tzinfo=timezone.utc),
            "_id": row["id"]}


def activity_problems(last: dict, now: datetime, max_drill_age: timedelta,
                       remote: bool) -> list[Problem]:
    """The last backup, upload and drill. With no remote configured (any more), an
    upload that failed before the last backup succeeded is over (as in the metrics)."""
    last_backup, last_upload, last_drill = last["last_backup"], last["last_upload"], \
        last["last_drill"]
    if last_upload and not remote and last_backup and last_backup["outcome"] == "ok" \
            and last_backup["_id"] > last_upload["_id"]:
        last_upload = None
    problems = []
    for failed, kind in ((last_backup, "backup_failed"), (last_upload, "upload_failed")):
        if failed and failed["outcome"] != "ok":
            problems.append(Problem(kind, {"at": failed["at"], "message": failed["message"]}))
    if last_drill is None:
        problems.append(Problem("no_drill"))
    elif last_drill["outcome"] != "ok":
        problems.append(Problem("drill_failed", {"at": last_drill["at"],
                                                 "message": last_drill["message"]}))
    elif now - last_drill["_when"] > max_drill_age:
        problems.append(Problem("old_drill", {"age": human_age(now - last_drill["_when"]),
                                              "limit": human_age(max_drill_age)}))
    return problems


def check_problems(ctx: BackupContext, engine: Engine, results, last_drill) -> list[Problem]:
    """A storage whose newest archive, the one to restore from, failed its last check
    (verify or restore-test; a failed drill of it is ``drill_failed`` already)."""
    failed, problems = failed_checks(ctx.audit, engine), []
    for storage, archives in results:
        check = failed.get(archives[0].name) if isinstance(archives, list) and archives \
            else None
        if check and not (last_drill and last_drill["_id"] == check["id"]):
            problems.append(Problem("newest_failed_check", {
                "storage": storage.name, "name": archives[0].name, "at": check["at"],
                "message": f"{check['action']}: {check['message'] or '?'}"}))
    return problems

