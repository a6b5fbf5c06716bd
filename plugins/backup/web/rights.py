"""Admin → Backup → Guests' rights: find a guest, a registration or an e-mail
address, see what an erasure will remove, confirm it (a CSRF-checked POST).
Thin over :mod:`guest_backup.ops.erasure`.

The search is a CSRF-checked POST and no answer redirects with what was searched:
a URL ends up in the server's access log (and the browser's history), which
would keep the address of a person whose data was erased. A GET with a record id
(``?kind=guest&q=7``) still shows its plan; a GET with an e-mail address is a 400."""

from __future__ import annotations

import re

from flask import abort, flash, redirect, request, url_for
from flask_admin import expose
from flask_babel import gettext as _
from flask_security import current_user

from guest_registration.admin import SecureBaseView
from guest_registration.extensions import csrf, db
from guest_registration.i18n import page_timestamp

from guest_backup.errors import BackupError
from guest_backup.ops.erasure import (NothingToErase, NotFound, PlanChanged, Target, erase,
                                      plan_erasure)
from guest_backup.ops.rights import overdue_registrations
from guest_backup.wiring import backup_context

KINDS = ("guest", "registration", "email")
#: an id: ASCII digits only (``str.isdigit`` also takes "²", which ``int`` refuses, and "٣")
ID = re.compile(r"[0-9]{1,11}")


def _target(kind: str, value: str) -> Target | None:
    """The target a search names (None when it names none)."""
    value = (value or "").strip()
    if kind == "email" and "@" in value:
        return Target.of_email(value)
    if kind in ("guest", "registration") and ID.fullmatch(value):
        return Target.guest(int(value)) if kind == "guest" else Target.registration(int(value))
    return None


def _search_error(kind: str) -> str:
    if kind == "email":
        return _("Give an e-mail address.")
    return _("Give a number (the ID in the Guests or Registrations list).")


class RightsView(SecureBaseView):
    """Erasure of a guest's personal data (GDPR Art. 17), with the plan first."""

    @expose("/", methods=["GET", "POST"])
    def index(self):
        if request.method == "POST":
            csrf.protect()
            fields = request.form
        else:
            fields = request.args
            if fields.get("kind") == "email" and fields.get("q"):
                abort(400)  # an e-mail address in a URL: the search form posts it
        kind = fields.get("kind", "guest")
        kind = kind if kind in KINDS else "guest"
        value = fields.get("q", "")
        plan, error = None, None
        if value:
            target = _target(kind, value)
            if target is None:
                error = _search_error(kind)
            else:
                try:
                    plan = plan_erasure(db.engine, target)
                except NotFound:
                    error = _("Nothing found.")
        years = backup_context().settings.guest_retention_years
        return self.render("admin/rights/index.html", kind=kind, value=value, plan=plan,
                           error=error, timestamp=page_timestamp, years=years,
                           overdue=overdue_registrations(db.engine, years))

    @expose("/erase", methods=["POST"])
    def erase(self):
        csrf.protect()
        kind, value = request.form.get("kind", ""), request.form.get("q", "")
        target = _target(kind, value)
        if target is None:
            flash(_search_error(kind), "error")
            return redirect(url_for(".index"))
        actor = current_user.email
        db.session.close()  # the erasure writes on its own connection (SQLite: no lock held)
        try:
            result = erase(backup_context(), db.engine, target, actor=actor, via="admin",
                           expected=request.form.get("plan", ""))
        except (NotFound, NothingToErase):  # never the search in the URL: see the module
            flash(_("Nothing to erase: no personal data is left there."), "warning")
            return redirect(url_for(".index"))
        except PlanChanged:  # erase only what the admin saw
            flash(_("Nothing was erased: what it would erase changed since it was shown "
                    "(a new registration, say). Search again to see it as it is now."), "error")
            return redirect(url_for(".index"))
        except BackupError as exc:  # its text may begin as the page's own words do
            reason = str(exc).removeprefix("nothing was erased: ")
            flash(_("Nothing was erased: %(error)s", error=reason), "error")
            return redirect(url_for(".index"))
        plan = result.plan
        flash(_("Erased: %(guests)s guest(s), %(emails)s registration e-mail(s), %(photos)s "
                "document photo(s). The erasure is in the erasure ledger (line %(seq)s).",
                guests=len(plan.guests), emails=len(plan.closed), photos=result.photos_deleted,
                seq=result.seq), "success")
        for warning in result.warnings:
            flash(_("Warning: %(warning)s", warning=warning), "warning")
        return redirect(url_for(".index"))
