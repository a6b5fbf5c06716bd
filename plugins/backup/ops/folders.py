"""What ``setup`` prepares for backups (the folder, the signing key and, on
PostgreSQL, the role restores load dumps as), and the clean-up of half-written
archives left by a killed process."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from guest_backup.archive.format import remove_partials
from guest_backup.errors import BackupError, EngineError
from guest_backup.ops.settings import BackupSettings

if TYPE_CHECKING:  # pragma: no cover
    from guest_backup.ops.context import BackupContext


def prepare_backup_folder(settings: BackupSettings) -> list[str]:
    """Create the backup folder, readable by this user only (archives hold guest
    data), and the signing key, whose public half the operator should note; on
    PostgreSQL create or check the restore role. (``setup`` refuses a shared
    BACKUP_FOLDER before this, with the host's check: see ``setup_app``.)"""
    folder = Path(settings.backup_folder)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    return [f"folder ready: {folder}",
            f"backup signing key ready: {settings.signer().public_key} (note it with your "
            f"recovery notes)",
            f"installation id: {settings.installation()}", *restore_role_lines(settings)]


def restore_role_lines(settings: BackupSettings) -> list[str]:
    """On PostgreSQL, the restore role (RESTORE_DATABASE_ROLE) created or checked;
    when this database user may not create it, a line saying what to do (restores
    refuse to run until then), not a failure of ``setup``."""
    from sqlalchemy.engine import make_url

    if make_url(settings.database_url).get_backend_name() != "postgresql":
        return []
    from guest_backup.engines.pgrole import prepare_restore_role

    try:
        return [prepare_restore_role(settings.database_url, settings.restore_role)]
    except EngineError as exc:
        return [f"restore role NOT ready: {exc}"]


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
