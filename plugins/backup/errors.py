"""The backup plugin's errors: every message is safe to show to a user (no
password, no tool stderr, no stack trace); details go to the server log."""

from __future__ import annotations


class BackupError(RuntimeError):
    """A backup, verification or restore failed or was refused."""


class BackupBusy(BackupError):
    """Another backup is running."""


class EngineError(BackupError):
    """A database engine could not dump, check or restore."""
