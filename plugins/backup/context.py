"""Glue between the Flask app and the backup services: settings and the dumper
registry of one app (built once from the ``register_database_dumpers`` hook)."""

from __future__ import annotations

from flask import Flask

from guest_registration import __version__
from guest_registration.plugins import collect

from .dumpers import DatabaseDumper
from .service import BackupError, BackupSettings

EXTENSION = "database_dumpers"


def backup_settings(app: Flask) -> BackupSettings:
    c = app.config
    return BackupSettings(
        database_url=c["DATABASE_URL"], upload_folder=c["UPLOAD_FOLDER"],
        backup_folder=c["BACKUP_FOLDER"], app_version=__version__,
        pg_dump=c.get("PG_DUMP", "pg_dump"), psql=c.get("PSQL", "psql"),
        keep=int(c.get("BACKUP_KEEP", 0) or 0),
        compresslevel=int(c.get("BACKUP_COMPRESSLEVEL", 3)),
    )


def dumpers(app: Flask) -> dict[str, DatabaseDumper]:
    """Dialect name → dumper; two plugins claiming one dialect is an error naming both."""
    if EXTENSION not in app.extensions:
        registry: dict[str, DatabaseDumper] = {}
        owners: dict[str, str] = {}
        for plugin, dumper in collect(app.extensions["plugin_manager"], "register_database_dumpers"):
            if dumper.dialect in registry:
                raise RuntimeError(f"database dumper for {dumper.dialect!r} is registered by both "
                                   f"plugin {owners[dumper.dialect]!r} and plugin {plugin!r}")
            registry[dumper.dialect] = dumper
            owners[dumper.dialect] = plugin
        app.extensions[EXTENSION] = registry
    return app.extensions[EXTENSION]


def dumper_for(app: Flask, dialect: str) -> DatabaseDumper:
    try:
        return dumpers(app)[dialect]
    except KeyError:
        raise BackupError(f"no database dumper is installed for {dialect!r}") from None
