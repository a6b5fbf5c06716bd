"""The backup plugin's own contract: the hooks *it* calls, published through the
host's ``add_hookspecs`` hook (as pytest plugins publish theirs with
``pytest_addhooks``).

Implement them with ``guest_registration.hookimpl`` in any plugin, exactly like
the host's hooks; they are validated at start-up (a misspelled name fails
``check_pending``) and called through ``pm.hook`` in the host's call order.

The hooks to come with the next features follow the same pattern: storages
(local folder, S3-compatible) and archive transforms (signing, encryption).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from guest_registration import hookspec

if TYPE_CHECKING:  # pragma: no cover
    from .engines import DatabaseEngine


@hookspec
def register_database_engines() -> "Iterable[DatabaseEngine] | None":
    """Return :class:`plugins.backup.engines.DatabaseEngine` objects, one per
    database engine.

    An engine's ``dialect`` is the SQLAlchemy dialect name (``"postgresql"``,
    ``"sqlite"``, ...); the export reads its snapshot and timestamps through it,
    the system backup dumps, checks and restores with it. Two engines for one
    dialect are a start-up error naming both plugins.
    """
