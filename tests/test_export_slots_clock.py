"""EXPORT_MAX_CONCURRENT in Redis keeps time by Redis' clock: leases were thrown
out by the caller's clock (a server a minute ahead took every other server's live
slots) and a lease's renewal left the set's own expiry alone (an export streaming
longer than two leases, with nobody taking a slot meanwhile, lost the whole set and
the next export streamed past the limit)."""

from __future__ import annotations

import time
import uuid

import redis

from guest_backup.ops import slots


def _slots(client) -> slots.RedisSlots:
    return slots.RedisSlots(client, f"gr-test:{uuid.uuid4().hex}:export-slots")


def test_a_server_whose_clock_is_ahead_does_not_take_a_live_slot(redis_url, monkeypatch):
    client = redis.Redis.from_url(redis_url)
    here = _slots(client)
    first = here.acquire(1)  # streaming now
    assert first is not None
    try:
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + 120)  # two minutes ahead
        ahead = slots.RedisSlots(client, here.key)
        assert ahead.acquire(1) is None, "two exports stream at once with a limit of 1"
        assert ahead.active() == 1
    finally:
        monkeypatch.undo()
        first.release()
        client.delete(here.key)
        client.close()


def test_a_long_export_keeps_its_slot_past_two_leases(redis_url, monkeypatch):
    monkeypatch.setattr(slots, "LEASE", 1)
    monkeypatch.setattr(slots, "RENEW_EVERY", 0.25)
    client = redis.Redis.from_url(redis_url)
    here = _slots(client)
    held = here.acquire(1)
    assert held is not None
    try:
        time.sleep(3)  # more than twice the lease, renewed all along
        assert here.active() == 1
        assert here.acquire(1) is None, "the set expired under a live lease"
    finally:
        held.release()
        client.delete(here.key)
        client.close()
