"""The Flask-Admin page of the Backup menu: thin views over the services."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from flask import Blueprint, abort, current_app, flash, jsonify, redirect, request, url_for
from flask_admin import expose
from flask_babel import gettext as _
from flask_babel import ngettext
from flask_security import current_user
from sqlalchemy import select

from guest_registration import audit
from guest_registration.admin import SecureBaseView
from guest_registration.extensions import csrf, db
from guest_registration.i18n import page_size, page_timestamp
from guest_registration.models import AuditEntry

from guest_backup.archive.format import is_archive_name
from guest_backup.archive.manifest import TIME_FORMAT
from guest_backup.ops.folders import clean_partials
from guest_backup.wiring import backup_context
from guest_backup.errors import BackupBusy, BackupError
from guest_backup.ops.fetch import archive_file
from guest_backup.export.request import ExportRequestError, parse_request
from guest_backup.export.preview import preview
from guest_backup.ops.health import health
from guest_backup.ops.health_problems import MESSAGES
from guest_backup.ops.jobs import read_job
from guest_backup.ops.page_texts import WHOLE, text_of
from guest_backup.tasks import start_job
from guest_backup.ops.listing import list_everywhere, storages_holding
from guest_backup.ops.slots import RETRY_BUSY
from guest_backup.storages import StorageError, StorageUnreachable
from guest_backup.ops.verify import verdict, verify
from guest_backup.web.download import audit_download, send_archive, storage_unreachable

#: no routes: it puts this package's ``templates/`` on the app's template path (after
#: the site's overrides and the host's own folder, so a site can override the page)
templates = Blueprint("backup_page_templates", __name__, template_folder="templates")

#: the page's banner uses backup-health's defaults
BANNER_MAX_AGE, BANNER_MAX_DRILL_AGE = timedelta(hours=26), timedelta(days=35)


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


def _where(name: str, everywhere: bool = False, unreachable: list | None = None):
    """The storages holding archive ``name``, local first (404 when none, and no
    storage that could not be asked). Unless ``everywhere``, a local copy is
    enough and the remote is not asked."""
    if not is_archive_name(name):
        abort(404)
    found = storages_holding(backup_context(), name, everywhere=everywhere,
                             unreachable=unreachable)
    if not found and not unreachable:
        abort(404)
    return found


def _iso_timestamp(text: str | None) -> str:
    """A report's ``2025-06-01T02:00:00Z`` in the page's language."""
    if not text:
        return ""
    return page_timestamp(datetime.strptime(text, TIME_FORMAT))


def page_text(value) -> str:
    """A message of ``ops`` in the page's language: a :class:`~guest_backup.ops.page_texts.Text`
    (or an error raised with one) worded again from its template, its parameters
    too; a whole message of the catalogue kept as text (a job's state) translated;
    anything else (a tool's or a storage's own words) as it is."""
    text = text_of(value)
    if text is None:
        value = "" if value is None else str(value)
        return _(value) if value in WHOLE else value
    return _(text.template, **{k: page_text(v) if text_of(v) else v
                               for k, v in text.params.items()})


def problem_text(problem: dict) -> str:
    """A health problem (id and parameters) in the page's language; a storage's
    own error as it is."""
    message = MESSAGES.get(problem["id"])
    if message is None or problem["id"] == "storage":
        return problem.get("text") or ""
    return _(message, **{k: page_text(v) if text_of(v) else v
                         for k, v in problem["params"].items()})


def _back(anchor: str = "archives"):
    return redirect(url_for(".index") + f"#{anchor}")


class BackupView(SecureBaseView):
    """Admin → Backup → System Backup: backups, archives, monthly export, activity."""

    @expose("/")
    def index(self):
        ctx = backup_context()
        settings = ctx.settings
        clean_partials(ctx)  # leftovers of a killed backup (none running)
        try:
            public_key = settings.signer().public_key
        except BackupError as exc:
            public_key = f"unavailable: {exc}"
        try:
            listing = list_everywhere(ctx)
            report, code = health(ctx, db.engine, max_age=BANNER_MAX_AGE,
                                  max_drill_age=BANNER_MAX_DRILL_AGE, listing=listing)
            archives, storage_problem = listing.archives, None
        except BackupError as exc:  # a BACKUP_REMOTE_URL that cannot work at all, a
            # BACKUP_TRUSTED_KEYS that is not a key (the page was an error page)
            archives, report, code, storage_problem = [], None, 2, str(exc)
        job = read_job(ctx)
        if job and job.get("archive") and job["archive"] not in {a.name for a in archives}:
            job["archive_gone"] = True  # never link an archive that was deleted since
        if job and job.get("error"):
            job["error"] = page_text(job["error"])
        now = datetime.now(timezone.utc)
        return self.render(
            "admin/backup/index.html",
            archives=archives, verified=_verifications([a.name for a in archives]),
            health=report, health_code=code, storage_problem=storage_problem,
            human_size=page_size, timestamp=page_timestamp, problem_text=problem_text,
            iso_timestamp=_iso_timestamp,
            formats=list(current_app.extensions["export_formats"]),
            job=job, activity=audit.recent(db.engine, 15),
            started=request.args.get("started", ""),
            public_key=public_key, encrypted=bool(settings.age_recipients),
            remote_url=settings.remote_url,
            year=now.year, month=now.month, months=range(1, 13),
            api_url=url_for("backup_api.guests", _external=True),
        )

    @expose("/start", methods=["POST"])
    def start(self):
        csrf.protect()
        try:
            job = start_job(current_app._get_current_object(), current_user.email)
            flash(_("System backup started. The download begins when it is done."), "info")
            # the page asks once how it went: a backup done before it loads still downloads
            return redirect(url_for(".index", started=job["id"]) + "#system-backup")
        except BackupBusy:
            flash(_("A backup is already running; wait for it to finish."), "warning")
        except BackupError as exc:
            flash(_("The backup could not start: %(error)s.", error=page_text(exc)), "error")
        return _back("system-backup")

    @expose("/job")
    def job(self):
        job = read_job(backup_context()) or {"state": "none"}
        public = {k: job.get(k) for k in ("id", "state", "stage", "bytes", "started_at",
                                          "finished_at", "archive", "error", "warning")}
        if public["error"]:  # for the page's script: in its language
            public["error"] = page_text(public["error"])
        if public.get("archive") and storages_holding(backup_context(), public["archive"]):
            public["download_url"] = url_for(".download", archive=public["archive"])
        return jsonify(public)

    @expose("/download/<archive>")
    def download(self, archive: str):
        unreachable: list = []  # a remote that did not answer holds nothing: not a 404
        found = _where(archive, unreachable=unreachable)
        if not found:
            return storage_unreachable(unreachable[0][1])
        storage = found[0]
        try:
            sent = send_archive(storage, archive, backup_context().settings.trusted())
        except StorageUnreachable as exc:
            return storage_unreachable(exc)
        except StorageError:
            abort(502)
        if sent.bytes:
            audit_download(storage, archive, sent, current_user.email, "admin")
        return sent.response

    @expose("/verify/<archive>", methods=["POST"])
    def verify(self, archive: str):
        csrf.protect()
        storage = _where(archive)[0]
        ctx = backup_context()
        try:
            with archive_file(storage, archive) as path:
                report = verify(path, ctx.engines, ctx.settings.trusted(), audit=ctx.audit,
                                audit_engine=db.engine, actor=current_user.email, via="admin",
                                installation=ctx.settings.installation())
        except BackupError as exc:
            flash(_("%(archive)s cannot be verified: %(error)s.", archive=archive,
                    error=page_text(exc)),
                  "error")
            return _back()
        if report.ok and report.decryption_skipped:
            flash(_("%(archive)s: the encrypted file's signature is valid. Its contents were not "
                    "checked (the server holds no identity): verify it with "
                    "manage.py verify --identity on a machine that has one.", archive=archive),
                  "success")
        elif report.ok:
            flash(_("%(archive)s verified: every checksum matches and the dump is complete.",
                    archive=archive), "success")
        else:
            flash(ngettext("%(archive)s did not verify: %(verdict)s (%(num)s problem; the "
                           "audit log lists it).", "%(archive)s did not verify: %(verdict)s "
                           "(%(num)s problems; the audit log lists them).",
                           len(report.problems), archive=archive,
                           verdict=page_text(verdict(report, archive,
                                                     ctx.settings.installation()))), "error")
        return _back()

    @expose("/delete/<archive>", methods=["POST"])
    def delete(self, archive: str):
        csrf.protect()
        removed, failed = [], []  # a storage that could not be asked may still hold it
        for storage in _where(archive, everywhere=True, unreachable=failed):
            try:
                storage.delete(archive)
                removed.append(storage.name)
            except StorageError as exc:
                failed.append((storage.name, exc))
        for name, exc in failed:
            flash(_("%(archive)s could not be deleted from %(storage)s: %(error)s.",
                    archive=archive, storage=name, error=exc), "error")
        audit.record(db.engine, "delete", "failed" if failed or not removed else "ok",
                     actor=current_user.email, via="admin", target=archive,
                     message=f"from {', '.join(removed) or 'nowhere'}" + "".join(
                         f"; not from {name}: {exc}" for name, exc in failed))
        if removed:
            flash(_("%(archive)s was deleted (%(storages)s).", archive=archive,
                    storages=", ".join(removed)), "success")
        return _back()

    @expose("/preview")
    def preview(self):
        """The first lines of a monthly export, as JSON for the page (audited as a preview)."""
        try:
            req = parse_request(request.args.to_dict(flat=False),
                                current_app.extensions["export_formats"])
        except ExportRequestError as exc:
            return jsonify(error=str(exc)), 400
        actor = current_user.email
        ctx = backup_context()
        # a preview holds a connection and a snapshot like an export: one of its slots
        slot = ctx.export_slots.acquire(int(current_app.config["EXPORT_MAX_CONCURRENT"]))
        if slot is None:
            response = jsonify(error=_("Too many exports are running; try again in a few "
                                       "seconds."))
            response.status_code, response.headers["Retry-After"] = 429, str(RETRY_BUSY)
            return response
        db.session.close()  # one connection for the preview, not two
        result = preview(db.engine, req,
                         db_engine=ctx.engine_for(db.engine.dialect.name, required=False),
                         actor=actor, via="admin", on_close=slot.release,
                         fetch_rows=current_app.config["EXPORT_FETCH_ROWS"])
        return jsonify(rows=result.rows, media_type=result.media_type, lines=result.lines)

