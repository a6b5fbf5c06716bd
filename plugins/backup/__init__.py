"""The backup plugin: the Backup admin page (with its own message catalogue in
``translations/``), the monthly guest export API, the backup commands, its
settings and status lines, its own hooks (database
engines, storage types), the built-in PostgreSQL and SQLite engines and the
built-in file and S3 storage types.

Hook implementations only; the work is in the sibling modules.
"""

from __future__ import annotations

from guest_registration import hookimpl


@hookimpl
def add_hookspecs(pluginmanager):
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


@hookimpl
def register_settings(instance_path):
    from .settings import defaults

    return defaults(instance_path)


@hookimpl
def register_translations():
    from pathlib import Path

    from guest_registration.i18n import Catalog

    return [Catalog(Path(__file__).resolve().parent / "translations", "backup")]


@hookimpl
def init_app(app):
    from .context import init_app as init_backup

    init_backup(app)


@hookimpl
def register_database_engines():
    from .engines.postgresql import PostgresEngine
    from .engines.sqlite import SQLiteEngine

    return [PostgresEngine(), SQLiteEngine()]


@hookimpl
def register_storage_types():
    from .storages.local import FileStorageType
    from .storages.s3 import S3StorageType

    return [FileStorageType(), S3StorageType()]


@hookimpl
def register_admin_views(app):
    from flask_babel import lazy_gettext as _l

    from .views import BackupView

    return [BackupView(name=_l("System Backup"), category=_l("Backup"), endpoint="backup",
                       url="backup")]


@hookimpl
def register_blueprints(app):
    from .api import bp

    return [bp]


@hookimpl
def register_commands():
    from . import cli, cli_restore

    return cli.COMMANDS + cli_restore.COMMANDS


@hookimpl
def setup_app(app):
    from .folders import prepare_backup_folder

    return prepare_backup_folder(app)


@hookimpl
def report_status(app):
    from .status import backup_status

    return backup_status(app)
