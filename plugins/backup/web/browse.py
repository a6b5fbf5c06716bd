"""Admin → Backup → Restore a selection: open a verified archive in a scratch
database, search it, compare a trip, a registration or a search with today,
choose registrations or a trip (and the changed rows to overwrite), preview,
restore. Thin over :mod:`guest_backup.ops.browse`, ``browse_search``,
``compare``, ``selection`` and ``browse_plans``; the forms' parsing is in
:mod:`guest_backup.web.browse_forms`."""

from __future__ import annotations

import threading

from flask import abort, current_app, flash, redirect, request, url_for
from flask_admin import expose
from flask_babel import gettext as _
from flask_security import current_user

from guest_registration.admin import SecureBaseView
from guest_registration.extensions import csrf, db
from guest_registration.i18n import page_decimal, page_size, page_timestamp

from guest_backup.archive.format import is_archive_name
from guest_backup.errors import BackupError
from guest_backup.ops.browse import begin_open, finish_open, get_session, reap, sessions
from guest_backup.ops.browse_erasures import refresh_erasures
from guest_backup.ops.browse_plans import apply_saved, save_plan
from guest_backup.ops.browse_search import registration, search_guests, trip, trips
from guest_backup.ops.compare import (compare_guests, compare_registration, compare_search,
                                      compare_trip, statuses)
from guest_backup.ops.listing import list_everywhere
from guest_backup.ops.selection import SelectionChanged
from guest_backup.web.browse_forms import (KIND_TEXT, MAX_ID, PHOTO_TEXT, REASON_TEXT, chosen,
                                           field_label, field_value, parse_search,
                                           parse_selection, when)
from guest_backup.web.views import _verifications, page_text
from guest_backup.wiring import backup_context

#: steps of each action listed on the preview and result (all are counted)
SHOWN = 300


def _verified_archives(ctx) -> list:
    """The archives whose latest verification passed (the only ones offered)."""
    try:
        archives = list_everywhere(ctx).archives
    except BackupError:  # a storage that cannot work, a bad BACKUP_TRUSTED_KEYS: none
        return []
    checked = _verifications([a.name for a in archives])
    return [a for a in archives if checked.get(a.name, {}).get("ok")]


def _search_url(sid: str, search, **extra) -> str:
    """The session page with ``search`` (and ``extra``) in its query string."""
    args = {"q": search.text, "trip": search.trip_id or "", "from": search.date_from or "",
            "to": search.date_to or "", **extra}
    return url_for(".session", sid=sid, **{k: v for k, v in args.items() if v not in ("", None)})


def _opener(ctx, engine, session, archive: str, actor: str, logger) -> None:
    """The page's thread: load the archive (its outcome is in the registry)."""
    try:
        finish_open(ctx, engine, session, archive, actor=actor, via="admin")
    except BaseException:  # recorded as the session's error and in the audit log
        logger.info("browse: opening %s failed", archive)


class BrowseView(SecureBaseView):
    """Browse an archive and restore a selection of it."""

    def _session(self, sid: str):
        """The open session (404 when unknown), used now. Settings that make no
        session usable (a BACKUP_TRUSTED_KEYS that is not a key) send it to the list
        of archives, which says why."""
        try:
            session = get_session(backup_context(), sid)
        except BackupError:
            abort(redirect(url_for(".index")))
        if session is None:
            abort(404)
        if session.state == "open":
            session.touch()
            try:
                refresh_erasures(session)  # a guest erased since the archive was opened
            except BackupError as exc:  # never shown, then: it may hold an erased guest
                flash(_("The erasure ledger could not be applied to this archive's copy: "
                        "%(error)s. Close it and open it again.", error=exc), "error")
                abort(redirect(url_for(".index")))
        return session

    def _open_session(self, sid: str):
        """The session (as :meth:`_session`) once it is open; else the session page,
        which shows how the opening goes. Its scratch copy is not touched before:
        while opening, the erasure ledger is not re-applied yet; once failed, there is
        none (its engine would make an empty SQLite file again)."""
        session = self._session(sid)
        if session.state != "open":
            abort(redirect(url_for(".session", sid=sid)))
        return session

    def _render(self, template: str, **values):
        return self.render(f"admin/backup/{template}", when=when, timestamp=page_timestamp,
                           kind_text=KIND_TEXT, reason_text=REASON_TEXT, photo_text=PHOTO_TEXT,
                           shown=SHOWN, field_label=field_label, field_value=field_value, chosen=chosen,
                           decimal=page_decimal, **values)

    @expose("/")
    def index(self):
        ctx = backup_context()
        try:
            reap(ctx, db.engine, "admin")
            opened = sessions(ctx)
        except BackupError as exc:  # no trust to check an open archive against: none usable
            flash(_("No archive can be used: %(error)s", error=page_text(exc)), "error")
            opened = []
        return self._render("browse_index.html", archives=_verified_archives(ctx),
                            sessions=opened, human_size=page_size)

    @expose("/open", methods=["POST"])
    def open(self):
        csrf.protect()
        ctx, name = backup_context(), request.form.get("archive", "")
        if not is_archive_name(name) or name not in {a.name for a in _verified_archives(ctx)}:
            flash(_("Only an archive that passed verification can be opened: verify it on "
                    "the System Backup page first."), "error")
            return redirect(url_for(".index"))
        try:
            session, mine = begin_open(ctx, db.engine, name, actor=current_user.email,
                                       via="admin")
        except BackupError as exc:
            flash(_("The archive could not be opened: %(error)s", error=page_text(exc)), "error")
            return redirect(url_for(".index"))
        if mine:
            app = current_app._get_current_object()
            threading.Thread(target=_opener, args=(ctx, db.engine, session, name,
                                                   current_user.email, app.logger),
                             name="browse-open", daemon=True).start()
        return redirect(url_for(".session", sid=session.id))

    @expose("/s/<sid>/close", methods=["POST"])
    def close(self, sid: str):
        csrf.protect()
        session = self._session(sid)
        session.close(db.engine, actor=current_user.email, via="admin")
        flash(_("%(archive)s was closed; its scratch copy is gone.", archive=session.archive),
              "success")
        return redirect(url_for(".index"))

    @expose("/s/<sid>/")
    def session(self, sid: str):
        session = self._session(sid)
        if session.state != "open":
            return self._render("browse_opening.html", session=session)
        search, error = parse_search(request.args)
        page = comparison = None
        if error is None and (search.text or search.trip_id or search.date_from
                              or search.date_to):
            page = search_guests(session.engine, search)
            if request.args.get("compare") == "1":
                comparison = compare_search(session.engine, db.engine, search)
            else:  # the page's rows by id: cheap, always shown
                comparison = compare_guests(session.engine, db.engine,
                                            [r["guest_id"] for r in page.rows],
                                            [r["registration_id"] for r in page.rows])
        return self._render("browse_session.html", session=session, search=search,
                            error=error, page=page, comparison=comparison,
                            status=statuses(comparison) if comparison else {},
                            trips=trips(session.engine, limit=100).rows,
                            compared=request.args.get("compare") == "1",
                            search_url=lambda s, **extra: _search_url(sid, s, **extra))

    @expose("/s/<sid>/trip/<int:trip_id>")
    def trip(self, sid: str, trip_id: int):
        session = self._open_session(sid)
        row = trip(session.engine, trip_id) if trip_id <= MAX_ID else None
        if row is None:
            abort(404)
        return self._render("browse_compare.html", session=session, trip=row, record=None,
                            comparison=compare_trip(session.engine, db.engine, trip_id))

    @expose("/s/<sid>/registration/<int:registration_id>")
    def registration(self, sid: str, registration_id: int):
        session = self._open_session(sid)
        row = registration(session.engine, registration_id) if registration_id <= MAX_ID else None
        if row is None:
            abort(404)
        comparison = compare_registration(session.engine, db.engine, registration_id)
        return self._render("browse_compare.html", session=session, trip=None, record=row,
                            comparison=comparison)

    @expose("/s/<sid>/preview", methods=["POST"])
    def preview(self, sid: str):
        csrf.protect()
        from guest_backup.ops.selection_apply import restore_selection

        session = self._open_session(sid)
        selection, error = parse_selection(request.form)
        if error is not None:
            flash(error, "error")
            return redirect(request.referrer or url_for(".session", sid=sid))
        try:
            result = restore_selection(backup_context(), db.engine, session.engine, selection,
                                       archive=session.archive, actor=current_user.email,
                                       via="admin", dry_run=True,
                                       reapplied_at=session.opened_at)
        except BackupError as exc:
            flash(_("Nothing can be restored: %(error)s", error=page_text(exc)), "error")
            return redirect(url_for(".session", sid=sid))
        plan = result.plan
        return self._render("browse_preview.html", session=session, plan=plan,
                            counts=plan.counts(), mapping=plan.mapping(),
                            token=save_plan(session, plan), done=False)

    @expose("/s/<sid>/restore", methods=["POST"])
    def restore(self, sid: str):
        csrf.protect()
        session = self._open_session(sid)
        actor = current_user.email
        db.session.close()  # the restore writes on its own connection
        try:
            plan, seconds = apply_saved(session, db.engine, request.form.get("token", ""),
                                        actor=actor, via="admin")
        except SelectionChanged as exc:
            flash(_("Nothing was restored: %(reason)s. Preview again to see today's rows.",
                    reason=page_text(exc.reason)), "error")
            return redirect(url_for(".session", sid=sid))
        except BackupError as exc:
            flash(_("Nothing was restored: %(error)s", error=page_text(exc)), "error")
            return redirect(url_for(".session", sid=sid))
        flash(_("Restored from %(archive)s in %(seconds)s s.", archive=session.archive,
                seconds=page_decimal(seconds)), "success")
        return self._render("browse_preview.html", session=session, plan=plan,
                            counts=plan.counts(), mapping=plan.mapping(), token=None,
                            done=True)
