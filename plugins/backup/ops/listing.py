"""Every recognised archive of every storage (see :mod:`guest_backup.archive.seal`),
dated by its signed creation time, with where each one is; and the files that
look like archives but are not recognised."""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable

from guest_backup.archive.format import ArchiveInfo, sidecar_path
from guest_backup.archive.seal import recognise, sealed_sha256
from guest_backup.archive.signing import TrustedKeys
from guest_backup.ops.context import BackupContext
from guest_backup.files import user_name
from guest_backup.ops.seal_verdicts import MISS, SealVerdicts
from guest_backup.storages import Storage, StorageError, StorageUnreachable, size_of


@dataclass
class Listing:
    archives: list[ArchiveInfo]
    urls: list[str]
    problems: list[str]  # storages that could not be listed
    #: each storage (in order) with its recognised archives, or the error that listing
    #: it raised
    by_storage: list[tuple[object, list | StorageError]] = field(default_factory=list)
    #: storage name -> names of files that look like archives but are not recognised
    #: (an unreadable one as ``name (unreadable: why)``, so health's count says why)
    unrecognised: dict[str, list[str]] = field(default_factory=dict)
    #: storage name -> those of ``unrecognised`` this user cannot read (root-made, 0600)
    unreadable: dict[str, list[str]] = field(default_factory=dict)
    #: storage name -> the same as (archive name, its or its seal's owner, None: unknown)
    unreadable_owners: dict[str, list[tuple[str, str | None]]] = field(default_factory=dict)
    #: storage name -> archives signed with a creation time in the future (not counted)
    future: dict[str, list[ArchiveInfo]] = field(default_factory=dict)


#: how far an archive's signed creation time may be ahead of this machine's clock
FUTURE_SKEW = timedelta(minutes=5)


def newest_first(archives: list[ArchiveInfo]) -> list[ArchiveInfo]:
    return sorted(archives, key=lambda a: (a.created, a.name), reverse=True)


def recognised(ctx: BackupContext, storage: Storage, future: list[ArchiveInfo] | None = None,
               unreadable: list[str] | None = None, *, trusted_keys: Iterable[str] = (),
               owners: list | None = None) -> tuple[list[ArchiveInfo], list[str]]:
    """``storage``'s recognised archives (newest first, dated by their signed
    creation time) and the names of the files it holds that are not; ``trusted_keys``
    (``--trusted-key``) recognise any installation's archives, as verify does.

    An archive signed with a creation time more than :data:`FUTURE_SKEW` ahead of
    this machine's clock (made while a clock ran ahead, or forged) is not counted:
    it would be "the newest" until then, and freshness, the restore drill and
    retention's "last N" were judged by it (a backup made on time was pruned as the
    second newest). It goes to ``future`` when given, else with the names of the
    files not recognised; never deleted by retention either way. A file of this
    machine that this user cannot read (or its seal) is not recognised either, but
    goes to ``unreadable`` when given, and with its reason among the names (and to
    ``owners`` as (name, the unreadable file's owner))."""
    trusted, installation = ctx.settings.trusted(), ctx.settings.installation()
    explicit = TrustedKeys(trusted_keys) if trusted_keys else None
    kept = SealVerdicts(ctx.instance_path, storage.url, _scope(trusted, explicit), installation)

    def judge(found: ArchiveInfo) -> tuple[ArchiveInfo, object, str | None]:
        """The archive's date (None: not recognised) and sealed SHA-256: kept from an
        earlier listing of the same objects, or from its seal read and checked here.
        Only these are kept, never the seals, so the listing's memory does not grow
        with what a storage holds (20,000 planted keys with 64 KiB seals took 1.3 GiB)."""
        if (verdict := kept.get(found)) is not MISS:
            return found, *verdict, None
        try:
            local, sidecar = storage.local_path(found.name), storage.read_sidecar(found.name)
        except StorageUnreachable:
            raise  # a seal that could not be read (503, a timeout): the storage failed
        except StorageError:
            local, sidecar = None, None
        when = recognise(found.name, found.size, sidecar, trusted, installation, local)
        if when is None and explicit is not None:  # any installation's, signed by one of them
            when = recognise(found.name, found.size, sidecar, explicit, None, local)
        if when is None and (why := _unreadable(local))[0]:
            return found, None, None, why  # not kept: readable again once chowned
        sha = sealed_sha256(sidecar) if when is not None and sidecar is not None else None
        kept.put(found, when, sha, seal_read=sidecar is not None)
        return found, when, sha, None  # the sha was checked just now

    good, bad = [], []
    limit = datetime.now(timezone.utc) + FUTURE_SKEW
    for found, when, sha, why in _each(storage, storage.list(), judge):
        if when is None:
            if why and unreadable is not None:  # health tells them apart, with why
                bad.append(_note_unreadable(found.name, why, unreadable, owners))
            else:
                bad.append(found.name)
            continue
        archive = ArchiveInfo(found.name, found.size, when, list(found.locations), sha)
        if when <= limit:
            good.append(archive)
        elif future is not None:
            future.append(archive)
        else:
            bad.append(found.name)
    kept.save()
    return newest_first(good), sorted(bad)


def _note_unreadable(name: str, why: tuple, unreadable: list[str], owners: list | None) -> str:
    """``name (unreadable: why)``, added to ``unreadable`` (and its owner to ``owners``)."""
    unreadable.append(f"{name} (unreadable: {why[0]})")
    if owners is not None:
        owners.append((name, why[1]))
    return unreadable[-1]


def _scope(trusted: TrustedKeys, explicit: TrustedKeys | None) -> list[str]:
    """The keys the kept verdicts are for: a key given explicitly recognises more
    (any installation's archives) than the same key in BACKUP_TRUSTED_KEYS, so
    the verdicts of the one are never taken for the other's."""
    return [*trusted, *(f"explicit {key}" for key in explicit or ())]


def _unreadable(local: Path | None) -> tuple[str | None, str | None]:
    """Why this user cannot read an archive of this machine or its seal, and whose
    that file is (None, None: it can): a root-run worker's files (root's, 0600) in
    the service's folder were called "not recognised (no valid seal of a trusted
    key…)", the wrong reason and fix."""
    for path in (sidecar_path(local), local) if local is not None else ():
        try:
            os.close(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK))
        except PermissionError as exc:
            with contextlib.suppress(OSError):
                owner = user_name(path.lstat().st_uid)
                return f"{path.name}: {exc.strerror}, it is {owner}'s", owner
            return f"{path.name}: {exc.strerror}", None
        except OSError:
            continue
    return None, None


def _each(storage: Storage, listed: list[ArchiveInfo], judge) -> list:
    """``judge`` of each listed archive, in order; ``storage.parallel_reads`` at a
    time (S3: a round trip each, which a backup's retention, the listing and
    health otherwise wait for one after another)."""
    workers = min(getattr(storage, "parallel_reads", 1), len(listed))
    if workers <= 1:
        return [judge(found) for found in listed]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="seal-read") as pool:
        return list(pool.map(judge, listed))


def list_everywhere(ctx: BackupContext) -> Listing:
    """Recognised archives of the local folder and the remote copy, merged by name,
    newest first. A remote that cannot be reached is a problem, not an error."""
    merged: dict[str, ArchiveInfo] = {}
    listing = Listing([], [], [])
    for storage in ctx.storages():
        listing.urls.append(storage.url)
        ahead: list[ArchiveInfo] = []
        unreadable: list[str] = []
        owners: list[tuple[str, str | None]] = []
        try:
            found, unknown = recognised(ctx, storage, ahead, unreadable, owners=owners)
        except StorageError as exc:
            listing.problems.append(str(exc))
            listing.by_storage.append((storage, exc))
            continue
        listing.by_storage.append((storage, found))
        if unknown:
            listing.unrecognised[storage.name] = unknown
        if unreadable:
            listing.unreadable[storage.name] = unreadable
            listing.unreadable_owners[storage.name] = owners
        if ahead:
            listing.future[storage.name] = newest_first(ahead)
        for a in found:
            entry = merged.setdefault(a.name, ArchiveInfo(a.name, a.size, a.created,
                                                          sha256=a.sha256))
            entry.locations.append(storage.name)
    listing.archives = newest_first(list(merged.values()))
    return listing


def storages_holding(ctx: BackupContext, name: str, everywhere: bool = False,
                     unreachable: list | None = None) -> list[Storage]:
    """The storages that hold archive ``name``, local first. Unless ``everywhere``,
    a copy on this machine is enough and the remote is not asked; a remote that
    cannot be reached holds nothing, and goes into ``unreachable`` as (storage
    name, error) when one is given (a deletion must not take it for "not there")."""
    found: list[Storage] = []
    try:
        if ctx.local().local_path(name) is not None:
            found.append(ctx.local())
    except StorageError:
        pass
    if found and not everywhere:
        return found
    remote = None
    try:
        remote = ctx.remote()
        if remote is not None and size_of(remote, name) is not None:
            found.append(remote)
    except StorageError as exc:
        if unreachable is not None:
            unreachable.append((getattr(remote, "name", "remote"), exc))
    return found
