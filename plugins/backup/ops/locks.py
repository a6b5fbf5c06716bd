"""The one-backup-at-a-time lock, its only owner.

- :class:`BackupLock`: an ``flock`` on ``.backup.lock`` in the backup folder, for
  every process of this machine (embedded mode, no ``REDIS_URL``); the folder is
  made private first (:func:`private_backup_folder`), and a lock file that is not
  a regular file of this user is refused, not taken for a running backup.
- :class:`RedisBackupLock`: a Redis key with a token and a short expiry, renewed
  by its holder while the backup runs, for every process and machine using one
  Redis; a holder that dies frees it within ``TTL`` seconds. A web process takes
  it for a backup it queues (longer expiry, so the job waits for a worker) and
  the worker *adopts* it.

Both raise :class:`BackupBusy` at once when the lock is taken, and ``release()``
may be called from another thread than ``acquire()``. A Redis that cannot be
reached is a :class:`BackupError` naming it (password masked), so the run is
audited and reported like any failed one; a release it prevents is a warning
(the lock lapses by itself), never the end of a run that went well.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
import uuid
from pathlib import Path
from typing import Callable, Iterator

from guest_backup.engines import try_flock
from guest_backup.errors import BackupBusy, BackupError
from guest_backup.files import user_name

log = logging.getLogger(__name__)
LOCK_NAME = ".backup.lock"
BUSY = "another backup is running; wait for it to finish"

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


def keep_renewing(every: float, renew: Callable[[], object], name: str) -> threading.Event:
    """The one lease renewal: call ``renew()`` every ``every`` seconds in a daemon
    thread until the returned event is set; a failed call (Redis away for a
    moment) is tried again at the next tick, and the lease may lapse meanwhile."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(every):
            try:
                renew()
            except Exception as exc:
                log.warning("%s failed (%s); tried again in %g s", name, type(exc).__name__,
                            every)

    threading.Thread(target=run, name=name, daemon=True).start()
    return stop


def private_backup_folder(folder: str | os.PathLike, setting: str = "BACKUP_FOLDER") -> Path:
    """The backup folder, created or made 0700 whatever the umask (archives hold
    guest data, and another user must not plant or hold its lock file), before any
    backup, pruning or drill uses it. A shared folder (sticky, as ``/tmp``) is
    refused, named by ``setting``: making it private would take it from everyone.
    A folder of another user is left as it is (the lock file's owner is checked)."""
    folder = Path(folder)
    if folder.is_dir() and folder.stat().st_mode & stat.S_ISVTX:
        raise BackupError(
            f"{setting} {folder} is a shared folder (sticky, as /tmp): the app makes its "
            f"folders private to its user, which would take this one from everyone; "
            f"give {setting} a folder of its own")
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError:
        raise BackupError(f"the backup folder {folder} cannot be created") from None
    try:
        if stat.S_IMODE(folder.stat().st_mode) != 0o700:
            os.chmod(folder, 0o700)
    except PermissionError:  # not ours (e.g. a shared mount): leave it as it is
        pass
    return folder


def refuse_root_in_users_folder(folder: Path) -> None:
    """Run as root in a backup folder of another user (the service's), refused: root's
    lock, archive and seal (0600) failed every later backup, drill, listing of theirs."""
    owner = folder.stat().st_uid
    if os.geteuid() == 0 and owner != 0:
        raise BackupError(f"the backup folder {folder} belongs to {user_name(owner)}: run the "
                          f"command as {user_name(owner)}, not as root")


def _own_file(path: Path, st: os.stat_result) -> None:
    """A lock file that is not a regular file of this user is refused; in a folder of
    another user, advised to run as that user ("remove it" made root's files there)."""
    if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid():
        return
    whose = f"{user_name(st.st_uid)}'s" if stat.S_ISREG(st.st_mode) else "a link"
    folder = path.parent.stat().st_uid
    advice = ("remove it, then run the backup again" if folder == os.geteuid() else
              f"run the command as {user_name(folder)}, the backup folder's owner")
    raise BackupError(f"the lock file {path} is not a regular file of this user ({whose}): "
                      f"{advice}")


class BackupLock:
    """One backup at a time across processes and threads: an ``flock`` on
    ``.backup.lock`` in the backup folder. The only owner of that lock.

    ``acquire()`` raises :class:`BackupBusy` at once when it is taken;
    ``release()`` may be called from another thread (a web job takes the lock
    in the request and its worker thread releases it).
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "BackupLock":
        """Take the lock in the folder, made private first (a shared one refused);
        a lock file that is not a regular file of this user is refused, never
        taken for a running backup (another user could hold it for ever); run as root
        in a folder of another user, refused (:func:`refuse_root_in_users_folder`)."""
        private_backup_folder(self.folder)
        refuse_root_in_users_folder(self.folder)
        path = self.folder / LOCK_NAME
        try:
            _own_file(path, os.lstat(path))
        except FileNotFoundError:
            pass
        try:
            fd = try_flock(path)
        except OSError:
            raise BackupError(f"the backup folder {self.folder} is not writable") from None
        if fd is None:
            raise BackupBusy(BUSY)
        try:
            _own_file(path, os.fstat(fd))
        except BackupError:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing releases the flock

    def __enter__(self) -> "BackupLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()

    def taken_elsewhere(self) -> bool:
        """Whether some process or thread runs a backup now (without taking the lock)."""
        if self.held:
            return True
        try:
            fd = try_flock(self.folder / LOCK_NAME, create=False)
        except OSError:
            return False
        if fd is None:
            return (self.folder / LOCK_NAME).exists()
        os.close(fd)
        return False


def _params(client) -> dict:
    return getattr(getattr(client, "connection_pool", None), "connection_kwargs", None) or {}


def redis_shown(client) -> str:
    """Which Redis ``client`` talks to, as a URL with any password masked."""
    kw = _params(client)
    user = kw.get("username") or ""
    auth = f"{user}:***@" if kw.get("password") else (f"{user}@" if user else "")
    if kw.get("path"):
        return f"unix://{auth}{kw['path']}?db={kw.get('db', 0)}"
    kind = getattr(getattr(client, "connection_pool", None), "connection_class", None)
    scheme = "rediss" if "SSL" in getattr(kind, "__name__", "") else "redis"
    where = f"{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"
    return f"{scheme}://{auth}{where}"


class RedisBackupLock:
    TTL = 30  # seconds without renewal before a dead holder's lock is free

    def __init__(self, client, key: str, folder: str | os.PathLike | None = None) -> None:
        self.client, self.key = client, key
        #: the backup folder, made private before the lock is taken (as BackupLock does)
        self.folder = folder
        self.token: str | None = None
        self._stop: threading.Event | None = None
        self._ttl: float = self.TTL

    @property
    def held(self) -> bool:
        return self.token is not None

    @contextlib.contextmanager
    def _reaching(self) -> Iterator[None]:
        """A Redis error (down, timing out, refusing the login) as a BackupError
        naming the Redis, password masked, and the driver's one line of why."""
        from redis.exceptions import ConnectionError, RedisError, TimeoutError

        try:
            yield
        except RedisError as exc:
            why = " ".join(str(exc).split()) or type(exc).__name__
            password = _params(self.client).get("password")
            if password:
                why = why.replace(str(password), "***")
            state = ("cannot be reached" if isinstance(exc, (ConnectionError, TimeoutError))
                     else f"failed ({type(exc).__name__})")
            raise BackupError(f"the backup lock in Redis ({redis_shown(self.client)}) "
                              f"{state}: {why}") from None

    def acquire(self, ttl: float | None = None, renew: bool = True) -> "RedisBackupLock":
        """Take the lock; held ``ttl`` seconds unless renewed (``renew``: by a
        thread of this process until :meth:`release`)."""
        if self.folder is not None:  # root's archive there: the service's could not read it
            refuse_root_in_users_folder(private_backup_folder(self.folder))
        token = uuid.uuid4().hex
        with self._reaching():
            taken = self.client.set(self.key, token, nx=True, px=int((ttl or self.TTL) * 1000))
        if not taken:
            raise BackupBusy(BUSY)
        self.token, self._ttl = token, ttl or self.TTL
        if renew:
            self._renew()
        return self

    def adopt(self, token: str) -> "RedisBackupLock":
        """Hold the lock ``token`` was given for (a queued job's), or take it if it
        lapsed meanwhile; BackupBusy if someone else holds it now."""
        if self.folder is not None:  # a worker run as root (as acquire)
            refuse_root_in_users_folder(Path(self.folder))
        with self._reaching():
            if self.client.get(self.key) == token.encode():
                self.client.pexpire(self.key, self.TTL * 1000)
                self.token, self._ttl = token, self.TTL
                self._renew()
                return self
        return self.acquire()

    def _renew(self) -> None:
        renew = self.client.register_script(_RENEW)
        token = self.token
        self._stop = keep_renewing(self.TTL / 3, lambda: renew(keys=[self.key],
                                                               args=[token, self.TTL * 1000]),
                                   "backup-lock-renewal")

    def release(self) -> None:
        """Free the lock; when Redis cannot be reached, a warning: the lock lapses
        by itself (its renewal stops here), and the run keeps its own outcome."""
        token, self.token = self.token, None
        if self._stop is not None:
            self._stop.set()
        if token is None:
            return
        try:
            with self._reaching():
                self.client.register_script(_RELEASE)(keys=[self.key], args=[token])
        except BackupError as exc:
            log.warning("%s; the lock was not released and lapses by itself within %g s",
                        exc, self._ttl)

    def __enter__(self) -> "RedisBackupLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()

    def taken_elsewhere(self) -> bool:
        if self.held:
            return True
        with self._reaching():
            return bool(self.client.exists(self.key))
