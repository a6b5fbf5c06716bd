"""The Flask-Admin panel: secured base views, the core model views, and the
``Admin`` built per app from the views the plugins contribute."""

from __future__ import annotations

import re
from typing import Any

from flask import Flask, abort, current_app, redirect, request, send_from_directory, url_for
from flask_admin import Admin, AdminIndexView, BaseView, expose
from flask_admin.contrib.sqla import ModelView
from flask_admin.theme import Bootstrap4Theme
from flask_security import current_user
from flask_wtf import FlaskForm
from markupsafe import Markup

from .extensions import db
from .models import Guest, Registration, Trip, User
from .plugins import collect

#: Stored guest-photo names: ``<uuid4>.<ext>``; nothing else is ever served.
PHOTO_NAME_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.(jpg|png|pdf)$")


def is_admin() -> bool:
    return bool(current_user.is_authenticated and current_user.active
                and current_user.has_role("admin"))


class AdminOnlyMixin:
    """Admins only: anonymous visitors go to the login page, others get 403."""

    def is_accessible(self) -> bool:
        return is_admin()

    def inaccessible_callback(self, name: str, **kwargs: Any):
        if current_user.is_authenticated:
            abort(403)
        return redirect(url_for("security.login", next=request.full_path.rstrip("?")))


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


class SecureModelView(AdminOnlyMixin, ModelView):
    """Base for model views: admin-only, CSRF-checked forms (create, edit, delete, actions)."""

    form_base_class = CSRFAdminForm
    list_template = "admin/model/list_responsive.html"
    page_size = 50
    can_view_details = True


class TripView(SecureModelView):
    column_list = ("id", "title", "start_date", "end_date", "max_guests", "created_at")
    column_searchable_list = ("title",)
    column_filters = ("start_date", "end_date", "max_guests", "created_at")
    column_default_sort = ("id", True)
    form_excluded_columns = ("registrations", "created_at")


class RegistrationView(SecureModelView):
    column_list = ("id", "trip", "email", "language", "status", "created_at")
    column_searchable_list = ("email",)
    column_filters = ("trip.title", "language", "status", "created_at")
    column_default_sort = ("id", True)
    form_excluded_columns = ("guests", "created_at")
    form_choices = {
        "status": [("pending", "pending"), ("approved", "approved"), ("rejected", "rejected")],
    }


def _photo_link(view, context, model, name):
    if not model.document_photo:
        return ""
    return Markup('<a href="{}" target="_blank" rel="noopener">view</a>').format(
        url_for(".photo", guest_id=model.id)
    )


class GuestView(SecureModelView):
    column_list = ("id", "registration", "first_name", "last_name", "age_category",
                   "document_type", "document_number", "document_photo", "gdpr_consent",
                   "created_at")
    column_searchable_list = ("first_name", "last_name", "document_number")
    column_filters = ("age_category", "document_type", "gdpr_consent", "created_at",
                      "registration.email")
    column_default_sort = ("id", True)
    column_labels = {"registration": "Registration", "first_name": "First name",
                     "last_name": "Last name", "age_category": "Age", "document_type": "Document",
                     "document_number": "Document no.", "document_photo": "Photo",
                     "gdpr_consent": "GDPR consent", "created_at": "Created (UTC)",
                     "registration.email": "Registration e-mail"}
    column_choices = {"document_type": [("passport", "passport"), ("id_card", "ID card"),
                                        ("driving_license", "driving licence")]}
    column_formatters = {"document_photo": _photo_link}
    column_formatters_detail = {"document_photo": _photo_link}
    form_excluded_columns = ("created_at", "document_photo")
    form_choices = {
        "age_category": [("adult", "adult"), ("child", "child")],
        "document_type": [("passport", "passport"), ("id_card", "ID card"),
                          ("driving_license", "driving license")],
    }

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
                                       max_age=0)
        response.headers["Cache-Control"] = "no-store"
        return response


class UserView(SecureModelView):
    """Users are created with ``manage.py setup`` or ``manage.py users create``;
    here admins (de)activate them and assign roles."""

    can_create = False
    column_list = ("id", "email", "active", "roles", "create_datetime")
    column_searchable_list = ("email",)
    column_filters = ("active",)
    form_columns = ("email", "active", "roles")


def build_admin(app: Flask) -> Admin:
    """Create this app's Admin with the core views plus the plugins' views."""
    admin = Admin(
        app,
        name="Guest Registration",
        theme=Bootstrap4Theme(),
        index_view=SecureIndexView(name="Home", url="/admin"),
    )
    admin.add_view(TripView(Trip, db, name="Trips"))
    admin.add_view(RegistrationView(Registration, db, name="Registrations"))
    admin.add_view(GuestView(Guest, db, name="Guests"))
    admin.add_view(UserView(User, db, name="Users"))
    for _plugin, view in collect(app.extensions["plugin_manager"], "register_admin_views", app=app):
        admin.add_view(view)
    return admin
