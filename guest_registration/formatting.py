"""How values are shown to people, in one place: sizes in binary units (KiB,
MiB, GiB: powers of 1024, named as such), timestamps to the second, booleans as
Yes/No. Pages, commands and ``status`` all use these."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_size(n: int | float | None) -> str:
    """``532 B``, ``7.2 KiB``, ``1.0 MiB``: binary units with one decimal."""
    n = float(n or 0)
    for unit in _UNITS:
        if abs(n) < 1024 or unit == _UNITS[-1]:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def timestamp(value: datetime | date | None) -> str:
    """``2025-06-23 14:30:00``: to the second, no microseconds, no time zone suffix."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return value.isoformat()


def yes_no(value: Any) -> str:
    return "" if value is None else ("Yes" if value else "No")
