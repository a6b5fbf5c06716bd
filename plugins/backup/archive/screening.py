"""A dump member fed to its engine's screen as it is read (``verify`` of an
encrypted archive, whose dump is checked in the same pass that decrypts it)."""

from __future__ import annotations

from typing import Mapping

from guest_backup.archive.format import DATABASE_MEMBER
from guest_backup.archive.zipstream import Member
from guest_backup.errors import EngineError


def screen_dump(member: Member, engines: Mapping | None,
                engine_name: str | None) -> tuple[str, list[str]]:
    """The engine's name and the screen's problems with the dump ``member`` (read to
    its end, or skipped). The engine is the one the seal names, or (a first-version
    archive, whose manifest comes after the dump) the one its first bytes show,
    checked against the manifest afterwards."""
    first = member.read()
    name = engine_name or ("postgresql" if b"PostgreSQL database dump" in first[:4096]
                           else "sqlite")
    engine = (engines or {}).get(name)
    if engine is None:
        return name, []
    screen, chunk = engine.screen(), first
    try:
        while chunk:
            screen.feed(chunk)
            chunk = member.read()
        screen.finish()
    except EngineError as exc:
        member.skip()
        return name, [f"{DATABASE_MEMBER}: {exc}"]
    return name, []
