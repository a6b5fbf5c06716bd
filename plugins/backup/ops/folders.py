"""What ``setup`` prepares for backups (the folder and the signing key), and the
clean-up of half-written archives left by a killed process."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from guest_backup.archive.format import remove_partials
from guest_backup.errors import BackupError
from guest_backup.ops.settings import BackupSettings

if TYPE_CHECKING:  # pragma: no cover
    from guest_backup.ops.context import BackupContext


def prepare_backup_folder(settings: BackupSettings) -> list[str]:
    """Create the backup folder, readable by this user only (archives hold guest
    data), and the signing key, whose public half the operator should note."""
    folder = Path(settings.backup_folder)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    return [f"folder ready: {folder}",
            f"backup signing key ready: {settings.signer().public_key} (note it with your "
            f"recovery notes)",
            f"installation id: {settings.installation()}"]


def clean_partials(ctx: "BackupContext") -> int:
    """Remove half-written archives left by a killed process, unless a backup is
    running (the installation's backup lock: in Redis when configured, so a backup
    running in a worker is never cut short)."""
    folder = Path(ctx.settings.backup_folder)
    if not folder.is_dir():
        return 0
    try:
        with ctx.lock():
            return remove_partials(folder)
    except BackupError:  # busy, or a folder we cannot write: nothing to clean now
        return 0
