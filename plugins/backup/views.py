"""The Flask-Admin page of the Backup menu: thin views over the services."""

from __future__ import annotations

from datetime import datetime, timezone

from flask import abort, current_app, flash, jsonify, redirect, request, send_file, url_for
from flask_admin import expose
from flask_security import current_user
from sqlalchemy import select

from guest_registration import audit
from guest_registration.admin import SecureBaseView
from guest_registration.extensions import csrf, db
from guest_registration.formatting import human_size, timestamp
from guest_registration.models import AuditEntry

from .archive import archive_path, clean_partials, delete_archive, list_archives
from .context import backup_context
from .errors import BackupBusy, BackupError
from .guest_export import ExportRequestError, parse_request, preview
from .jobs import read_job, start_job
from .verify import verify


def _verifications(names: list[str]) -> dict[str, dict]:
    """The latest verify result per archive, from the audit log."""
    if not names:
        return {}
    table = AuditEntry.__table__
    rows = db.session.execute(
        select(table.c.target, table.c.outcome, table.c.finished_at, table.c.message)
        .where(table.c.action == "verify", table.c.target.in_(names))
        .order_by(table.c.id)).all()
    return {r.target: {"ok": r.outcome == "ok", "at": r.finished_at, "message": r.message}
            for r in rows}


def _archive_or_404(name: str):
    try:
        return archive_path(backup_context().settings.backup_folder, name)
    except BackupError:
        abort(404)


class BackupView(SecureBaseView):
    """Admin → Backup → System Backup: backups, archives, monthly export, activity."""

    @expose("/")
    def index(self):
        settings = backup_context().settings
        folder = settings.backup_folder
        clean_partials(folder)  # leftovers of a killed backup (only when none is running)
        try:
            public_key = settings.signer().public_key
        except BackupError as exc:
            public_key = f"unavailable: {exc}"
        archives = list_archives(folder)
        now = datetime.now(timezone.utc)
        return self.render(
            "admin/backup/index.html",
            archives=archives, verified=_verifications([a.name for a in archives]),
            human_size=human_size, timestamp=timestamp,
            formats=list(current_app.extensions["export_formats"]),
            job=read_job(folder), activity=audit.recent(db.engine, 15),
            public_key=public_key, encrypted=bool(settings.age_recipients),
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
        job = read_job(backup_context().settings.backup_folder) or {"state": "none"}
        public = {k: job.get(k) for k in ("id", "state", "stage", "bytes", "started_at",
                                          "finished_at", "archive", "error")}
        if public.get("archive"):
            public["download_url"] = url_for(".download", archive=public["archive"])
        return jsonify(public)

    @expose("/download/<archive>")
    def download(self, archive: str):
        path = _archive_or_404(archive)
        mimetype = "application/octet-stream" if path.name.endswith(".age") else "application/zip"
        response = send_file(path, mimetype=mimetype, as_attachment=True,
                             download_name=path.name, max_age=0, conditional=True)
        response.headers["Cache-Control"] = "no-store"
        audit.record(db.engine, "download", "ok", actor=current_user.email, via="admin",
                     target=path.name, bytes=path.stat().st_size)
        return response

    @expose("/verify/<archive>", methods=["POST"])
    def verify(self, archive: str):
        csrf.protect()
        path = _archive_or_404(archive)
        ctx = backup_context()
        try:
            trusted = ctx.settings.trusted()
        except BackupError as exc:
            flash(f"{path.name} cannot be verified: {exc}.", "error")
            return redirect(url_for(".index") + "#archives")
        report = verify(path, ctx.engines, trusted, audit_engine=db.engine,
                        actor=current_user.email, via="admin")
        if report.ok and report.decryption_skipped:
            flash(f"{path.name}: the encrypted file's signature is valid. Its contents were not "
                  f"checked (the server holds no identity): verify it with "
                  f"manage.py verify --identity on a machine that has one.", "success")
        elif report.ok:
            flash(f"{path.name} verified: every checksum matches and the dump is complete.",
                  "success")
        else:
            flash(f"{path.name} did not verify: {'; '.join(report.problems[:3])}.", "error")
        return redirect(url_for(".index") + "#archives")

    @expose("/delete/<archive>", methods=["POST"])
    def delete(self, archive: str):
        csrf.protect()
        path = _archive_or_404(archive)
        delete_archive(path)
        audit.record(db.engine, "delete", "ok", actor=current_user.email, via="admin",
                     target=path.name)
        flash(f"{path.name} was deleted.", "success")
        return redirect(url_for(".index") + "#archives")

    @expose("/preview")
    def preview(self):
        """The first lines of a monthly export, as JSON for the page (audited as a preview)."""
        try:
            req = parse_request(request.args.to_dict(flat=False),
                                current_app.extensions["export_formats"])
        except ExportRequestError as exc:
            return jsonify(error=str(exc)), 400
        result = preview(db.engine, req, db_engine=backup_context().engines.get(db.engine.dialect.name),
                         actor=current_user.email, via="admin",
                         fetch_rows=current_app.config["EXPORT_FETCH_ROWS"])
        return jsonify(rows=result.rows, media_type=result.media_type, lines=result.lines)
