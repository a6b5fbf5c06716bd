"""The backup plugin: the Backup admin page (with its own message catalogue in
``translations/``), the monthly guest export API, the backup commands, its
settings and status lines, its own hooks (database
engines, storage types), the built-in PostgreSQL and SQLite engines and the
built-in file and S3 storage types.

Hook implementations only; the work is in the sibling modules.
"""

from __future__ import annotations

import logging

from guest_registration import hookimpl


@hookimpl
def add_hookspecs(pluginmanager):
    from guest_backup import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


@hookimpl
def register_settings(instance_path):
    from guest_backup.ops.settings import defaults

    return defaults(instance_path)


@hookimpl
def register_translations():
    from pathlib import Path

    from guest_registration.i18n import Catalog

    return [Catalog(Path(__file__).resolve().parent / "translations", "backup")]


@hookimpl
def init_app(app):
    from guest_registration.extensions import database_engine
    from guest_registration.metrics import COLLECTORS

    from guest_backup.ops.metrics import BackupCollector
    from guest_backup.wiring import backup_context, init_app as init_backup

    def list_everywhere(ctx):  # imported on the first scrape, not by every command
        from guest_backup.ops.listing import list_everywhere

        return list_everywhere(ctx)

    from guest_backup.export.settings import check_settings

    check_settings(app.config)  # every command and the web app: one line, not empty exports
    init_backup(app)
    app.extensions.setdefault(COLLECTORS, []).append(  # /metrics: the backups' values
        BackupCollector(backup_context(app), database_engine, list_everywhere))


@hookimpl
def register_database_engines():
    from guest_backup.engines.postgresql import PostgresEngine
    from guest_backup.engines.sqlite import SQLiteEngine

    return [PostgresEngine(), SQLiteEngine()]


@hookimpl
def register_storage_types():
    from guest_backup.storages.local import FileStorageType
    from guest_backup.storages.s3 import S3StorageType

    return [FileStorageType(), S3StorageType()]


@hookimpl
def register_admin_views(app):
    from flask_babel import lazy_gettext as _l

    from guest_backup.ops.browse import reap
    from guest_backup.web.browse import BrowseView
    from guest_backup.web.pitr import PitrView
    from guest_backup.web.rights import RightsView
    from guest_backup.web.views import BackupView
    from guest_backup.wiring import backup_context

    try:  # scratch copies left idle while the app was down
        reap(backup_context(app))
    except Exception as exc:  # the pages must come up all the same; the next open reaps
        logging.getLogger(__name__).warning(
            "browse sessions could not be reaped at start (%s)", type(exc).__name__)
    return [BackupView(name=_l("System Backup"), category=_l("Backup"), endpoint="backup",
                       url="backup"),
            BrowseView(name=_l("Restore a selection"), category=_l("Backup"),
                       endpoint="backup_browse", url="backup/browse"),
            RightsView(name=_l("Guests' rights"), category=_l("Backup"), endpoint="guest_rights",
                       url="rights"),
            PitrView(name=_l("Point-in-time recovery"), category=_l("Backup"), endpoint="pitr",
                     url="pitr")]


@hookimpl
def register_blueprints(app):
    from guest_backup.export.api import bp
    from guest_backup.web import api, openapi
    from guest_backup.web.views import templates

    return [bp, api.bp, openapi.bp, templates]


@hookimpl
def register_commands():
    from guest_backup.cli import backup, browse, notify, pitr, restore, rights, select
    from guest_backup.export import cli as export_cli

    return (backup.COMMANDS + restore.COMMANDS + export_cli.COMMANDS + rights.COMMANDS
            + notify.COMMANDS + pitr.COMMANDS + browse.COMMANDS + select.COMMANDS)


@hookimpl
def register_migrations():
    from pathlib import Path

    return [str(Path(__file__).resolve().parent / "migrations" / "versions")]


@hookimpl
def register_job_functions():
    from guest_backup.tasks import run_queued_backup, run_queued_drill, run_queued_pitr_backup

    return [run_queued_backup, run_queued_drill, run_queued_pitr_backup]


@hookimpl
def setup_app(app):
    from pathlib import Path

    from guest_backup.ops.folders import prepare_backup_folder
    from guest_backup.wiring import backup_context
    from guest_registration.config import refuse_shared_folder

    settings = backup_context(app).settings
    refuse_shared_folder(Path(settings.backup_folder), "BACKUP_FOLDER")  # /tmp: not ours
    return prepare_backup_folder(settings)


@hookimpl
def report_status(app):
    from guest_backup.cli.status import backup_status

    return backup_status(app)
