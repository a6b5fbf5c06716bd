"""The backup lock in Redis when Redis is down: ``backup``, ``restore-test`` and
``backup-prune`` fail with one ``Error:`` line naming the Redis (password masked),
exit 1, and a backup is audited and pings ``/fail``; a Redis that goes away
while a backup runs leaves the good backup good (a warning in the log; the
unreleased lock lapses by itself)."""

from __future__ import annotations

import logging
import socket
import threading

import pytest
import redis

from guest_backup.errors import BackupBusy, BackupError
from guest_backup.ops.locks import RedisBackupLock
from tests.helpers import missing
from tests.live_server import free_port
from tests.test_remote import entries, pings  # noqa: F401 (fixture)

REDIS_URL = "redis://127.0.0.1:6379/12"
PASSWORD = "redis-PASSWORD-never-shown-0815"


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("Error:")]


@pytest.fixture
def down():
    """A Redis URL (with a password) on a closed port, and how it is shown."""
    port = free_port()
    return (f"redis://:{PASSWORD}@127.0.0.1:{port}/12",
            f"the backup lock in Redis (redis://:***@127.0.0.1:{port}/12) cannot be reached: ")


@pytest.fixture
def redis12():
    """Database 12 of the local Redis, empty before and after (skipped without one,
    unless REQUIRE_REDIS=1)."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.flushdb()
    except redis.RedisError as exc:
        missing("REQUIRE_REDIS", f"no Redis at {REDIS_URL}: {exc}")
    yield client
    client.flushdb()


class Proxy:
    """A TCP forwarder to the real Redis that can be cut: Redis going away."""

    def __init__(self, port: int = 6379) -> None:
        self.target, self.conns = ("127.0.0.1", port), []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass

    def cut(self) -> None:
        self.server.shutdown(socket.SHUT_RDWR)  # wakes accept(): the port stops listening
        self.server.close()
        for conn in list(self.conns):
            try:
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            except OSError:
                pass


@pytest.mark.parametrize("backend", ["sqlite"])
def test_backup_with_redis_down_is_audited_pinged_and_one_line(app, runner, backend, pings,
                                                               down):
    url, shown = down
    app.config.update(REDIS_URL=url, BACKUP_HEALTHCHECK_URL=pings.url)
    result = runner.invoke(args=["backup"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    (line,) = error_lines(result.output)
    assert line.startswith(f"Error: {shown}") and "Connection refused" in line
    assert PASSWORD not in result.output and "Traceback" not in result.output
    (entry,) = entries(app, "backup")
    assert (entry.outcome, entry.message) == ("failed", line[len("Error: "):])
    assert list(pings) == ["/ping/0b9f/fail"]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_drill_and_prune_with_redis_down_are_one_line(app, runner, backend, down):
    url, shown = down
    app.config["REDIS_URL"] = url
    drill = runner.invoke(args=["restore-test"])
    assert drill.exit_code == 1 and isinstance(drill.exception, SystemExit), drill.output
    (line,) = error_lines(drill.output)
    assert line.startswith(f"Error: restore drill failed: {shown}")
    assert [e.outcome for e in entries(app, "restore-test")] == ["failed"]
    prune = runner.invoke(args=["backup-prune"])
    assert prune.exit_code == 1 and isinstance(prune.exception, SystemExit), prune.output
    (line,) = error_lines(prune.output)
    assert line.startswith(f"Error: {shown}")
    assert PASSWORD not in drill.output + prune.output


def test_every_lock_call_says_redis_cannot_be_reached(down):
    url, shown = down
    lock = RedisBackupLock(redis.Redis.from_url(url, socket_connect_timeout=2), "t:backup-lock")
    for call in (lock.acquire, lambda: lock.adopt("a-token"), lock.taken_elsewhere):
        with pytest.raises(BackupError) as raised:
            call()
        assert str(raised.value).startswith(shown) and PASSWORD not in str(raised.value)
        assert not isinstance(raised.value, BackupBusy)
    assert not lock.held
    lock.release()  # holds nothing: nothing to do


def test_a_lock_whose_redis_went_away_is_released_with_a_warning(redis12, caplog):
    proxy = Proxy()
    lock = RedisBackupLock(redis.Redis.from_url(f"redis://127.0.0.1:{proxy.port}/12",
                                                socket_connect_timeout=2), "t:backup-lock")
    lock.acquire()
    assert redis12.get("t:backup-lock") == lock.token.encode()
    proxy.cut()
    with caplog.at_level(logging.WARNING, logger="guest_backup.ops.locks"):
        lock.release()
    assert not lock.held
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "guest_backup.ops.locks"]
    assert "cannot be reached" in warning and "lapses" in warning
    assert 0 < redis12.pttl("t:backup-lock") <= RedisBackupLock.TTL * 1000  # it lapses


@pytest.mark.parametrize("backend", ["sqlite"])
def test_redis_going_away_mid_backup_leaves_a_good_backup(app, runner, backend, redis12, pings,
                                                          monkeypatch, caplog):
    from guest_backup.ops import pipeline

    proxy = Proxy()
    app.config.update(REDIS_URL=f"redis://127.0.0.1:{proxy.port}/12",
                      BACKUP_HEALTHCHECK_URL=pings.url)
    real = pipeline.create_backup

    def then_redis_goes_away(*args, **kwargs):
        result = real(*args, **kwargs)
        proxy.cut()
        return result

    monkeypatch.setattr(pipeline, "create_backup", then_redis_goes_away)
    with caplog.at_level(logging.WARNING):
        result = runner.invoke(args=["backup"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].endswith(".zip")
    assert [e.outcome for e in entries(app, "backup")] == ["ok"]
    assert list(pings) == ["/ping/0b9f"]
    assert any("cannot be reached" in r.getMessage() and "lapses" in r.getMessage()
               for r in caplog.records if r.name == "guest_backup.ops.locks")
