"""The Flask-Admin pages of the Backup menu: thin views over the services."""

from __future__ import annotations

from datetime import datetime, timezone

from flask import abort, current_app, flash, jsonify, redirect, send_file, url_for
from flask_admin import expose
from flask_security import current_user
from sqlalchemy import select

from guest_registration.admin import SecureBaseView, SecureModelView
from guest_registration.extensions import csrf, db

from . import audit
from .context import dumpers
from .jobs import read_job, start_job
from .service import (BackupBusy, BackupError, archive_path, clean_partials, list_archives,
                      verify_archive)


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _verifications(names: list[str]) -> dict[str, dict]:
    """The latest verify result per archive, from the audit log."""
    if not names:
        return {}
    table = audit.AuditEntry.__table__
    rows = db.session.execute(
        select(table.c.target, table.c.outcome, table.c.finished_at, table.c.message)
        .where(table.c.action == "verify", table.c.target.in_(names))
        .order_by(table.c.id)).all()
    return {r.target: {"ok": r.outcome == "ok", "at": r.finished_at, "message": r.message}
            for r in rows}


def _archive_or_404(name: str):
    try:
        return archive_path(current_app.config["BACKUP_FOLDER"], name)
    except BackupError:
        abort(404)


class BackupView(SecureBaseView):
    """Admin → Backup → System Backup: backups, archives, monthly export, activity."""

    @expose("/")
    def index(self):
        folder = current_app.config["BACKUP_FOLDER"]
        clean_partials(folder)  # leftovers of a killed backup (only when none is running)
        archives = list_archives(folder)
        now = datetime.now(timezone.utc)
        return self.render(
            "admin/backup/index.html",
            archives=archives, verified=_verifications([a.name for a in archives]),
            human_size=human_size, formats=list(current_app.extensions["export_formats"]),
            job=read_job(folder), activity=audit.recent(db.engine, 15),
            year=now.year, month=now.month, months=range(1, 13),
            api_url=url_for("backup_api.guests", _external=True),
        )

    @expose("/start", methods=["POST"])
    def start(self):
        csrf.protect()
        try:
            start_job(current_app._get_current_object(), current_user.email)
            flash("System backup started. The download begins when it is done.", "info")
        except BackupBusy as exc:
            flash(str(exc).capitalize() + ".", "warning")
        except BackupError as exc:
            flash(f"The backup could not start: {exc}.", "error")
        return redirect(url_for(".index") + "#system-backup")

    @expose("/job")
    def job(self):
        job = read_job(current_app.config["BACKUP_FOLDER"]) or {"state": "none"}
        public = {k: job.get(k) for k in ("id", "state", "stage", "bytes", "started_at",
                                          "finished_at", "archive", "error")}
        if public.get("archive"):
            public["download_url"] = url_for(".download", archive=public["archive"])
        return jsonify(public)

    @expose("/download/<archive>")
    def download(self, archive: str):
        path = _archive_or_404(archive)
        response = send_file(path, mimetype="application/zip", as_attachment=True,
                             download_name=path.name, max_age=0, conditional=True)
        response.headers["Cache-Control"] = "no-store"
        return response

    @expose("/verify/<archive>", methods=["POST"])
    def verify(self, archive: str):
        csrf.protect()
        path = _archive_or_404(archive)
        report = verify_archive(path, dumpers(current_app))
        name = path.name
        entry = audit.start(db.engine, "verify", actor=current_user.email, via="admin", target=name)
        audit.finish(db.engine, entry, "ok" if report.ok else "failed",
                     message="; ".join(report.problems)[:500] or None)
        if report.ok:
            flash(f"{name} verified: every checksum matches and the dump is complete.", "success")
        else:
            flash(f"{name} did not verify: {'; '.join(report.problems[:3])}.", "error")
        return redirect(url_for(".index") + "#archives")

    @expose("/delete/<archive>", methods=["POST"])
    def delete(self, archive: str):
        csrf.protect()
        path = _archive_or_404(archive)
        path.unlink(missing_ok=True)
        name = path.name
        entry = audit.start(db.engine, "delete", actor=current_user.email, via="admin", target=name)
        audit.finish(db.engine, entry, "ok")
        flash(f"{name} was deleted.", "success")
        return redirect(url_for(".index") + "#archives")


class AuditLogView(SecureModelView):
    """Read-only list of exports and backups: who, when, what, outcome."""

    can_create = can_edit = can_delete = False
    column_default_sort = ("id", True)
    column_list = ("id", "created_at", "finished_at", "actor", "via", "action", "year", "month",
                   "format", "target", "rows", "bytes", "outcome", "message")
    column_filters = ("action", "outcome", "actor", "via", "created_at")
    column_searchable_list = ("actor", "target")

