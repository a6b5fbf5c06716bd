"""Glue between one Flask app and the backup services: the app's settings and
its registry of database engines (built once at start-up from the
``register_database_engines`` hook; two engines for one dialect stop start-up)."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app

from guest_registration import __version__
from guest_registration.plugins import DuplicateNameError, unique_items

from .engines import DatabaseEngine
from .errors import BackupError
from .settings import BackupSettings

EXTENSION = "backup"


@dataclass
class BackupContext:
    """What the backup services need from one app."""

    app: Flask
    engines: dict[str, DatabaseEngine]

    @property
    def settings(self) -> BackupSettings:
        """Read from the app's config each time (tests and operators may change it)."""
        return BackupSettings.from_config(self.app.config, __version__)

    def engine_for(self, dialect: str) -> DatabaseEngine:
        try:
            return self.engines[dialect]
        except KeyError:
            raise BackupError(f"no database engine is installed for {dialect!r}") from None

    @property
    def db_engine(self):
        """The app's SQLAlchemy engine."""
        from guest_registration.extensions import db

        with self.app.app_context():
            return db.engine


class DuplicateEngineError(DuplicateNameError):
    """Two plugins contribute an engine for the same dialect."""


def init_app(app: Flask) -> None:
    engines = unique_items(app.extensions["plugin_manager"], "register_database_engines",
                           kind="database engine", key=lambda e: e.dialect,
                           error=DuplicateEngineError)
    app.extensions[EXTENSION] = BackupContext(app, engines)


def backup_context(app: Flask | None = None) -> BackupContext:
    return (app or current_app).extensions[EXTENSION]
