"""The backup plugin: the Backup admin pages, the monthly guest export API and the
backup commands. Hook implementations only; the work is in the sibling modules."""

from __future__ import annotations

from guest_registration import hookimpl

from . import audit as _audit  # noqa: F401  (registers the audit_log table with the models)


@hookimpl
def register_admin_views(app):
    from .views import AuditLogView, BackupView

    return [
        BackupView(name="System Backup", category="Backup", endpoint="backup", url="backup"),
        AuditLogView(_audit.AuditEntry, _db(), name="Audit log", category="Backup",
                     endpoint="audit_log", url="backup/audit"),
    ]


@hookimpl
def register_blueprints(app):
    from .api import bp

    return [bp]


@hookimpl
def register_commands(cli):
    from .cli import export_guests_command

    cli.add_command(export_guests_command)


def _db():
    from guest_registration.extensions import db

    return db
