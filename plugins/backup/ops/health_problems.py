"""What ``backup-health`` says: each problem as a message id and its parameters
(:class:`Problem`), the catalogue that words them once (:data:`MESSAGES`, in
English here and in the page's language where shown), and the durations and
times they quote."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta


_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> timedelta:
    """``26h``, ``35d``, ``90m``, ``2w`` or plain seconds."""
    m = _DURATION.match(text or "")
    if not m:
        raise ValueError(f"{text!r} is not a duration (e.g. 26h, 35d, 90m)")
    try:
        return timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])
    except OverflowError:  # beyond timedelta's 999,999,999 days
        raise ValueError(f"{text[:40]!r} is too long a duration") from None


def N_(message: str) -> str:
    """Marks a message for the catalogue (Babel's default keyword); translated where shown."""
    return message


#: the problems ``health`` reports, by id, worded once: the report (and
#: ``backup-health``) gives them in English, the Backup page in its language
MESSAGES = {
    "old_archive": N_("%(storage)s: the newest archive is %(age)s old (more than %(limit)s)"),
    "no_archive": N_("%(storage)s: no archive yet"),
    "backup_failed": N_("the last backup failed at %(at)s: %(message)s"),
    "upload_failed": N_("the last upload failed at %(at)s: %(message)s"),
    "no_drill": N_("no restore drill yet (run: manage.py restore-test)"),
    "drill_failed": N_("the last restore drill failed at %(at)s: %(message)s"),
    "old_drill": N_("the last restore drill is %(age)s old (more than %(limit)s)"),
    "unrecognised": N_("%(storage)s: %(count)s unrecognised files (not counted as backups, "
                       "never deleted by retention): %(names)s"),
    #: a command or worker run as another user (root) left them, 0600; ``owners``: whose
    #: they are, ``user``: the user this runs as (the service's), who cannot read them
    "unreadable": N_("%(storage)s: %(count)s files named like archives cannot be read by "
                     "%(user)s (owned by %(owners)s, as a command or worker run as another "
                     "user leaves them), so they are not counted as backups: %(names)s; chown "
                     "them to %(user)s and run backup commands as %(user)s"),
    #: ``name``/``created``: the one dated furthest ahead
    "future_archive": N_("%(storage)s: %(count)s archives signed with a creation time in the "
                         "future (%(name)s: %(created)s): check this machine's clock; not "
                         "counted as backups, never deleted by retention"),
    #: ``limit``: GUEST_RETENTION_YEARS
    "overdue_records": N_("%(count)s registrations past the legal retention of %(limit)s years "
                          "(run: manage.py retention-enforce)"),
    "overdue_archives": N_("%(storage)s: %(count)s archives older than the legal retention of "
                           "%(limit)s years (run: manage.py retention-enforce)"),
    #: archives past the horizon a storage holds (Object Lock); ``name``: the first,
    #: ``reason``: the storage's own words on until when (a date, or a legal hold)
    "overdue_archives_held": N_("%(storage)s: %(count)s archives older than the legal "
                                "retention of %(limit)s years are held by the storage "
                                "(%(name)s: %(reason)s); retention-enforce removes them in its "
                                "first run after that"),
    #: its last verify or restore-test failed; ``message``: what it found
    "newest_failed_check": N_("%(storage)s: the newest archive %(name)s failed its last check "
                              "at %(at)s (%(message)s); make a new backup, and verify this one "
                              "again (run: manage.py verify) or delete it"),
    #: a storage's own error message, shown as it is
    "storage": "%(message)s",
    #: BACKUP_S3_OBJECT_LOCK_DAYS is set; ``reason``: the storage's own words
    "object_lock_missing": N_("%(storage)s: BACKUP_S3_OBJECT_LOCK_DAYS is %(days)s, but "
                              "%(reason)s: its archives can be deleted by anyone holding the "
                              "storage's keys"),
    #: the database misses erasures of the ledger (guest_backup.ops.erasure_mark)
    "erasures_missing": N_("the database misses %(count)s erasure(s) of the erasure ledger (it "
                           "reflects line %(mark)s of %(last)s): run manage.py erasure-ledger "
                           "apply"),
    "erasures_unchecked": N_("the erasure ledger cannot be checked (%(message)s): run "
                             "manage.py erasure-ledger check"),
    "erasures_unknown": N_("the database's place in the erasure ledger (%(last)s lines) is not "
                           "known: run manage.py erasure-ledger apply once"),
    #: the audit log and the database could not be read; ``message``: the error's type only
    "database": N_("the database cannot be read (%(message)s), so the last backup, upload "
                   "and restore drill are not known: check that the database server runs "
                   "and DATABASE_URL (manage.py status says more)"),
    #: point-in-time recovery (only when PITR_PG_DATA is set; see guest_backup.ops.pitr)
    "pitr_unavailable": N_("point-in-time recovery: %(message)s"),
    "pitr_wal_stalled": N_("WAL archiving is stalled: %(count)s segment(s) waiting, the oldest "
                           "for %(age)s (more than %(limit)s)"),
    "pitr_wal_failing": N_("WAL archiving is failing (last failure at %(at)s): %(count)s "
                           "segment(s) waiting, the oldest for %(age)s (more than %(limit)s)"),
    "pitr_no_full": N_("no full PITR backup yet (run: manage.py pitr backup --type full)"),
    "pitr_old_full": N_("the newest full PITR backup is %(age)s old (more than %(limit)s)"),
    "pitr_no_drill": N_("no PITR drill yet (run: manage.py pitr drill)"),
    "pitr_drill_failed": N_("the last PITR drill failed at %(at)s: %(message)s"),
    "pitr_old_drill": N_("the last PITR drill is %(age)s old (more than %(limit)s)"),
}


@dataclass
class Problem:
    """One problem: a message id and its parameters (never parsed back from text)."""

    id: str
    params: dict = field(default_factory=dict)

    def english(self) -> str:
        return MESSAGES[self.id] % self.params

    def as_dict(self) -> dict:
        return {"id": self.id, "params": dict(self.params), "text": self.english()}


def some_names(names: list[str]) -> str:
    return ", ".join(names[:5]) + (", …" if len(names) > 5 else "")


def human_age(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
