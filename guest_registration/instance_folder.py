"""The instance folder and what the host keeps in it: the folder made private
(:func:`ensure_private_folder`, for every private folder of the host's), and the
secrets generated once into it (``SECRET_KEY``, ``SECURITY_PASSWORD_SALT``). Run
as root in a folder of the service's user, what is made there is that user's
(:func:`handed_to_their_owner` for what a whole command makes, ``setup``'s)."""

from __future__ import annotations

import contextlib
import itertools
import logging
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
log = logging.getLogger(__name__)


@contextlib.contextmanager
def handed_to_their_owner(*paths: Path) -> Iterator[None]:
    """Run as root, what the block makes (or replaces) as or in ``paths`` (folders,
    or files), and the folders it makes on the way to them, inside a folder of
    another user is that user's, outermost first (each takes its folder's owner):
    ``setup`` typed as root in the service user's instance folder left the SQLite
    file (and its -wal, -shm), a plugin's folder and ``schema-locations.json`` root's,
    and the service could not write them. What was there before is left alone,
    known by device and inode, not by name: that user may rename or move their
    folders' contents while the command runs. No symbolic link is followed, nor a
    file of several links (that user could put either there) or other than a plain
    file, a folder or a link handed over; the folders are held open from before the
    block, and one that is no longer at its path is left (a link swapped in above
    it would have made root chown another account's files). Linux only (O_PATH)."""
    if os.geteuid() != 0 or not hasattr(os, "O_PATH"):
        yield
        return
    known: dict[tuple[int, int], bool] = {}  # there before → what is in it is known too
    starts = []
    try:
        for path in _outermost(paths):
            with contextlib.suppress(OSError):
                starts.append((path, *_snapshot(path, known)))
        yield
    finally:
        for path, start, fd in starts:
            try:
                with contextlib.suppress(OSError):  # gone, or not a folder now: nothing of ours
                    _hand_over(path, start, fd, known)
            finally:
                os.close(fd)


def _outermost(paths) -> list[Path]:
    """Absolute ``paths`` without those inside another one (walked with it)."""
    found = sorted({Path(os.path.abspath(p)) for p in paths}, key=lambda p: len(p.parts))
    return [p for i, p in enumerate(found) if not any(p.is_relative_to(q) for q in found[:i])]


def _id(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _snapshot(path: Path, known: dict) -> tuple[Path, int]:
    """The nearest folder above ``path`` that exists, opened (the hand-over starts in
    this very folder), after adding to ``known`` root's files in it and its folders
    (one level: the user could move them onto the way to ``path``) and root's in
    ``path``. Only root's are handed over, so only root's are recorded: a file of the
    user's deleted meanwhile gives its inode to the next one made (ext4 does)."""
    start = next(p for p in path.parents if os.path.lexists(p))
    fd = os.open(start, _NOFOLLOW_DIR)
    try:
        for name in os.listdir(fd):
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if st.st_uid == 0 or stat.S_ISDIR(st.st_mode):
                    known.setdefault(_id(st), not stat.S_ISDIR(st.st_mode))
        if start == path.parent:
            with contextlib.suppress(OSError):  # not there, or not a folder: listed above
                below = os.open(path.name, _NOFOLLOW_DIR, dir_fd=fd)
                try:
                    known[_id(os.fstat(below))] = True  # what is in it: recorded here
                    known.update((_id(st), True) for _, _, st in _tree(below)
                                 if st.st_uid == 0 or _id(st) in known)
                finally:
                    os.close(below)
    except BaseException:
        os.close(fd)
        raise
    return start, fd


def _tree(fd: int, known: dict | None = None):
    """(name, its folder's fd, lstat) of everything below folder ``fd``, each folder
    before what is in it; symbolic links are not entered, nor a folder (``fd``'s
    too) of ``known`` whose contents were not recorded (:func:`_unknown_inside`)."""
    for _, dirs, files, dir_fd in os.fwalk(".", dir_fd=fd):
        if known is not None and _unknown_inside(known, dir_fd):
            dirs.clear()
            continue
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):  # gone since it was listed
                yield name, dir_fd, os.stat(name, dir_fd=dir_fd, follow_symlinks=False)


def _unknown_inside(known: dict, fd: int) -> bool:
    """Whether folder ``fd`` (the one opened, whatever its name is now) was there
    before but what is in it was not recorded: moved in from beside the paths."""
    return not known.get(_id(os.fstat(fd)), True)


def _hand_over(path: Path, start: Path, fd: int, known: dict) -> None:
    """Give what is new from folder ``fd`` (``start``'s) down to ``path`` and in it to
    their folders' owners; a folder there before whose contents were not recorded
    (moved in from beside) is not entered."""
    if not _still_at(start, fd):
        log.warning("%s was moved or replaced (a symbolic link above it?) while the command "
                    "ran: what it made in %s was left root's; check who owns what is there "
                    "and give the service's user what it needs (chown)", start, path)
        return
    here = os.dup(fd)  # ``fd`` stays open for the caller to close
    try:
        for name in path.relative_to(start).parts:  # made on the way, or ``path``
            _give(here, name, known)
            below = os.open(name, _NOFOLLOW_DIR, dir_fd=here)  # a file, a link: OSError
            os.close(here)
            here = below
            if _unknown_inside(known, here):
                return
        for name, dir_fd, st in _tree(here, known):
            if _id(st) not in known:
                _give(dir_fd, name, known)
    finally:
        os.close(here)


def _still_at(start: Path, fd: int) -> bool:
    """Whether ``start`` still names folder ``fd`` (opened before the block)."""
    try:
        now = os.open(start, _NOFOLLOW_DIR)
    except OSError:
        return False
    try:
        return _id(os.fstat(now)) == _id(os.fstat(fd))
    finally:
        os.close(now)


def _give(dir_fd: int, name: str, known: dict) -> None:
    """Root's ``name`` in folder ``dir_fd``, new, becomes the folder's owner's, if that
    is not root: a folder, a file or a link (itself) of one link. The very file
    checked is handed over (held open, never by its name again: it may be swapped)."""
    folder = os.fstat(dir_fd)
    if folder.st_uid == 0:
        return
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    try:
        st = os.fstat(fd)
        kind = stat.S_IFMT(st.st_mode)
        if st.st_uid != 0 or _id(st) in known:
            return
        if kind == stat.S_IFDIR or (kind in (stat.S_IFREG, stat.S_IFLNK) and st.st_nlink == 1):
            _chown_opened(fd, folder.st_uid, folder.st_gid)
    finally:
        os.close(fd)


def _chown_opened(fd: int, uid: int, gid: int) -> None:
    """``fchownat(fd, "", AT_EMPTY_PATH)``: the file opened with O_PATH, a link itself
    too (``os.chown`` has no way to name it by its descriptor)."""
    import ctypes

    fchownat = ctypes.CDLL(None, use_errno=True).fchownat
    fchownat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint,
                         ctypes.c_int]
    if fchownat(fd, b"", uid, gid, 0x1000) != 0:  # 0x1000: AT_EMPTY_PATH (Linux)
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


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
