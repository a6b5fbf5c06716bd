"""Admin → Backup → Point-in-time recovery: the pgBackRest backups, the recoverable
window and WAL archiving, with the commands that act on them, and a form that
starts a full, diff or incr backup as a job (:func:`guest_backup.tasks.start_pitr_job`:
a worker's with REDIS_URL, else a thread here), its state polled by the page.
Only root or the cluster's owner may run pgBackRest: a web server running as the
app's user shows the state the last command kept, and starts backups only
through a worker that may run it."""

from __future__ import annotations

from datetime import datetime, timezone

from flask import current_app, flash, jsonify, redirect, request, url_for
from flask_admin import expose
from flask_babel import gettext as _
from flask_security import current_user

from guest_registration.admin import SecureBaseView
from guest_registration.extensions import csrf, db
from guest_registration.i18n import page_size, page_timestamp

from guest_backup.archive.manifest import TIME_FORMAT
from guest_backup.errors import BackupBusy, BackupError
from guest_backup.ops.health import pitr_section
from guest_backup.ops.jobs import PITR, read_job
from guest_backup.tasks import start_pitr_job
from guest_backup.web.views import BANNER_MAX_DRILL_AGE, page_text, problem_text
from guest_backup.wiring import backup_context


def _when(text: str | None) -> str:
    """A report's ``2026-12-04T17:39:00Z`` in the page's language."""
    if not text:
        return ""
    return page_timestamp(datetime.strptime(text, TIME_FORMAT))


def _restore_command(until: str | None) -> str:
    """An example recovery to the end of the window (a report's time, as --to takes it)."""
    moment = until.replace("T", " ").replace("Z", "+00") if until else "YYYY-MM-DD HH:MM:SS+01"
    return (f'manage.py pitr restore --to "{moment}" --into /var/lib/postgresql/recovered '
            f"--port 5433")


def _duration(seconds: int) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class PitrView(SecureBaseView):
    """The PITR state from ``pgbackrest info`` and ``pg_stat_archiver``."""

    @expose("/")
    def index(self):
        ctx = backup_context()
        db.session.close()  # the checks use their own connections
        section, problems = pitr_section(ctx, db.engine, datetime.now(timezone.utc),
                                        BANNER_MAX_DRILL_AGE)
        stanza = ctx.settings.pitr.get("PITR_STANZA") or "guest-registration"
        return self.render("admin/backup/pitr.html", pitr=section,
                           problems=[p.as_dict() for p in problems], problem_text=problem_text,
                           when=_when, restore_command=_restore_command, human_size=page_size,
                           duration=_duration, stanza=stanza, job=_public(read_job(ctx, PITR)))

    @expose("/backup", methods=["POST"])
    def backup(self):
        """Start a pgBackRest backup of the type the form names (audited when it runs,
        as ``pitr-backup``)."""
        csrf.protect()
        kind = request.form.get("type", "")
        if kind not in _TYPES:
            flash(_("Choose a backup type: full, diff or incr."), "error")
            return redirect(url_for(".index") + "#pitr-backup")
        try:
            start_pitr_job(current_app._get_current_object(), current_user.email, kind)
            flash(_("PITR backup started."), "info")
        except BackupBusy:
            flash(_("A PITR backup is already running; wait for it to finish."), "warning")
        except BackupError as exc:
            flash(_("The PITR backup could not start: %(error)s", error=page_text(exc)),
                  "error")
        return redirect(url_for(".index") + "#pitr-backup")

    @expose("/job")
    def job(self):
        """The latest PITR backup job's state, for the page's polling."""
        return jsonify(_public(read_job(backup_context(), PITR)) or {"state": "none"})


_TYPES = ("full", "diff", "incr")
_PUBLIC = ("id", "state", "stage", "type", "started_at", "finished_at", "label", "size",
           "bytes", "seconds", "error")


def _public(job: dict | None) -> dict | None:
    """What the page shows of a job (not who started it), in its language."""
    if not job:
        return None
    shown = {k: page_text(job[k]) if k == "error" and job.get(k) else job.get(k)
             for k in _PUBLIC}
    if job.get("state") == "queued":  # on a queue of its own: is anyone taking it?
        from guest_registration.tasks import job_queue, queue_workers

        from guest_backup.tasks import run_queued_pitr_backup

        shown["no_worker"] = queue_workers(current_app, job_queue(run_queued_pitr_backup)) == 0
    return shown
