"""What the backup operations need from one installation, as plain values and
callables: its settings (read from the app's config mapping each time, so tests
and operators may change them), its database engines and storage types, the
audit writer, and the shared services (Redis when configured, else files).

No Flask here: :mod:`guest_backup.wiring` builds this from an app.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlparse

from guest_backup.engines import DatabaseEngine
from guest_backup.errors import BackupError
from guest_backup.ops.audit import AuditLog
from guest_backup.ops.locks import BackupLock, RedisBackupLock
from guest_backup.ops.schema import MigrationPaths
from guest_backup.ops.settings import BackupSettings
from guest_backup.ops.slots import FileSlots, RedisSlots
from guest_backup.storages import Storage, StorageError, StorageType
from guest_backup.storages.local import LocalStorage


def _no_redis() -> None:
    return None


@dataclass
class BackupContext:
    """What the backup services need from one installation."""

    config: Mapping[str, Any]
    app_version: str
    instance_path: str
    engines: dict[str, DatabaseEngine]
    storage_types: dict[str, StorageType]
    audit: AuditLog
    #: the Redis client when REDIS_URL is set, else None
    redis: Callable[[], Any] = _no_redis
    #: a Redis key of this installation (REDIS_PREFIX + name)
    redis_key: Callable[[str], str] = lambda name: name
    #: where the schema's history lives (the host's and every plugin's revisions)
    migrations: Callable[[], MigrationPaths] | None = None
    _remote: tuple[str, Storage] | None = field(default=None, repr=False)

    @property
    def settings(self) -> BackupSettings:
        return BackupSettings.from_config(self.config, self.app_version)

    def engine_for(self, dialect: str, required: bool = True) -> DatabaseEngine | None:
        """The installed engine of a SQLAlchemy dialect (the one look-up of it);
        without one, a BackupError, or None when not ``required`` (the export then
        reads through SQLAlchemy alone)."""
        engine = self.engines.get(dialect)
        if engine is None and required:
            raise BackupError(f"no database engine is installed for {dialect!r}")
        return engine

    def storage_type(self, scheme: str, setting: str = "") -> StorageType:
        """The installed storage type of a URL scheme (the one look-up of it)."""
        kind = self.storage_types.get(scheme)
        if kind is None:
            prefix = f"{setting}: " if setting else ""
            raise StorageError(f"{prefix}no storage type for {scheme + '://' if scheme else '?'} "
                               f"(installed: {', '.join(self.storage_types) or 'none'})")
        return kind

    def open_storage(self, url: str, setting: str = "") -> Storage:
        return self.storage_type(urlparse(url).scheme, setting).open(url, self.config)

    @property
    def export_slots(self) -> FileSlots | RedisSlots:
        """EXPORT_MAX_CONCURRENT's slots, shared by every process."""
        return shared(self, lambda c: RedisSlots(c, self.redis_key("export-slots")),
                      lambda: FileSlots(Path(self.instance_path) / "export-slots"))

    def lock(self) -> BackupLock | RedisBackupLock:
        """The one-backup-at-a-time lock (not taken yet)."""
        return shared(self, lambda c: RedisBackupLock(c, self.redis_key("backup-lock"),
                                                      self.settings.backup_folder),
                      lambda: BackupLock(self.settings.backup_folder))

    def local(self) -> LocalStorage:
        return LocalStorage(self.settings.backup_folder)

    def remote(self) -> Storage | None:
        """The storage of BACKUP_REMOTE_URL (built once per URL), or None."""
        url = self.settings.remote_url
        if not url:
            return None
        if self._remote is None or self._remote[0] != url:
            self._remote = (url, self.open_storage(url, "BACKUP_REMOTE_URL"))
        return self._remote[1]

    def storages(self) -> list[Storage]:
        """The local folder, then the remote copy if one is configured."""
        remote = self.remote()
        return [self.local()] + ([remote] if remote is not None else [])


def shared(ctx: BackupContext, with_redis: Callable[[Any], Any], embedded: Callable[[], Any]):
    """The one "Redis if configured, else files" choice: ``with_redis(client)``
    when REDIS_URL is set, else ``embedded()``."""
    client = ctx.redis()
    return with_redis(client) if client is not None else embedded()
