"""The one way the plugin replaces a small private file whole (job state,
notification states, browse sessions, a listing's kept verdicts, the erasure
ledger and its copy in a local storage) and makes one once (the signing key, the
installation id): below every layer, so ``ops``, ``storages`` and ``archive``
share it. Run as root, what it writes in a folder of another user is that
user's."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_private(path: str | os.PathLike, data: bytes, *, sync: bool = False) -> None:
    """``data`` as the whole of ``path``, mode 0600: written under a new hidden
    name in the same folder (``mkstemp``: never another file's bits), flushed (and
    fsync'd with ``sync``), then renamed over ``path``, so that a reader sees the
    old file or the new one, never half of one. The temporary file is removed on
    any failure; the OSError is the caller's to word."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".writing",
                               dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            owned_like_folder(out.fileno(), target.parent)
            out.write(data)
            out.flush()
            if sync:
                os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_or_create(path: str | os.PathLike, make) -> bytes:
    """The contents of ``path``, or ``make()``'s bytes written there first (mode
    0600) when it does not exist or is empty: a key, an id made once. The new
    file is written whole and fsync'd under a temporary name, then linked into
    place, so that no reader ever finds it empty or half-written and of two
    processes making it at once one wins and both use its contents. An empty file
    (what a crash or a full disk left behind an earlier version's create-then-write)
    is replaced, and what is on disk afterwards is returned. The OSError is the
    caller's to word."""
    target = Path(path)
    for _ in range(5):
        try:
            data = target.read_bytes()
        except FileNotFoundError:
            data = None
        if data and data.strip():
            return data
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".writing",
                                   dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                owned_like_folder(out.fileno(), target.parent)
                out.write(make())
                out.flush()
                os.fsync(out.fileno())
            if data is None:
                os.link(tmp, target)  # FileExistsError: another process was first
            else:
                os.replace(tmp, target)
            _sync_folder(target.parent)
        except FileExistsError:
            continue
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return target.read_bytes()


def _sync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def user_name(uid: int) -> str:
    """A user's name (its uid when it has none): whose a file is, in a message."""
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def owned_like_folder(fd: int, folder: Path) -> None:
    """Run as root (``status``, ``backup-key`` or ``backup-list`` typed by an
    administrator), a file made in a folder of the service's user is given to that
    user: a root-owned 0600 key or state file there stopped every later backup
    (Permission denied). Otherwise nothing."""
    if os.geteuid() != 0:
        return
    owner = os.stat(folder)
    if owner.st_uid != 0:
        os.fchown(fd, owner.st_uid, owner.st_gid)
