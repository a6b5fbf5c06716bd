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

import os
import threading
import uuid
from pathlib import Path
from typing import Callable

from guest_backup.engines import try_flock
from guest_backup.errors import BackupBusy, BackupError

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
            except Exception:
                pass

    threading.Thread(target=run, name=name, daemon=True).start()
    return stop


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
            fd = try_flock(self.folder / LOCK_NAME)
        except OSError:
            raise BackupError(f"the backup folder {self.folder} is not writable") from None
        if fd is None:
            raise BackupBusy(BUSY)
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
        renew = self.client.register_script(_RENEW)
        token = self.token
        self._stop = keep_renewing(self.TTL / 3, lambda: renew(keys=[self.key],
                                                               args=[token, self.TTL * 1000]),
                                   "backup-lock-renewal")

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
