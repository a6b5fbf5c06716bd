"""The app's one Redis connection, when ``REDIS_URL`` is set.

Without it everything runs embedded (in-process jobs, file locks, limits in
memory); with it, the rate limits, background jobs (:mod:`.tasks`) and what
plugins coordinate across processes (locks, counters) live in Redis. Every key
starts with ``REDIS_PREFIX``, so several instances can share one server.
"""

from __future__ import annotations

from flask import Flask, current_app

EXTENSION = "guest_redis"


class RedisUnavailable(RuntimeError):
    """REDIS_URL is set but the ``redis`` package is missing."""


def redis_client(app: Flask | None = None):
    """The app's ``redis.Redis`` client (built once), or None without REDIS_URL."""
    app = app or current_app
    url = (app.config.get("REDIS_URL") or "").strip()
    if not url:
        return None
    client = app.extensions.get(EXTENSION)
    if client is None:
        try:
            import redis
        except ImportError:
            raise RedisUnavailable("REDIS_URL is set but the redis package is not installed "
                                   "(pip install 'guest-registration[redis]')") from None
        client = app.extensions[EXTENSION] = redis.Redis.from_url(
            url, socket_connect_timeout=5, socket_timeout=30, health_check_interval=30)
    return client


def redis_key(app: Flask | None, *parts: str) -> str:
    """A key of this app: ``REDIS_PREFIX`` then ``parts`` joined by ``:``."""
    app = app or current_app
    return app.config["REDIS_PREFIX"] + ":".join(parts)
