"""The one place that binds a Flask app to the backup services: it builds the
app's :class:`~guest_backup.ops.context.BackupContext` at start-up (engines and
storage types from the plugin hooks, two for one dialect or scheme stop
start-up; the host's audit writer; Redis when configured) and finds it again
for views and commands. Everything below it (ops, archive, engines, storages)
is plain Python that never imports Flask or the host.
"""

from __future__ import annotations

import os

from flask import Flask, current_app

from guest_backup.ops import metrics
from guest_backup.ops.context import BackupContext
from guest_backup.ops.schema import MigrationPaths
from guest_backup.ops.settings import check_durations
from guest_backup.storages import StorageError, check_remote_url

EXTENSION = "backup"


def init_app(app: Flask) -> None:
    from guest_registration import __version__, audit
    from guest_registration.config_errors import ConfigError
    from guest_registration.instance_folder import SETUP_FOLDERS
    from guest_registration.metrics import metric
    from guest_registration.plugins import DuplicateNameError, unique_items
    from guest_registration.redis_link import redis_client, redis_key

    try:  # a duration that cannot be read, or credentials in BACKUP_REMOTE_URL (shown
        # wherever the storage is named), stop every command and the app in one line
        check_durations(app.config)
        check_remote_url(str(app.config.get("BACKUP_REMOTE_URL") or ""))
    except (ValueError, StorageError) as exc:
        raise ConfigError(str(exc)) from None
    metrics.use(metric)  # the backup's counters in the host's one metric cache
    pm = app.extensions["plugin_manager"]
    engines = unique_items(pm, "register_database_engines", kind="database engine",
                           key=lambda e: e.dialect, error=DuplicateNameError)
    storage_types = unique_items(pm, "register_storage_types", kind="storage type",
                                 key=lambda t: t.scheme, error=DuplicateNameError)
    app.extensions[EXTENSION] = BackupContext(
        config=app.config, app_version=__version__, instance_path=app.instance_path,
        engines=engines, storage_types=storage_types, audit=audit,
        redis=lambda: redis_client(app), redis_key=lambda name: redis_key(app, name),
        migrations=lambda: migration_paths(app))
    # `setup` run as root gives the backup folder it makes to the service's user
    app.extensions.setdefault(SETUP_FOLDERS, []).append("BACKUP_FOLDER")
    _audit_labels(app)


def _audit_labels(app: Flask) -> None:
    """The audit log's codes in words (the host's Audit log shows them, translated when
    shown; it names none of the actions itself): the same words as the Backup page's
    Recent activity. English message ids here, so that no command imports Babel."""
    from guest_backup.ops.page_texts import N_
    from guest_registration.i18n import AUDIT_LABELS

    labels = app.extensions.setdefault(AUDIT_LABELS, {})
    labels.setdefault("outcome", {}).update({
        "ok": N_("ok"), "failed": N_("failed"), "aborted": N_("aborted"),
        "running": N_("running")})
    labels.setdefault("action", {}).update({
        "export": N_("export"), "preview": N_("preview"), "backup": N_("backup"),
        "verify": N_("verify"), "restore": N_("restore"), "restore-test": N_("restore drill"),
        "download": N_("download"), "delete": N_("delete"), "photo": N_("document photo"),
        "prune": N_("prune"), "upload": N_("upload"), "erase": N_("erasure"),
        "subject-access": N_("access request"), "pitr-backup": N_("PITR backup"),
        "pitr-restore": N_("PITR recovery"), "pitr-drill": N_("PITR drill"),
        "browse": N_("browse archive"), "restore-select": N_("selective restore")})


def migration_paths(app: Flask) -> MigrationPaths:
    """The host's history with every plugin's branch (and those remembered)."""
    from guest_registration import schema

    with app.app_context():
        return MigrationPaths(str(schema.MIGRATIONS), tuple(schema.version_locations(app)),
                              heads_cache=os.path.join(app.instance_path, "schema-heads.json"))


def backup_context(app: Flask | None = None) -> BackupContext:
    """The backup services of ``app`` (default: the current app)."""
    return (app or current_app).extensions[EXTENSION]

