"""One owner for how times are written beside the archives: ``2025-06-01T02:00:00Z``,
UTC (``archive.manifest.format_time`` / ``parse_time`` / ``now_text``). Job states,
the ledger, browse sessions, health, the API and pgBackRest's times all use it; a
time that carries another zone is converted, never written as its wall clock with
a ``Z``."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from guest_backup.archive.manifest import TIME_FORMAT, format_time, now_text, parse_time

PLUGIN = Path(__file__).resolve().parent.parent / "plugins" / "backup"


def test_a_time_in_another_zone_is_written_in_utc():
    berlin = timezone(timedelta(hours=1))
    assert format_time(datetime(2025, 6, 1, 3, 0, 0, tzinfo=berlin)) == "2025-06-01T02:00:00Z"
    assert format_time(datetime(2025, 6, 1, 2, 0, 0)) == "2025-06-01T02:00:00Z"  # naive: UTC
    assert format_time(None) is None


def test_what_is_written_reads_back_as_the_same_moment():
    when = datetime(2025, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-5)))
    assert parse_time(format_time(when)) == when
    now = parse_time(now_text())
    assert now is not None and abs(datetime.now(timezone.utc) - now) < timedelta(seconds=5)
    assert parse_time("2025-06-01T02:00:00+00:00") is None  # not the written form


def test_no_other_module_spells_the_format_out():
    """It was written out in 16 other modules; each was a chance to drop the conversion."""
    spelled = [str(path.relative_to(PLUGIN)) for path in PLUGIN.rglob("*.py")
               if f'"{TIME_FORMAT}"' in path.read_text()]
    assert spelled == ["archive/manifest.py"], spelled
