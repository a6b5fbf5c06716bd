"""The erasure ledger's copies beside the archives of every storage
(``erasure-ledger.jsonl``): :func:`publish` after each erasure, :func:`collect`
before a restore touches anything (see :mod:`guest_backup.ops.ledger`)."""

from __future__ import annotations

import logging
from typing import Callable, Iterable

from guest_backup.errors import BackupError
from guest_backup.ops.ledger import ErasureLedger
from guest_backup.ops.ledger_format import LEDGER_NAME, LedgerBroken, _split, merge_verified, \
    verify_lines
from guest_backup.storages import Storage, StorageError, StorageUnreachable

log = logging.getLogger(__name__)


def storage_label(storage: Storage) -> str:
    return f"the {storage.name} storage ({storage.url})"


def publish(ledger: ErasureLedger, storages: Iterable[Storage]) -> list[str]:
    """Copy the local ledger beside the archives of every storage; the storages
    whose copy was behind (written now). A copy that has lines the local file
    lacks (or forks from it) is never overwritten. Every storage is tried; then
    LedgerBroken if a copy disagrees, else StorageError.

    The ledger's lock is held throughout: an erasure appending meanwhile (and
    publishing its line) had its copy overwritten by this older one, which then
    lacked that line while this said "in every storage"."""
    failures: list[BackupError] = []
    written: list[str] = []
    with ledger.locked():
        data = ledger.read_held()
        if not data:
            return []
        key = ledger.key(create=False)
        mine = verify_lines(_split(data), key, ledger.label)
        for storage in storages:
            try:
                if _publish_one(storage, data, mine, key):
                    written.append(storage_label(storage))
            except BackupError as exc:
                failures.append(exc)
    broken = [exc for exc in failures if isinstance(exc, LedgerBroken)]
    if broken:
        raise LedgerBroken("; ".join(str(exc) for exc in failures))
    if failures:
        raise StorageError("; ".join(str(exc) for exc in failures))
    return written


def _publish_one(storage: Storage, data: bytes, mine: list[dict], key: bytes) -> bool:
    label = storage_label(storage)
    current = storage.get_extra(LEDGER_NAME)
    if current == data:
        return False
    if current:
        theirs = verify_lines(_split(current), key, label)
        merged = merge_verified({"the instance folder": mine, label: theirs})
        if len(merged) > len(mine):
            raise LedgerBroken(f"the erasure ledger in {label} has lines the instance folder "
                               f"lacks: collect the ledger before publishing it")
    storage.put_extra(LEDGER_NAME, data)
    return True


def collect(ledger: ErasureLedger, storages: Iterable[Storage],
            warn: Callable[[str], None] = log.warning) -> list[dict]:
    """Every erasure known to the instance folder or any storage, checked and merged
    (what a restore re-applies); the local file is brought up to date when it is
    missing or behind.

    A storage that cannot be read is skipped (``warn``) when some copy could be read
    (the local file is where every line is written first); when none could, that
    is StorageUnreachable: a restore must not go on without its ledger."""
    copies: dict[str, bytes | None] = {}
    unreadable: list[str] = []
    for storage in storages:
        try:
            copies[storage_label(storage)] = storage.get_extra(LEDGER_NAME)
        except StorageError as exc:
            unreadable.append(str(exc))
    with ledger.locked():
        here = ledger.read_held()
        if not here and not any(copies.values()):
            if unreadable:
                raise StorageUnreachable("no copy of the erasure ledger could be read: "
                                         + "; ".join(unreadable))
            return []
        for message in unreadable:
            warn(f"{message}; the erasure ledger was read from the other copies")
        key = ledger.key(create=False)
        checked = {name: verify_lines(_split(data), key, name)
                   for name, data in {ledger.label: here, **copies}.items() if data}
        merged = merge_verified(checked)
        if len(merged) > len(checked.get(ledger.label, ())):
            ledger.replace(merged)
    return merged
