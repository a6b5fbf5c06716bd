"""What ``manage.py setup`` prepares for backups: the folder and the signing key."""

from __future__ import annotations

import os
from pathlib import Path

from flask import Flask

from .context import backup_context


def prepare_backup_folder(app: Flask) -> list[str]:
    """Create the backup folder, readable by this user only (archives hold guest
    data), and the signing key, whose public half the operator should note."""
    settings = backup_context(app).settings
    folder = Path(settings.backup_folder)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    return [f"folder ready: {folder}",
            f"backup signing key ready: {settings.signer().public_key} (note it with your "
            f"recovery notes)"]
