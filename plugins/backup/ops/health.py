"""``backup-health``: is there a recent archive in every storage, did the last
backup (and its upload) succeed, and was a restore drill passed recently?

Exit codes, for monitoring: 0 healthy, 1 unhealthy (a database that cannot be
read too), 2 a storage can't be reached. The problems and their wording:
:mod:`guest_backup.ops.health_problems`.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timedelta, timezone

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from guest_backup.archive.manifest import format_time
from guest_backup.errors import BackupError
from guest_backup.files import user_name
from guest_backup.ops.context import BackupContext
from guest_backup.ops.health_audit import ENTRIES, activity_problems, check_problems, latest
from guest_backup.ops.health_problems import Problem, human_age, parse_duration, some_names
from guest_backup.ops.listing import list_everywhere, recognised
from guest_backup.ops.pitr import status as pitr_status
from guest_backup.ops.retention import legal_horizon
from guest_backup.ops.rights import overdue_registrations
from guest_backup.storages import StorageError

HEALTHY, UNHEALTHY, UNREACHABLE = 0, 1, 2
log = logging.getLogger(__name__)


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
    """Registrations (with an ``engine``: not when the database cannot be read) and
    archives past GUEST_RETENTION_YEARS (none when it is 0)."""
    years = ctx.settings.guest_retention_years
    horizon = legal_horizon(years, now)
    if horizon is None:
        return []
    problems = []
    count = overdue_registrations(engine, years) if engine is not None else 0
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
    drill = latest(ctx, engine, "pitr-drill") if engine is not None else None
    drill_age = now - drill.pop("_when") if drill else None
    if drill is None:
        if engine is not None:  # without a database it is not known
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


def _recorded(ctx: BackupContext, engine: Engine, results, now: datetime,
              max_drill_age: timedelta) -> tuple[dict | None, list[Problem]]:
    """The report's entries (:data:`ENTRIES`) and the problems the audit log and the
    database tell; or None and one problem when the database cannot be read (it was
    a traceback: no JSON for monitoring, and notify-check told nobody)."""
    failed = ("failed", "aborted")
    try:
        last = {"last_backup": latest(ctx, engine, "backup"),
                "last_upload": latest(ctx, engine, "upload"),
                "last_drill": latest(ctx, engine, "restore-test")}
        past = [e for e in (latest(ctx, engine, "backup", failed),
                            latest(ctx, engine, "upload", failed)) if e]
        problems = activity_problems(last, now, max_drill_age, bool(ctx.settings.remote_url))
        problems += check_problems(ctx, engine, results, last["last_drill"])
        problems += _erasure_problems(ctx, engine)
    except SQLAlchemyError as exc:  # no password, no driver's text: the type names it
        log.warning("backup health: the database cannot be read (%s)", type(exc).__name__)
        return None, [Problem("database", {"message": type(exc).__name__})]
    last["last_failure"] = max(past, key=lambda e: e["_when"]) if past else None
    for entry in filter(None, (*last.values(), *past)):
        entry.pop("_when", None)
        entry.pop("_id", None)
    return {key: last[key] for key in ENTRIES}, problems


def health(ctx: BackupContext, engine: Engine, *, max_age: timedelta,
           max_drill_age: timedelta, listing=None) -> tuple[dict, int]:
    """The report and its exit code; ``listing`` (from ``list_everywhere``) saves
    listing the storages a second time. ``problems`` holds the English texts,
    ``problem_ids`` each one's id and parameters (for translation where shown)."""
    from guest_backup.ops.pipeline import reap_idle

    now = datetime.now(timezone.utc)
    problems: list[Problem] = []
    results, code = _listed(ctx, listing, problems)
    settings = ctx.settings
    storages, unreachable = _storage_entries(results, now, max_age, problems, bool(
        settings.remote_url and not settings.keep_local))
    if unreachable:
        code = UNREACHABLE
    last, found = _recorded(ctx, engine, results, now, max_drill_age)
    readable = engine if last is not None else None  # else none of it is known
    if readable is not None:
        reap_idle(ctx, engine, "cli")  # health runs often: idle browse copies go with it
    problems += found + _retention_problems(ctx, readable, results, now)
    problems += _lock_problems(results)
    pitr, pitr_problems = pitr_section(ctx, readable, now, max_drill_age)
    problems += pitr_problems
    if problems and code == HEALTHY:
        code = UNHEALTHY
    return {
        "status": {HEALTHY: "healthy", UNHEALTHY: "unhealthy", UNREACHABLE: "unreachable"}[code],
        "checked_at": format_time(now),
        "storages": storages,
        **(last or dict.fromkeys(ENTRIES)),
        "pitr": pitr,
        "problems": [p.english() for p in problems],
        "problem_ids": [p.as_dict() for p in problems],
    }, code
