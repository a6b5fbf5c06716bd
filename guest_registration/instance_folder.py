"""The instance folder and what the host keeps in it: the folder made private
(:func:`ensure_private_folder`, for every private folder of the host's), and the
secrets generated once into it (``SECRET_KEY``, ``SECURITY_PASSWORD_SALT``). Run
as root in a folder of the service's user, what is made there is that user's."""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import stat
from pathlib import Path

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


__all__ = ["ensure_private_folder", "refuse_shared_folder", "secret_from_file"]
