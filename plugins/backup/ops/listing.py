"""Every archive of every storage, with where each one is."""

from __future__ import annotations

from dataclasses import dataclass, field

from guest_backup.archive.format import ArchiveInfo
from guest_backup.ops.context import BackupContext
from guest_backup.storages import Storage, StorageError


@dataclass
class Listing:
    archives: list[ArchiveInfo]
    urls: list[str]
    problems: list[str]  # storages that could not be listed
    #: each storage (in order) with its archives, or the error that listing it raised
    by_storage: list[tuple[object, list | StorageError]] = field(default_factory=list)


def list_everywhere(ctx: BackupContext) -> Listing:
    """Archives of the local folder and the remote copy, merged by name, newest
    first. A remote that cannot be reached is a problem, not an error."""
    merged: dict[str, ArchiveInfo] = {}
    urls, problems, by_storage = [], [], []
    for storage in ctx.storages():
        urls.append(storage.url)
        try:
            found = storage.list()
        except StorageError as exc:
            problems.append(str(exc))
            by_storage.append((storage, exc))
            continue
        by_storage.append((storage, found))
        for a in found:
            entry = merged.setdefault(a.name, ArchiveInfo(a.name, a.size, a.created))
            entry.locations.append(storage.name)
    return Listing(sorted(merged.values(), key=lambda a: a.name, reverse=True), urls, problems,
                   by_storage)


def storages_holding(ctx: BackupContext, name: str, everywhere: bool = False) -> list[Storage]:
    """The storages that hold archive ``name``, local first. Unless ``everywhere``,
    a copy on this machine is enough and the remote is not asked; a remote that
    cannot be reached holds nothing."""
    found: list[Storage] = []
    try:
        if ctx.local().local_path(name) is not None:
            found.append(ctx.local())
    except StorageError:
        pass
    if found and not everywhere:
        return found
    try:
        remote = ctx.remote()
        if remote is not None and any(a.name == name for a in remote.list()):
            found.append(remote)
    except StorageError:
        pass
    return found
