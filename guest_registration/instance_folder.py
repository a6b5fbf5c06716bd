"""The instance folder and what the host keeps in it: the folder made private
(:func:`ensure_private_folder`, for every private folder of the host's), and the
secrets generated once into it (``SECRET_KEY``, ``SECURITY_PASSWORD_SALT``). Run
as root in a folder of the service's user, what is made there is that user's
(:func:`handed_to_their_owner` for what a whole command makes, ``setup``'s)."""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import stat
from pathlib import Path
from typing import Iterator

from .config_errors import ConfigError, SharedFolderError


def refuse_shared_folder(path: Path, setting: str) -> None:
    """:class:`SharedFolderError` when ``path`` is a sticky folder (``/tmp``,
    ``/var/tmp``: everyone's), which making it private would take from everyone."""
    if path.is_dir() and path.stat().st_mode & stat.S_ISVTX:
        raise SharedFolderError(
            f"{setting} {path} is a shared folder (sticky, as /tmp): the app makes its "
            f"folders private to its user, which would take this one from everyone; "
            f"give {setting} a folder of its own")


def ensure_private_folder(path: Path, setting: str = "INSTANCE_PATH") -> Path:
    """Create ``path`` (and parents) 0700 whatever the umask; an existing folder loses
    every read and write bit of group and others, but keeps their execute bits: a
    traverse-only folder (0711, as ``pitr setup`` makes the instance folder so that
    ``postgres`` reaches its pgBackRest folder) lets nobody list or read it. A
    shared folder is refused (:func:`refuse_shared_folder`), named by ``setting``."""
    refuse_shared_folder(path, setting)
    made = list(itertools.takewhile(lambda p: not p.exists(), (path, *path.parents)))
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    for folder in reversed(made):  # outermost first: each takes its parent's owner
        _owned_like_parent(folder)
    with contextlib.suppress(PermissionError):  # not ours (a shared mount): left as it is
        current = path.stat().st_mode & 0o7777
        if current != (wanted := 0o700 | (current & 0o011)):
            os.chmod(path, wanted)
    return path


def _owned_like_parent(path: Path) -> None:
    """Run as root, what is made in a folder of another user is that user's: root's
    ``status`` on a fresh INSTANCE_PATH left all root's, and the service's user died."""
    parent = path.parent.stat()
    if os.geteuid() == 0 and parent.st_uid != 0:
        os.chown(path, parent.st_uid, parent.st_gid)


#: ``app.extensions`` key: names of settings of folders the service keeps besides the
#: instance folder (a plugin's, e.g. where it writes archives), which ``setup``
#: run as root hands over like it (:func:`handed_to_their_owner`)
SETUP_FOLDERS = "guest_registration.setup_folders"
_NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


@contextlib.contextmanager
def handed_to_their_owner(*paths: Path) -> Iterator[None]:
    """Run as root, what the block makes (or replaces) as or in ``paths`` (folders,
    or files), and the folders it makes on the way to them, inside a folder of
    another user is that user's, outermost first (each takes its folder's owner):
    ``setup`` typed as root in the service user's instance folder left the SQLite
    file (and its -wal, -shm), a plugin's folder and ``schema-locations.json`` root's,
    and the service could not write them. What was there before and stayed is
    left alone; no symbolic link is followed, nor a file of several links handed
    over (the folder's user could put either there while the command runs)."""
    if os.geteuid() != 0:
        yield
        return
    before = {}
    for path in _outermost(paths):
        with contextlib.suppress(OSError):
            before[path] = _snapshot(path)
    try:
        yield
    finally:
        for path, (start, seen) in before.items():
            with contextlib.suppress(OSError):  # gone, or not a folder now: nothing of ours
                _hand_over(path, start, seen)


def _outermost(paths) -> list[Path]:
    """Absolute ``paths`` without those inside another one (walked with it)."""
    found = sorted({Path(os.path.abspath(p)) for p in paths}, key=lambda p: len(p.parts))
    return [p for i, p in enumerate(found) if not any(p.is_relative_to(q) for q in found[:i])]


def _snapshot(path: Path) -> tuple[Path, dict[str, tuple[int, int]]]:
    """The nearest folder above ``path`` that exists, and what is in ``path`` now
    (relative name → device and inode; ``.``: ``path`` itself)."""
    start = next(p for p in path.parents if os.path.lexists(p))
    if not os.path.lexists(path):
        return start, {}
    st = path.lstat()
    seen = {".": (st.st_dev, st.st_ino)}
    if stat.S_ISDIR(st.st_mode):
        fd = os.open(path, _NOFOLLOW_DIR)
        try:
            seen.update({rel: (st.st_dev, st.st_ino) for rel, _, _, st in _tree(fd)})
        finally:
            os.close(fd)
    return start, seen


def _tree(fd: int):
    """(relative name, name, its folder's fd, lstat) of everything below folder ``fd``,
    each folder before what is in it; symbolic links are not entered."""
    for folder, dirs, files, dir_fd in os.fwalk(".", dir_fd=fd):
        for name in dirs + files:
            yield (os.path.normpath(os.path.join(folder, name)), name, dir_fd,
                   os.stat(name, dir_fd=dir_fd, follow_symlinks=False))


def _hand_over(path: Path, start: Path, seen: dict[str, tuple[int, int]]) -> None:
    """Give what is new from ``start`` down to ``path`` and in it to their folders' owners."""
    fd = os.open(start, _NOFOLLOW_DIR)
    try:
        parts = path.relative_to(start).parts
        for i, name in enumerate(parts):  # made on the way, or ``path`` made (or replaced)
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if i < len(parts) - 1 or seen.get(".") != (st.st_dev, st.st_ino):
                _give(fd, name, st)
            if not stat.S_ISDIR(st.st_mode):
                return  # a file: nothing below it
            below = os.open(name, _NOFOLLOW_DIR, dir_fd=fd)
            os.close(fd)
            fd = below
        for rel, name, dir_fd, st in _tree(fd):
            if seen.get(rel) != (st.st_dev, st.st_ino):
                _give(dir_fd, name, st)
    finally:
        os.close(fd)


def _give(dir_fd: int, name: str, st: os.stat_result) -> None:
    """Root's ``name`` in folder ``dir_fd`` becomes the folder's owner's, if that is
    not root: a folder, a link itself, or a file of one link (never one linked in)."""
    folder = os.fstat(dir_fd)
    if folder.st_uid == 0 or st.st_uid != 0:
        return
    if stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode) or st.st_nlink == 1:
        os.chown(name, folder.st_uid, folder.st_gid, dir_fd=dir_fd, follow_symlinks=False)


def _unusable_secret(path: Path, exc: OSError) -> ConfigError:
    """One line for a secret that cannot be read or made: the file, why, and whose
    it is (or the nearest folder above it that this user can look at)."""
    import pwd

    for where in (path, *path.parents):
        with contextlib.suppress(OSError):
            uid = where.stat().st_uid
            try:
                owner = pwd.getpwuid(uid).pw_name  # one lookup, not every user's entry
            except KeyError:
                owner = uid
            return ConfigError(
                f"the secret {path} cannot be used ({exc.strerror}): {where} belongs to "
                f"{owner}; run commands as the service's user, or chown it")
    return ConfigError(f"the secret {path} cannot be used ({exc.strerror})")


def secret_from_file(instance_path: Path, name: str) -> str:
    """Read (or create once, mode 0600) a random secret kept in the instance folder.
    The new file is written whole under a temporary name, then linked into place:
    of two processes starting at once (``serve``'s workers each build their app)
    one wins and both use its secret; nobody reads it half-written. An empty file
    (a crash or a full disk during an earlier version's write) is replaced. Made
    by root (``status`` typed by an administrator) in the service user's folder,
    it is that user's; one it cannot read (root's) is a ConfigError naming it."""
    import tempfile

    path = instance_path / name
    try:
        for _ in range(5):
            try:
                value = path.read_text().strip()
                if value:
                    return value
                exists = True
            except FileNotFoundError:
                exists = False
            ensure_private_folder(instance_path)
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=instance_path)
            try:
                with os.fdopen(fd, "w") as fh:
                    _owned_like_parent(Path(tmp))
                    fh.write(secrets.token_urlsafe(48) + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                if exists:
                    os.replace(tmp, path)
                else:
                    os.link(tmp, path)  # FileExistsError: another process was first
            except FileExistsError:
                continue
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        return path.read_text().strip()
    except OSError as exc:  # root's file, or a folder this user may not enter
        raise _unusable_secret(path, exc) from None


__all__ = ["SETUP_FOLDERS", "ensure_private_folder", "handed_to_their_owner",
           "refuse_shared_folder", "secret_from_file"]
