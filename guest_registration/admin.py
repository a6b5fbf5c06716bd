"""The Flask-Admin panel: secured base views, the core model views (trips,
registrations, guests, users, the audit log), and the ``Admin`` built per app
from the views the plugins contribute.

Values are shown the same way on every list and detail page: the labels of
stored choices from :mod:`guest_registration.models`, timestamps to the second,
booleans as Yes/No, in the page's language (:mod:`guest_registration.i18n`)."""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any

from flask import (Flask, abort, current_app, flash, redirect, request, send_from_directory,
                   url_for)
from flask_admin import Admin, AdminIndexView, BaseView, expose
from flask_admin.contrib.sqla import ModelView
from flask_admin.model import typefmt
from flask_admin.theme import Bootstrap4Theme
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_security import current_user
from flask_wtf import FlaskForm
from markupsafe import Markup
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from wtforms.validators import NumberRange

from . import audit
from .availability import MESSAGE as UNAVAILABLE_MESSAGE
from .availability import UNAVAILABLE, database_unavailable, unavailable_response
from .extensions import db
from .headers import csp_nonce
from .i18n import audit_label, choices, page_size, page_timestamp, page_yes_no, same_site_path
from .models import (AGE_CATEGORIES, DOCUMENT_TYPES, LANGUAGES, REGISTRATION_STATUSES,
                     AuditEntry, Guest, Registration, Trip, User)
from .registration.deletion import delete_unnamed_photos, photos_of
from .registry import hook_items

#: Stored guest-photo names: ``<uuid4>.<ext>``; nothing else is ever served.
PHOTO_NAME_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.(jpg|png|pdf)$")


def is_admin() -> bool:
    return bool(current_user.is_authenticated and current_user.active
                and current_user.has_role("admin"))


def shows_admin_link() -> bool:
    """Whether the public pages' menu links the admin panel: for visitors (the link
    leads to the login) and admins, not for other users (they would get 403)."""
    if not current_user.is_authenticated:
        return True
    try:
        return is_admin()
    except SQLAlchemyError:  # an error page while the database is away: no link
        db.session.rollback()
        return False


class AdminOnlyMixin:
    """Admins only: anonymous visitors go to the login page, others get 403."""

    def is_accessible(self) -> bool:
        return is_admin()

    def inaccessible_callback(self, name: str, **kwargs: Any):
        if database_unavailable():  # the user could not be looked up: not a login matter
            return unavailable_response()
        if current_user.is_authenticated:
            abort(403)
        return redirect(url_for("security.login", next=self._login_next()))

    def _login_next(self) -> str:
        """Where the login returns: this page for a GET; for a POST (a button pressed
        while signed out) the page the button was on, never the POST-only path (a GET
        there is a 405 and the action would silently not happen)."""
        if request.method in ("GET", "HEAD"):
            return request.full_path.rstrip("?")
        return same_site_path(request.referrer) or self.get_url(f".{self._default_view}")


class SecureIndexView(AdminOnlyMixin, AdminIndexView):
    @expose("/")
    def index(self):
        counts = {
            "trips": db.session.query(Trip).count(),
            "registrations": db.session.query(Registration).count(),
            "guests": db.session.query(Guest).count(),
        }
        return self.render("admin/index.html", counts=counts)


class SecureBaseView(AdminOnlyMixin, BaseView):
    """Base for plugin pages: admin-only."""


class CSRFAdminForm(FlaskForm):
    """Flask-WTF form as Flask-Admin's form base: every model form, the delete
    form and the action form carry and check the same CSRF token as the rest of
    the site. (Flask-Admin's own ``SecureForm`` would render a second, competing
    ``csrf_token`` field next to Flask-WTF's once ``CSRFProtect`` is installed.)"""


def _formatters(base: dict) -> dict:
    formatters = dict(base)
    formatters.update({
        bool: lambda view, value, name: page_yes_no(value),
        datetime: lambda view, value, name: page_timestamp(value),
        date: lambda view, value, name: page_timestamp(value),
    })
    return formatters


class SecureModelView(AdminOnlyMixin, ModelView):
    """Base for model views: admin-only, CSRF-checked forms (create, edit, delete,
    actions), timestamps to the second and booleans as Yes/No."""

    form_base_class = CSRFAdminForm
    column_type_formatters = _formatters(typefmt.BASE_FORMATTERS)
    column_type_formatters_detail = _formatters(typefmt.DETAIL_FORMATTERS)
    list_template = "admin/model/list_responsive.html"
    page_size = 50
    can_view_details = True

    def handle_view_exception(self, exc: Exception) -> bool:
        """A change the database refused, said plainly: the SQL error showed the
        statement and the row's values (a guest's document number) on the page."""
        if not isinstance(exc, SQLAlchemyError):
            return super().handle_view_exception(exc)
        if not isinstance(exc, IntegrityError):
            current_app.logger.warning("the database refused a change on %s: %s", request.path,
                                       type(getattr(exc, "orig", None) or exc).__name__)
            flash(_(UNAVAILABLE_MESSAGE) if isinstance(exc, UNAVAILABLE) else
                  _("The database refused a value of this record (a number too large, or "
                    "another value it cannot store); nothing was saved."), "error")
        elif request.endpoint and request.endpoint.endswith((".delete_view", ".action_view")):
            flash(_("This record cannot be deleted while other records belong to it (a "
                    "registration's guests, a trip's registrations): delete those first."), "error")
        else:
            flash(_("The database refused the change (a value already taken, or a required one "
                    "missing); nothing was saved."), "error")
        return True


#: Column names shown on every list, detail page, form and filter.
LABELS = {"id": _l("ID"), "title": _l("Title"), "start_date": _l("Start date"),
          "end_date": _l("End date"), "max_guests": _l("Max. guests"),
          "created_at": _l("Created (UTC)"), "trip": _l("Trip"), "trip.title": _l("Trip"),
          "email": _l("E-mail"), "language": _l("Language"), "status": _l("Status"),
          "registrations": _l("Registrations"), "guests": _l("Guests"),
          "registration": _l("Registration"), "first_name": _l("First name"),
          "last_name": _l("Last name"), "age_category": _l("Age"),
          "document_type": _l("Document"), "document_number": _l("Document no."),
          "document_photo": _l("Photo"), "gdpr_consent": _l("GDPR consent"),
          "registration.email": _l("Registration e-mail"), "active": _l("Active"),
          "roles": _l("Roles"), "confirmed_at": _l("Confirmed (UTC)"),
          "create_datetime": _l("Created (UTC)"), "update_datetime": _l("Updated (UTC)"),
          "finished_at": _l("Finished (UTC)"), "actor": _l("Actor"), "via": _l("Via"),
          "action": _l("Action"), "year": _l("Year"), "month": _l("Month"),
          "format": _l("Format"), "target": _l("Target"), "rows": _l("Rows"),
          "bytes": _l("Size"), "outcome": _l("Outcome"), "message": _l("Message")}


class PhotosDeletedMixin:
    """A deleted guest's document photo is deleted too (:mod:`.registration.deletion`)."""

    def on_model_delete(self, model) -> None:
        super().on_model_delete(model)
        model.__dict__["_deleted_photos"] = photos_of(model)

    def after_model_delete(self, model) -> None:
        super().after_model_delete(model)
        failed = delete_unnamed_photos(model.__dict__.pop("_deleted_photos", []),
                                       current_app.config["UPLOAD_FOLDER"])
        if failed:
            current_app.logger.warning("document photos of deleted guests not deleted: %s",
                                       ", ".join(failed))
            flash(_("%(count)s document photo(s) of the deleted guests could not be deleted; "
                    "the server log names them: delete them from the upload folder by hand.",
                    count=len(failed)), "warning")


class TripView(PhotosDeletedMixin, SecureModelView):
    column_labels = LABELS
    column_list = ("id", "title", "start_date", "end_date", "max_guests", "created_at")
    column_searchable_list = ("title",)
    column_filters = ("start_date", "end_date", "max_guests", "created_at")
    column_default_sort = ("id", True)
    form_excluded_columns = ("registrations", "created_at")
    #: PostgreSQL's integer: a larger number is a form error, not a refused UPDATE
    form_args = {"max_guests": {"validators": [NumberRange(min=1, max=2**31 - 1)]}}


class RegistrationView(PhotosDeletedMixin, SecureModelView):
    column_list = ("id", "trip", "email", "language", "status", "created_at")
    column_searchable_list = ("email",)
    column_filters = ("trip.title", "language", "status", "created_at")
    column_default_sort = ("id", True)
    column_labels = LABELS
    column_choices = {"status": choices(REGISTRATION_STATUSES), "language": list(LANGUAGES.items())}
    form_excluded_columns = ("guests", "created_at")
    form_choices = column_choices


def _photo_link(view, context, model, name):
    if not model.document_photo:
        return ""
    return Markup('<a href="{}" target="_blank" rel="noopener">{}</a>').format(
        url_for(".photo", guest_id=model.id), _l("view")
    )


class GuestView(PhotosDeletedMixin, SecureModelView):
    column_list = ("id", "registration", "first_name", "last_name", "age_category",
                   "document_type", "document_number", "document_photo", "gdpr_consent",
                   "created_at")
    column_searchable_list = ("first_name", "last_name", "document_number")
    column_filters = ("age_category", "document_type", "gdpr_consent", "created_at",
                      "registration.email")
    column_default_sort = ("id", True)
    column_labels = LABELS
    column_choices = {"document_type": choices(DOCUMENT_TYPES),
                      "age_category": choices(AGE_CATEGORIES)}
    column_formatters = {"document_photo": _photo_link}
    column_formatters_detail = {"document_photo": _photo_link}
    form_excluded_columns = ("created_at", "document_photo")
    form_choices = column_choices

    @expose("/photo/<int:guest_id>")
    def photo(self, guest_id: int):
        """Serve one guest's document photo (admin-only through the view's access check)."""
        guest = db.session.get(Guest, guest_id)
        if guest is None or not guest.document_photo:
            abort(404)
        name = guest.document_photo
        if not PHOTO_NAME_RE.match(name):
            abort(404)
        response = send_from_directory(current_app.config["UPLOAD_FOLDER"], name,
                                       max_age=0, as_attachment=True)
        response.headers["Cache-Control"] = "no-store"
        # even opened in a tab, a (hostile) PDF or image runs no script and reaches nothing
        response.headers["Content-Security-Policy"] = "sandbox; default-src 'none'"
        # a guest's identity document left the system: accountable like an export
        audit.record(db.engine, "photo", "ok", actor=current_user.email, via="admin",
                     target=f"guest {guest_id}: {name}")
        return response


class UserView(SecureModelView):
    """Users are created with ``manage.py setup`` or ``manage.py users create``;
    here admins (de)activate them and assign roles."""

    can_create = False
    column_list = ("id", "email", "active", "roles", "create_datetime")
    #: never the password hash or the uniquifiers (they are what sessions and tokens
    #: are checked against): an explicit list, so new Flask-Security columns stay out
    column_details_list = ("id", "email", "active", "roles", "confirmed_at", "create_datetime",
                           "update_datetime")
    column_labels = LABELS
    column_searchable_list = ("email",)
    column_filters = ("active",)
    form_columns = ("email", "active", "roles")


class AuditLogView(SecureModelView):
    """Read-only: every export, preview, backup, verify, restore, download, delete
    and document-photo view; who, when, how it ended."""

    can_create = can_edit = can_delete = False
    column_default_sort = ("id", True)
    column_list = ("id", "created_at", "finished_at", "actor", "via", "action", "year", "month",
                   "format", "target", "rows", "bytes", "outcome", "message")
    column_labels = {**LABELS, "created_at": _l("Started (UTC)")}
    column_filters = ("action", "outcome", "actor", "via", "created_at")
    column_searchable_list = ("actor", "target")
    column_formatters = {"bytes": lambda v, c, m, n: "" if m.bytes is None else page_size(m.bytes),
                         "action": audit_label, "outcome": audit_label}
    column_formatters_detail = column_formatters


def build_admin(app: Flask) -> Admin:
    """Create this app's Admin with the core views plus the plugins' views."""
    admin = Admin(
        app,
        name=_l("Guest Registration"),
        theme=Bootstrap4Theme(fluid=True),  # the full width: wide lists, a one-line menu
        index_view=SecureIndexView(name=_l("Home"), url="/admin"),
        csp_nonce_generator=csp_nonce,
    )
    admin.add_view(TripView(Trip, db, name=_l("Trips")))
    admin.add_view(RegistrationView(Registration, db, name=_l("Registrations")))
    admin.add_view(GuestView(Guest, db, name=_l("Guests")))
    admin.add_view(UserView(User, db, name=_l("Users")))
    admin.add_view(AuditLogView(AuditEntry, db, name=_l("Audit log"), endpoint="audit_log",
                                url="audit"))
    for view in hook_items(app.extensions["plugin_manager"], "register_admin_views", app=app):
        admin.add_view(view)
    app.add_template_global(shows_admin_link)
    return admin
