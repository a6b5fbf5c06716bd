"""``verify`` of an encrypted archive with an identity: one pass of
:class:`~guest_backup.archive.onepass.ArchivePass`, decrypted as it is read (no
copy on disk), the dump fed to its engine's screen, every problem reported."""

from __future__ import annotations

import os
from typing import Mapping

from guest_backup.archive.format import DATABASE_MEMBER
from guest_backup.archive.manifest import Binding
from guest_backup.archive.onepass import ArchivePass, ArchiveRefused
from guest_backup.archive.signing import TrustedKeys
from guest_backup.archive.verify import VerifyReport
from guest_backup.archive.zipstream import Member
from guest_backup.errors import BackupError, EngineError


def verify_stream(path: str | os.PathLike, engines: Mapping | None, trusted: TrustedKeys,
                  binding: Binding, identities: list, allow_unsigned: bool) -> VerifyReport:
    """``verify`` of an encrypted archive with an identity: one pass, decrypted as it
    is read (no copy on disk), the dump screened, every problem reported."""
    problems: list[str] = []
    archive = ArchivePass(path, trusted, binding, identities=identities,
                          allow_unsigned=allow_unsigned, engines=engines, verify_first=False)
    try:
        with archive:
            for member in archive.members():
                if member.name == DATABASE_MEMBER:
                    problems += _screened(member, engines, archive)
            archive.report.manifest = archive.verdict(engines, archive.engine)
    except ArchiveRefused as exc:
        problems += exc.problems
    except BackupError as exc:
        problems.append(str(exc))
    report = archive.report
    report.problems = problems
    report.ok = not problems
    return report


def _screened(member: Member, engines: Mapping | None, archive: ArchivePass) -> list[str]:
    """Feed the dump to its engine's screen: the engine the seal names, or (a
    first-version archive, whose manifest comes after the dump) the one its first
    bytes show, checked against the manifest afterwards."""
    first = member.read()
    name = archive.engine or ("postgresql" if b"PostgreSQL database dump" in first[:4096]
                              else "sqlite")
    archive.engine = name
    engine = (engines or {}).get(name)
    if engine is None:
        return []
    screen, chunk = engine.screen(), first
    try:
        while chunk:
            screen.feed(chunk)
            chunk = member.read()
        screen.finish()
    except EngineError as exc:
        member.skip()
        return [f"{DATABASE_MEMBER}: {exc}"]
    return []
