"""The backup plugin: the Backup admin pages, the monthly guest export API, the
backup commands, the built-in database dumpers and the backup status lines.
Hook implementations only; the work is in the sibling modules."""

from __future__ import annotations

from guest_registration import hookimpl

from . import audit as _audit  # noqa: F401  (registers the audit_log table with the models)


@hookimpl
def register_admin_views(app):
    from guest_registration.extensions import db

    from .views import AuditLogView, BackupView

    return [
        BackupView(name="System Backup", category="Backup", endpoint="backup", url="backup"),
        AuditLogView(_audit.AuditEntry, db, name="Audit log", category="Backup",
                     endpoint="audit_log", url="backup/audit"),
    ]


@hookimpl
def register_blueprints(app):
    from .api import bp

    return [bp]


@hookimpl
def register_commands(cli):
    from .cli import COMMANDS

    for command in COMMANDS:
        cli.add_command(command)


@hookimpl
def register_database_dumpers():
    from .dumpers import PostgresDumper, SQLiteDumper

    return [PostgresDumper(), SQLiteDumper()]


@hookimpl
def report_status(app):
    from .status import backup_status

    return backup_status(app)
