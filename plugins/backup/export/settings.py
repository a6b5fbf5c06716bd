"""The plugin's whole-number settings that have a least value, checked when any
app of it starts (the plugin's ``init_app``), when the export blueprint is
registered and when ``export-guests`` runs: a value that cannot work stops
start-up in one line naming it, instead of every export going wrong or, for
retention, every archive but the newest being deleted (a keep of -1, which
restic spells "unlimited", removed them all)."""

from __future__ import annotations

from typing import Any, Mapping

from guest_registration.config_errors import ConfigError

#: each setting and the least value that works
MINIMUMS = {
    # rows per round trip: 0 would fetch nothing, an export of no rows
    "EXPORT_FETCH_ROWS": 1,
    # exports at once per process: 0 means no limit
    "EXPORT_MAX_CONCURRENT": 0,
    # retention: 0 keeps everything (for that rule)
    "BACKUP_KEEP": 0,
    "BACKUP_KEEP_DAILY": 0,
    "BACKUP_KEEP_WEEKLY": 0,
    "BACKUP_KEEP_MONTHLY": 0,
}


def _whole_number(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def check_settings(config: Mapping[str, Any]) -> None:
    """ConfigError naming the first EXPORT_* setting whose value cannot be used."""
    for name, least in MINIMUMS.items():
        value = config.get(name)
        number = _whole_number(value)
        if number is None or number < least:
            raise ConfigError(f"{name} must be a whole number of at least {least}, "
                              f"not {str(value)[:40]}")


__all__ = ["MINIMUMS", "check_settings"]
