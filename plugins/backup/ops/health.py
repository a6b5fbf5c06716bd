"""``backup-health``: is there a recent archive in every storage, did the last
backup (and its upload) succeed, and was a restore drill passed recently?

Exit codes, for monitoring: 0 healthy, 1 unhealthy, 2 a storage can't be reached.
The problems and their wording: :mod:`guest_backup.ops.health_problems`.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

from sqlalchemy.engine import Engine

from guest_backup.archive.manifest import format_time
from guest_backup.errors import BackupError
from guest_backup.files import user_name
from guest_backup.ops.context import BackupContext
from guest_backup.ops.health_problems import Problem, human_age, parse_duration, some_names
from guest_backup.ops.listing import list_everywhere, recognised
from guest_backup.ops.pitr import status as pitr_status
from guest_backup.ops.retention import failed_checks, legal_horizon
from guest_backup.ops.rights import overdue_registrations
from guest_backup.storages import StorageError

HEALTHY, UNHEALTHY, UNREACHABLE = 0, 1, 2


def _latest(ctx: BackupContext, engine: Engine, action: str,
            outcomes=("ok", "failed", "aborted")) -> dict | None:
    """The newest finished audit entry of ``action`` with one of ``outcomes``."""
    rows = [row for outcome in outcomes
            for row in ctx.audit.recent(engine, 1, action=action, outcome=outcome)]
    if not rows:
        return None
    row = max(rows, key=lambda r: r["id"])
    when = row["finished_at"] or row["created_at"]
    return {"outcome": row["outcome"], "at": format_time(when), "target": row["target"],
            "message": row["message"], "_when": when.replace(tzinfo=timezone.utc),
            "_id": row["id"]}


def _listed(ctx: BackupContext, listing, problems: list[Problem]) -> tuple[list, int]:
    """Each storage with its recognised archives, or the StorageError that listing
    it raised; a problem for each storage holding unrecognised files, and one for
    files this user cannot read (a root worker's: whose, and to chown). A setting no
    archive can be recognised with (a BACKUP_TRUSTED_KEYS that is not a key) is a
    problem, unhealthy, with no storage listed: it printed a traceback, no JSON."""
    if listing is None:
        try:
            listing = list_everywhere(ctx)
        except StorageError as exc:  # BACKUP_REMOTE_URL cannot work at all
            problems.append(Problem("storage", {"message": str(exc)}))
            try:
                return [(ctx.local(), recognised(ctx, ctx.local())[0])], UNREACHABLE
            except BackupError as bad:
                problems.append(Problem("storage", {"message": str(bad)}))
                return [], UNREACHABLE
        except BackupError as exc:
            problems.append(Problem("storage", {"message": str(exc)}))
            return [], UNHEALTHY
    for storage, names in listing.unrecognised.items():
        unreadable = set(listing.unreadable.get(storage, ()))  # their own problem, below
        if names := [n for n in names if n not in unreadable]:
            problems.append(Problem("unrecognised", {"storage": storage, "count": len(names),
                                                     "names": some_names(names)}))
    for storage, files in listing.unreadable_owners.items():
        problems.append(Problem("unreadable", {
            "storage": storage, "count": len(files), "names": some_names([n for n, _ in files]),
            "owners": ", ".join(sorted({o or "?" for _, o in files})),
            "user": user_name(os.geteuid())}))
    for storage, ahead in listing.future.items():
        problems.append(Problem("future_archive", {
            "storage": storage, "count": len(ahead), "name": ahead[0].name,
            "created": format_time(ahead[0].created)}))
    return listing.by_storage, HEALTHY


def _storage_entries(results, now: datetime, max_age: timedelta, problems: list[Problem],
                     remote_only: bool = False) -> tuple[list[dict], bool]:
    storages, unreachable = [], False
    for storage, archives in results:
        entry: dict = {"name": storage.name, "url": storage.url}
        storages.append(entry)
        if isinstance(archives, StorageError):
            entry.update(reachable=False, problem=str(archives))
            problems.append(Problem("storage", {"message": str(archives)}))
            unreachable = True
            continue
        entry.update(reachable=True, archives=len(archives), newest=None)
        if storage.name == "local" and remote_only:  # BACKUP_KEEP_LOCAL off: none expected
            continue
        if not archives:
            problems.append(Problem("no_archive", {"storage": storage.name}))
            continue
        newest = archives[0]
        age = now - newest.created
        entry["newest"] = {"name": newest.name, "created": format_time(newest.created),
                           "age_seconds": int(age.total_seconds())}
        if age > max_age:
            problems.append(Problem("old_archive", {"storage": storage.name, "age": human_age(age),
                                                    "limit": human_age(max_age)}))
    return storages, unreachable


def _activity_problems(last_backup, last_upload, last_drill, now: datetime,
                       max_drill_age: timedelta, remote: bool) -> list[Problem]:
    """The last backup, upload and drill. With no remote configured (any more), an
    upload that failed before the last backup succeeded is over (as in the metrics)."""
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


def _check_problems(ctx: BackupContext, engine: Engine, results, last_drill) -> list[Problem]:
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


def _lock_problems(results) -> list[Problem]:
    """A storage asked for Object Lock that does not have it (S3: the bucket)."""
    problems = []
    for storage, archives in results:
        check = getattr(storage, "lock_problem", None)
        reason = check() if check is not None and not isinstance(archives, StorageError) else None
        if reason:
            problems.append(Problem("object_lock_missing", {
                "storage": storage.url, "days": storage.lock_days, "reason": reason}))
    return problems


def _retention_problems(ctx: BackupContext, engine: Engine, results,
                        now: datetime) -> list[Problem]:
    """Registrations and archives past GUEST_RETENTION_YEARS (none when it is 0)."""
    years = ctx.settings.guest_retention_years
    horizon = legal_horizon(years, now)
    if horizon is None:
        return []
    problems = []
    count = overdue_registrations(engine, years)
    if count:
        problems.append(Problem("overdue_records", {"count": count, "limit": years}))
    for storage, archives in results:
        old = [] if isinstance(archives, StorageError) else [
            a.name for a in archives if a.created < horizon]
        held = [(name, why) for name in old if (why := _held(storage, name))]
        if len(held) < len(old):
            problems.append(Problem("overdue_archives", {"storage": storage.name, "limit": years,
                                                         "count": len(old) - len(held)}))
        if held:
            problems.append(Problem("overdue_archives_held", {
                "storage": storage.name, "count": len(held), "limit": years,
                "name": held[0][0], "reason": held[0][1]}))
    return problems


def _held(storage, name: str) -> str | None:
    """Until when the storage holds ``name`` (Object Lock); None when not, or not known."""
    try:
        return storage.held(name) if hasattr(storage, "held") else None
    except StorageError:
        return None


def _erasure_problems(ctx: BackupContext, engine: Engine) -> list[Problem]:
    """A database switched in (a recovered cluster) or restored that misses erasures
    recorded meanwhile, against every copy of the ledger merged; a ledger that
    cannot be read or checked is a problem too (its copies: ``erasure-ledger
    check``)."""
    from guest_backup.ops.erasure_mark import behind
    from guest_backup.ops.ledger import ErasureLedger
    from guest_backup.ops.ledger_copies import collect

    try:
        entries = collect(ErasureLedger.in_folder(ctx.instance_path), ctx.storages(),
                          warn=lambda message: None)
        gap = behind(engine, entries)
    except BackupError as exc:
        return [Problem("erasures_unchecked", {"message": str(exc)})]
    if gap is None:
        return []
    mark, last = gap
    if mark is None:
        return [Problem("erasures_unknown", {"last": last})]
    return [Problem("erasures_missing", {"count": last - mark, "mark": mark, "last": last})]


def pitr_section(ctx: BackupContext, engine: Engine | None, now: datetime,
                max_drill_age: timedelta) -> tuple[dict | None, list]:
    """The PITR part of ``health``: its section and its problems (none while PITR is
    off). Archiving is stalled when a segment has waited longer than
    PITR_MAX_WAL_DELAY (an idle cluster whose last segment is old is not)."""
    if not ctx.settings.pitr_enabled:
        return None, []
    st = pitr_status(ctx, engine)
    problems = [Problem("pitr_unavailable", {"message": e}) for e in st.errors]
    limits = ctx.settings.pitr
    delay = parse_duration(str(limits.get("PITR_MAX_WAL_DELAY") or 300))
    max_full = parse_duration(str(limits.get("PITR_MAX_FULL_AGE") or "8d"))
    a = st.archiver
    if a is not None:
        waited = (now - a.oldest_ready if a.oldest_ready else
                  now - (a.last_archived_time or now) if a.failing and a.ready is None else None)
        if waited is not None and waited > delay:
            problems.append(Problem("pitr_wal_failing" if a.failing else "pitr_wal_stalled", {
                "count": a.ready if a.ready is not None else "?", "age": human_age(waited),
                "limit": human_age(delay), "at": format_time(a.last_failed_time)}))
    full = st.repo.newest_full if st.repo else None
    if st.repo is not None and full is None:
        problems.append(Problem("pitr_no_full"))
    elif full is not None and now - full.stop > max_full:
        problems.append(Problem("pitr_old_full", {"age": human_age(now - full.stop),
                                                  "limit": human_age(max_full)}))
    drill = _latest(ctx, engine, "pitr-drill") if engine is not None else None
    drill_age = now - drill.pop("_when") if drill else None
    if drill is None:
        problems.append(Problem("pitr_no_drill"))
    elif drill["outcome"] != "ok":
        problems.append(Problem("pitr_drill_failed", {"at": drill["at"],
                                                      "message": drill["message"]}))
    elif drill_age > max_drill_age:
        problems.append(Problem("pitr_old_drill", {"age": human_age(drill_age),
                                                   "limit": human_age(max_drill_age)}))
    section = {**st.as_dict(), "status": "unhealthy" if problems else "healthy",
               "last_drill": drill, "problems": [p.english() for p in problems]}
    if a is not None and a.last_archived_time is not None:
        section["archiver"]["last_archived_age_seconds"] = int(
            (now - a.last_archived_time).total_seconds())
    return section, problems


def health(ctx: BackupContext, engine: Engine, *, max_age: timedelta,
           max_drill_age: timedelta, listing=None) -> tuple[dict, int]:
    """The report and its exit code; ``listing`` (from ``list_everywhere``) saves
    listing the storages a second time. ``problems`` holds the English texts,
    ``problem_ids`` each one's id and parameters (for translation where shown)."""
    from guest_backup.ops.pipeline import reap_idle

    reap_idle(ctx, engine, "cli")  # health runs often: idle browse copies go with it
    now = datetime.now(timezone.utc)
    problems: list[Problem] = []
    results, code = _listed(ctx, listing, problems)
    settings = ctx.settings
    storages, unreachable = _storage_entries(results, now, max_age, problems, bool(
        settings.remote_url and not settings.keep_local))
    if unreachable:
        code = UNREACHABLE
    last_backup, last_upload, last_drill = (_latest(ctx, engine, action)
                                            for action in ("backup", "upload", "restore-test"))
    problems += _activity_problems(last_backup, last_upload, last_drill, now, max_drill_age,
                                   bool(settings.remote_url))
    problems += _check_problems(ctx, engine, results, last_drill)
    problems += _retention_problems(ctx, engine, results, now)
    problems += _lock_problems(results)
    problems += _erasure_problems(ctx, engine)
    pitr, pitr_problems = pitr_section(ctx, engine, now, max_drill_age)
    problems += pitr_problems
    if problems and code == HEALTHY:
        code = UNHEALTHY
    past = [e for e in (_latest(ctx, engine, "backup", ("failed", "aborted")),
                        _latest(ctx, engine, "upload", ("failed", "aborted"))) if e]
    last_failure = max(past, key=lambda e: e["_when"]) if past else None
    for entry in (last_backup, last_upload, last_drill, *past):
        if entry:
            entry.pop("_when", None)
            entry.pop("_id", None)
    return {
        "status": {HEALTHY: "healthy", UNHEALTHY: "unhealthy", UNREACHABLE: "unreachable"}[code],
        "checked_at": format_time(now),
        "storages": storages,
        "last_backup": last_backup,
        "last_upload": last_upload,
        "last_failure": last_failure,
        "last_drill": last_drill,
        "pitr": pitr,
        "problems": [p.english() for p in problems],
        "problem_ids": [p.as_dict() for p in problems],
    }, code
