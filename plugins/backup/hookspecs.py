"""The backup plugin's own contract: the hooks *it* calls, published through the
host's ``add_hookspecs`` hook (as pytest plugins publish theirs with
``pytest_addhooks``).

Implement them with ``guest_registration.hookimpl`` in any plugin, exactly like
the host's hooks; they are validated at start-up (a misspelled name fails
``check_pending``) and called through ``pm.hook`` in the host's call order.

Signing and age encryption are built into every archive (not hooks: an
archive that a disabled plugin could leave unsigned would defeat them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from guest_registration import hookspec

if TYPE_CHECKING:  # pragma: no cover
    from guest_backup.engines import DatabaseEngine
    from guest_backup.storages import StorageType


@hookspec
def register_database_engines() -> "Iterable[DatabaseEngine] | None":
    """Return :class:`guest_backup.engines.DatabaseEngine` objects, one per
    database engine.

    An engine's ``dialect`` is the SQLAlchemy dialect name (``"postgresql"``,
    ``"sqlite"``, ...); the export reads its snapshot and timestamps through it,
    the system backup dumps, checks and restores with it. Two engines for one
    dialect are a start-up error naming both plugins.
    """


@hookspec
def register_storage_types() -> "Iterable[StorageType] | None":
    """Return :class:`guest_backup.storages.StorageType` objects: kinds of
    place that hold remote copies of archives.

    A type's ``scheme`` is matched against ``BACKUP_REMOTE_URL``
    (``s3://bucket/prefix``: the built-in ``s3`` type; ``file:///mnt/nas``: the
    built-in ``file`` type); ``open(url, config)`` returns the
    :class:`~guest_backup.storages.Storage` (``list``, ``upload``, ``open``,
    ``read_sidecar``, ``delete``). Two types for one scheme are a start-up
    error naming both plugins.
    """
