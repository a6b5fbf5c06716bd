"""Rate-limit counters in an SQLite file, for every process of one machine.

The default store of the rate limits when there is no ``REDIS_URL``
(``RATELIMIT_STORAGE_URI=gr-sqlite:///<instance>/ratelimits.sqlite``): with
``manage.py serve``'s several worker processes, counters in memory would let a
client try the limit once per process. A ``limits`` storage backend (fixed
windows): each count is one short ``BEGIN IMMEDIATE`` transaction in WAL mode.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time

from limits.storage import Storage

SCHEME = "gr-sqlite"


class SQLiteStorage(Storage):
    STORAGE_SCHEME = [SCHEME]

    def __init__(self, uri: str, wrap_exceptions: bool = False, **options) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self.path = uri.split("://", 1)[1]
        self._local = threading.local()

    @property
    def base_exceptions(self):
        return sqlite3.Error

    def _db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("CREATE TABLE IF NOT EXISTS counter (key TEXT PRIMARY KEY, "
                         "count INTEGER NOT NULL, expires REAL NOT NULL)")
            for suffix in ("", "-wal", "-shm"):  # addresses and e-mails: this user only
                try:
                    os.chmod(self.path + suffix, 0o600)
                except OSError:
                    pass
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        db, now = self._db(), time.time()
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT count, expires FROM counter WHERE key = ?", (key,)).fetchone()
            if row is None or row[1] <= now:
                count = amount
                db.execute("INSERT OR REPLACE INTO counter VALUES (?, ?, ?)",
                           (key, count, now + expiry))
            else:
                count = row[0] + amount
                db.execute("UPDATE counter SET count = ? WHERE key = ?", (count, key))
            if random.random() < 0.01:  # now and then, forget finished windows
                db.execute("DELETE FROM counter WHERE expires <= ?", (now,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return count

    def get(self, key: str) -> int:
        row = self._db().execute("SELECT count FROM counter WHERE key = ? AND expires > ?",
                                 (key, time.time())).fetchone()
        return row[0] if row else 0

    def get_expiry(self, key: str) -> float:
        row = self._db().execute("SELECT expires FROM counter WHERE key = ?", (key,)).fetchone()
        return row[0] if row else time.time()

    def check(self) -> bool:
        try:
            self._db().execute("SELECT 1")
            return True
        except sqlite3.Error:
            return False

    def reset(self) -> int | None:
        return self._db().execute("DELETE FROM counter").rowcount

    def clear(self, key: str) -> None:
        self._db().execute("DELETE FROM counter WHERE key = ?", (key,))
