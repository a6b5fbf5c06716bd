"""Glue between one Flask app and the backup services: the app's settings, its
registry of database engines and of storage types (built once at start-up from
the ``register_database_engines`` and ``register_storage_types`` hooks; two for
one dialect or scheme stop start-up), and its storages."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from flask import Flask, current_app

from guest_registration import __version__
from guest_registration.plugins import DuplicateNameError, unique_items
from guest_registration.redis_link import redis_client, redis_key

from .engines import DatabaseEngine
from .errors import BackupError
from .settings import BackupSettings
from .locks import BackupLock, RedisBackupLock
from .slots import FileSlots, RedisSlots
from .storages import Storage, StorageError, StorageType
from .storages.local import LocalStorage

EXTENSION = "backup"


@dataclass
class BackupContext:
    """What the backup services need from one app."""

    app: Flask
    engines: dict[str, DatabaseEngine]
    storage_types: dict[str, StorageType] = field(default_factory=dict)
    _remote: tuple[str, Storage] | None = None

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
    def export_slots(self) -> FileSlots | RedisSlots:
        """EXPORT_MAX_CONCURRENT's slots, shared by every process (Redis when
        REDIS_URL is set, else file locks in the instance folder)."""
        client = redis_client(self.app)
        if client is not None:
            return RedisSlots(client, redis_key(self.app, "export-slots"))
        return FileSlots(Path(self.app.instance_path) / "export-slots")

    def lock(self) -> BackupLock | RedisBackupLock:
        """The one-backup-at-a-time lock (not taken yet): in Redis when REDIS_URL is
        set, else a file lock in BACKUP_FOLDER."""
        client = redis_client(self.app)
        if client is not None:
            return RedisBackupLock(client, redis_key(self.app, "backup-lock"))
        return BackupLock(self.settings.backup_folder)

    def local(self) -> LocalStorage:
        return LocalStorage(self.settings.backup_folder)

    def remote(self) -> Storage | None:
        """The storage of BACKUP_REMOTE_URL (built once per URL), or None."""
        url = self.settings.remote_url
        if not url:
            return None
        if self._remote is None or self._remote[0] != url:
            scheme = urlparse(url).scheme
            kind = self.storage_types.get(scheme)
            if kind is None:
                raise StorageError(f"BACKUP_REMOTE_URL: no storage type for {scheme or url!r} "
                                   f"(installed: {', '.join(self.storage_types) or 'none'})")
            self._remote = (url, kind.open(url, self.app.config))
        return self._remote[1]

    def storages(self) -> list[Storage]:
        """The local folder, then the remote copy if one is configured."""
        remote = self.remote()
        return [self.local()] + ([remote] if remote is not None else [])


class DuplicateEngineError(DuplicateNameError):
    """Two plugins contribute an engine for the same dialect (or a storage type
    for the same scheme)."""


def init_app(app: Flask) -> None:
    pm = app.extensions["plugin_manager"]
    engines = unique_items(pm, "register_database_engines", kind="database engine",
                           key=lambda e: e.dialect, error=DuplicateEngineError)
    storage_types = unique_items(pm, "register_storage_types", kind="storage type",
                                 key=lambda t: t.scheme, error=DuplicateEngineError)
    app.extensions[EXTENSION] = BackupContext(app, engines, storage_types)


def backup_context(app: Flask | None = None) -> BackupContext:
    return (app or current_app).extensions[EXTENSION]
