"""The one-backup-at-a-time lock, its only owner.

- :class:`BackupLock`: an ``flock`` on ``.backup.lock`` in the backup folder, for
  every process of this machine (embedded mode, no ``REDIS_URL``).
- :class:`RedisBackupLock`: a Redis key with a token and a short expiry, renewed
  by its holder while the backup runs, for every process and machine using one
  Redis; a holder that dies frees it within ``TTL`` seconds. A web process takes
  it for a backup it queues (longer expiry, so the job waits for a worker) and
  the worker *adopts* it.

Both raise :class:`BackupBusy` at once when the lock is taken, and ``release()``
may be called from another thread than ``acquire()``.
"""

from __future__ import annotations

import fcntl
import os
import threading
import uuid
from pathlib import Path

from .errors import BackupBusy, BackupError

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
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            raise BackupError(f"the backup folder {self.folder} cannot be created") from None
        try:
            fd = os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            raise BackupError(f"the backup folder {self.folder} is not writable") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BackupBusy(BUSY) from None
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
        path = self.folder / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)


class RedisBackupLock:
    TTL = 30  # seconds without renewal before a dead holder's lock is free

    def __init__(self, client, key: str) -> None:
        self.client, self.key = client, key
        self.token: str | None = None
        self._stop: threading.Event | None = None

    @property
    def held(self) -> bool:
        return self.token is not None

    def acquire(self, ttl: float | None = None, renew: bool = True) -> "RedisBackupLock":
        """Take the lock; held ``ttl`` seconds unless renewed (``renew``: by a
        thread of this process until :meth:`release`)."""
        token = uuid.uuid4().hex
        if not self.client.set(self.key, token, nx=True, px=int((ttl or self.TTL) * 1000)):
            raise BackupBusy(BUSY)
        self.token = token
        if renew:
            self._renew()
        return self

    def adopt(self, token: str) -> "RedisBackupLock":
        """Hold the lock ``token`` was given for (a queued job's), or take it if it
        lapsed meanwhile; BackupBusy if someone else holds it now."""
        if self.client.get(self.key) == token.encode():
            self.token = token
            self.client.pexpire(self.key, self.TTL * 1000)
            self._renew()
            return self
        return self.acquire()

    def _renew(self) -> None:
        stop = self._stop = threading.Event()
        renew = self.client.register_script(_RENEW)
        token = self.token

        def run() -> None:
            while not stop.wait(self.TTL / 3):
                try:
                    renew(keys=[self.key], args=[token, self.TTL * 1000])
                except Exception:  # Redis away for a moment: try again
                    pass

        threading.Thread(target=run, name="backup-lock-renewal", daemon=True).start()

    def release(self) -> None:
        token, self.token = self.token, None
        if self._stop is not None:
            self._stop.set()
        if token is not None:
            self.client.register_script(_RELEASE)(keys=[self.key], args=[token])

    def __enter__(self) -> "RedisBackupLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()

    def taken_elsewhere(self) -> bool:
        return self.held or bool(self.client.exists(self.key))
