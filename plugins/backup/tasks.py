"""Backups started from the page and queued drills, bound to the app: run in a
thread of the web process (embedded), or queued in Redis for ``manage.py
worker`` (RQ), whose jobs are the ``run_queued_*`` functions below (declared in
``register_job_functions``). The job's state and the lock are
:mod:`guest_backup.ops.jobs`'; PITR backups have their own (see there).

The worker logs one line when a job starts and one when it ends, with its outcome.

PITR backups go to their own queue (``pitr``: ``manage.py worker --queue pitr``,
run as root or the cluster's owner), the rest to the default one (the service
user's worker): see :mod:`guest_registration.tasks`.
"""

from __future__ import annotations

import logging
import sys
import threading
import uuid

from flask import Flask, current_app

from guest_backup.errors import BackupBusy, BackupError
from guest_backup.ops.jobs import PITR, adopt, claim, job_state, run_job, run_pitr_job
from guest_backup.wiring import backup_context

log = logging.getLogger(__name__)


def _say(line: str) -> None:
    """One line of the worker's log (stderr, whatever the logging level)."""
    print(f"[guest-registration worker] {line}", file=sys.stderr, flush=True)


def start_job(app: Flask, actor: str | None, via: str = "admin") -> dict:
    """Claim the lock and a job, then queue it for a worker (Redis) or run it in a
    thread of this process; ``via`` (admin, api) is what its audit entry names."""
    from guest_registration.extensions import db
    from guest_registration.tasks import task_queue

    ctx = backup_context(app)
    queue = task_queue(app)
    job, lock = claim(ctx, actor, queued=queue is not None, via=via)
    if queue is not None:
        queue.enqueue(run_queued_backup, job, lock.token, job_id=f"backup-{job['id']}",
                      result_ttl=3600, failure_ttl=7 * 24 * 3600)
    else:
        engine = db.engine
        threading.Thread(target=run_job, args=(ctx, engine, job, lock, app.logger),
                         name="web-backup", daemon=True).start()
    return job


def run_queued_backup(job: dict, token: str) -> str:
    """The RQ job (``manage.py worker``): adopt the lock the click took, then run."""
    from guest_registration.extensions import db

    ctx = backup_context(current_app)
    _say(f"backup {job['id']} started (by {job.get('actor') or 'unknown'})")
    lock = adopt(ctx, job, token)
    if lock is not None:
        run_job(ctx, db.engine, job, lock, log)
    else:
        job_state(ctx).write(job)
    _say(f"backup {job['id']} ended: {job['state']}"
         + (f", {job['archive']}" if job.get("archive") else "")
         + (f" ({job['error']})" if job.get("error") else ""))
    return job["state"]


def start_pitr_job(app: Flask, actor: str | None, kind: str) -> dict:
    """A pgBackRest backup of ``kind`` (full, diff, incr) from the PITR page, like
    :func:`start_job`: under the PITR lock, queued for a worker or in a thread. Run
    here, this process must be allowed to run pgBackRest (root or the cluster's
    owner): refused at the click otherwise."""
    from guest_registration.extensions import db
    from guest_registration.tasks import job_queue, task_queue

    from guest_backup.ops.pitr import open_pitr
    from guest_backup.physical import PitrError
    from guest_backup.physical.pgbackrest import KINDS

    if kind not in KINDS:
        raise PitrError(f"the backup type must be one of {', '.join(KINDS)}")
    ctx = backup_context(app)
    queue = task_queue(app, job_queue(run_queued_pitr_backup))
    if queue is None:
        open_pitr(ctx).cluster.owner.require()  # PitrError: off, or not allowed here
    elif not ctx.settings.pitr_enabled:
        open_pitr(ctx)
    job, lock = claim(ctx, actor, queue is not None, PITR, type=kind)
    if queue is not None:
        queue.enqueue(run_queued_pitr_backup, job, lock.token, job_id=f"pitr-backup-{job['id']}",
                      result_ttl=3600, failure_ttl=7 * 24 * 3600)
    else:
        threading.Thread(target=run_pitr_job, args=(ctx, db.engine, job, lock, app.logger),
                         name="web-pitr-backup", daemon=True).start()
    return job


def run_queued_pitr_backup(job: dict, token: str) -> str:
    """The RQ job of a PITR backup from the page: adopt the PITR lock, then run."""
    from guest_registration.extensions import db

    ctx = backup_context(current_app)
    _say(f"PITR {job.get('type')} backup {job['id']} started (by {job.get('actor') or 'unknown'})")
    lock = adopt(ctx, job, token, PITR)
    if lock is not None:
        run_pitr_job(ctx, db.engine, job, lock, log)
    _say(f"PITR backup {job['id']} ended: {job['state']}"
         + (f", {job['label']}" if job.get("label") else "")
         + (f" ({job['error']})" if job.get("error") else ""))
    return job["state"]


#: pgBackRest needs root or the cluster's owner: a worker of its own takes these
run_queued_pitr_backup.job_queue = "pitr"  # type: ignore[attr-defined]


def enqueue_drill(app: Flask, actor: str | None, identity: str | None = None,
                  trusted_keys=()) -> str:
    """Queue a restore drill for ``manage.py worker``; the RQ job's id. ``identity``
    is a path on the worker's machine: no key material goes through Redis."""
    from guest_registration.tasks import task_queue

    queue = task_queue(app)
    if queue is None:
        raise BackupError("REDIS_URL is not set: run the drill here, without --queue")
    job = queue.enqueue(run_queued_drill, actor, identity, list(trusted_keys),
                        job_id=f"restore-test-{uuid.uuid4().hex}", result_ttl=7 * 24 * 3600,
                        failure_ttl=7 * 24 * 3600)
    return job.id


def run_queued_drill(actor: str | None, identity: str | None, trusted_keys: list) -> dict:
    """The RQ job of a queued drill; audited as ``restore-test`` by the drill itself."""
    from guest_registration.extensions import db

    from guest_backup.ops.drill import restore_drill

    _say(f"restore drill started (by {actor or 'unknown'})")
    try:
        result = restore_drill(backup_context(current_app), db.engine, identity=identity,
                               trusted_keys=trusted_keys, actor=actor, via="worker")
    except BackupBusy as exc:  # skipped, as ``restore-test`` exits 75: not a failed job
        _say(f"restore drill skipped: {exc}")
        return {"ok": None, "skipped": str(exc)}
    except BackupError as exc:
        _say(f"restore drill ended: failed ({exc})")
        raise
    _say(f"restore drill ended: {'ok' if result.ok else 'failed'}, {result.archive}")
    return {"ok": result.ok, "archive": result.archive, "rows": result.rows,
            "mismatches": list(result.mismatches)}
