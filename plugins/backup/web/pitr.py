"""Admin → Backup → Point-in-time recovery: the pgBackRest backups, the recoverable
window and WAL archiving, with the commands that act on them. Read-only: the web
server runs as the app's user, and only root or the cluster's owner may run
pgBackRest (the page then shows the state the last command kept)."""

from __future__ import annotations

from datetime import datetime, timezone

from flask_admin import expose

from guest_registration.admin import SecureBaseView
from guest_registration.extensions import db
from guest_registration.i18n import page_size, page_timestamp

from guest_backup.ops.health import pitr_section
from guest_backup.web.views import BANNER_MAX_DRILL_AGE, problem_text
from guest_backup.wiring import backup_context


def _when(text: str | None) -> str:
    """A report's ``2026-12-04T17:39:00Z`` in the page's language."""
    if not text:
        return ""
    return page_timestamp(datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))


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
                           duration=_duration, stanza=stanza)
