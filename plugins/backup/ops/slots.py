"""EXPORT_MAX_CONCURRENT across every server process: an export streams only
while it holds one of that many slots; the next one is answered 429.

- Embedded (no ``REDIS_URL``): slot ``i`` is an ``flock`` on
  ``<instance>/export-slots/slot-i.lock``, shared by every process of this
  machine and freed by the kernel if a process dies.
- With Redis: a sorted set of leases, taken atomically by a Lua script; a holder
  renews its lease while it streams, and a dead process's lease runs out after
  ``LEASE`` seconds.
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

from guest_backup.engines import try_flock
from guest_backup.ops.locks import keep_renewing
from guest_backup.ops.metrics import slot_freed, slot_taken

LEASE = 60  # seconds a Redis slot lives without renewal
RETRY_BUSY = 10  # seconds a client told 429 (every slot taken) should wait
RENEW_EVERY = LEASE / 4

#: Redis' own clock, not the caller's: a server whose clock ran a minute ahead
#: threw every other server's live leases out and streamed past the limit
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""
_TAKE = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[1] * 2)
  return 1
end
return 0
"""
#: a holder's lease renewed, and the set's own expiry with it (an export streaming
#: longer than two leases with nobody taking a slot meanwhile lost the whole set)
_RENEW = _NOW + """
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  redis.call('ZADD', KEYS[1], 'XX', now, ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[1] * 2)
  return 1
end
return 0
"""
_ACTIVE = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
return redis.call('ZCARD', KEYS[1])
"""


class Slot:
    """A held slot; ``release()`` is idempotent (the export calls it when it closes)."""

    def __init__(self, release=None) -> None:
        self._release = release
        self._lock = threading.Lock()
        if release is not None:
            slot_taken()  # the gauge of slots in use (never raises)

    def release(self) -> None:
        with self._lock:
            release, self._release = self._release, None
        if release is not None:
            try:
                release()
            finally:
                slot_freed()


class FileSlots:
    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def acquire(self, limit: int) -> Slot | None:
        if limit <= 0:
            return Slot()
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for i in range(limit):
            fd = try_flock(self.folder / f"slot-{i}.lock")
            if fd is not None:
                return Slot(lambda fd=fd: os.close(fd))  # closing frees the flock
        return None


class RedisSlots:
    def __init__(self, client, key: str) -> None:
        self.client, self.key = client, key
        self._take = client.register_script(_TAKE)
        self._renew = client.register_script(_RENEW)
        self._active = client.register_script(_ACTIVE)

    def acquire(self, limit: int) -> Slot | None:
        if limit <= 0:
            return Slot()
        token = uuid.uuid4().hex
        if not self._take(keys=[self.key], args=[LEASE, limit, token]):
            return None
        stop = keep_renewing(RENEW_EVERY,
                             lambda: self._renew(keys=[self.key], args=[LEASE, token]),
                             "export-slot-lease")

        def release() -> None:
            stop.set()
            try:
                self.client.zrem(self.key, token)
            except Exception:  # the lease runs out by itself
                pass

        return Slot(release)

    def active(self, limit: int = 0) -> int:
        return int(self._active(keys=[self.key], args=[LEASE]))
