"""Every archive of every storage, with where each one is."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from .context import BackupContext
from .storages import StorageError


@dataclass
class ListedArchive:
    name: str
    size: int
    created: datetime
    locations: list[str] = field(default_factory=list)  # storage names: local, remote

    @property
    def encrypted(self) -> bool:
        return self.name.endswith(".age")


@dataclass
class Listing:
    archives: list[ListedArchive]
    urls: list[str]
    problems: list[str]  # storages that could not be listed
    #: each storage (in order) with its archives, or the error that listing it raised
    by_storage: list[tuple[object, list | StorageError]] = field(default_factory=list)


def list_everywhere(ctx: BackupContext) -> Listing:
    """Archives of the local folder and the remote copy, merged by name, newest
    first. A remote that cannot be reached is a problem, not an error."""
    merged: dict[str, ListedArchive] = {}
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
            entry = merged.setdefault(a.name, ListedArchive(a.name, a.size, a.created))
            entry.locations.append(storage.name)
    return Listing(sorted(merged.values(), key=lambda a: a.name, reverse=True), urls, problems,
                   by_storage)
