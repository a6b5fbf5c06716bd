"""The backup plugin's errors: every message is safe to show to a user (no
password, no tool stderr, no stack trace); details go to the server log."""

from __future__ import annotations


class BackupError(RuntimeError):
    """A backup, verification or restore failed or was refused."""


class BackupBusy(BackupError):
    """Another backup is running."""


class EngineError(BackupError):
    """A database engine could not dump, check or restore."""


def shown_reason(exc: BaseException) -> str:
    """What a user may read of why something failed: a :class:`BackupError`'s own
    message (safe by this module's contract), else only the exception's type name
    (a driver's or tool's message may hold a password, a path or stderr)."""
    return str(exc) if isinstance(exc, BackupError) else type(exc).__name__
