"""The Flask-Admin pages of the Backup menu."""

from __future__ import annotations

from flask import current_app
from flask_admin import expose

from guest_registration.admin import SecureBaseView, SecureModelView


class BackupView(SecureBaseView):
    """Admin → Backup → System Backup."""

    @expose("/")
    def index(self):
        formats = list(current_app.extensions["export_formats"])
        return self.render("admin/backup/index.html", formats=formats)


class AuditLogView(SecureModelView):
    """Read-only list of exports and backups: who, when, what, outcome."""

    can_create = can_edit = can_delete = False
    column_default_sort = ("id", True)
    column_list = ("id", "created_at", "finished_at", "actor", "via", "action", "year", "month",
                   "format", "target", "rows", "bytes", "outcome", "message")
    column_filters = ("action", "outcome", "actor", "via", "created_at")
    column_searchable_list = ("actor", "target")
