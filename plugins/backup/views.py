"""The Flask-Admin Backup page (Admin → Backup → System Backup)."""

from __future__ import annotations

from flask import current_app
from flask_admin import expose

from guest_registration.admin import SecureBaseView


class BackupView(SecureBaseView):
    @expose("/")
    def index(self):
        formats = list(current_app.extensions["export_formats"])
        return self.render("admin/backup/index.html", formats=formats)
