"""``manage.py serve``: the app under gunicorn, with settings fit for it.

- ``gthread`` workers: threads serve pages while others stream long exports or
  wait on a slow client; a stalled upload holds a thread, never a database
  connection (bodies are read before any database work).
- Each worker builds its own app (no preloading), so no database connection or
  pool crosses a ``fork``.
- The worker timeout is a liveness check of the worker's main loop (a long export
  never trips it); ``graceful_timeout`` lets running exports finish on a restart
  (``kill -HUP`` reloads workers one by one, ``kill -TERM`` stops gracefully).
- gunicorn's own ``X-Forwarded-*`` handling is off: whether a proxy's headers count
  is ``TRUSTED_PROXIES``'s decision alone (:mod:`.headers`).
"""

from __future__ import annotations

import os
from typing import Any

from gunicorn.app.base import BaseApplication

DEFAULT_WORKERS = 2
DEFAULT_THREADS = 32
#: seconds a restart waits for running requests (a long export) before ending them
GRACEFUL_TIMEOUT = 120


def server_options(host: str, port: int, workers: int, threads: int, **extra: Any) -> dict:
    options = {
        "bind": f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread",
        "timeout": 60,
        "graceful_timeout": GRACEFUL_TIMEOUT,
        "keepalive": 5,
        "forwarded_allow_ips": "",
        "proxy_allow_ips": "",
        "accesslog": "-",
        "errorlog": "-",
        "proc_name": "guest-registration",
        # gunicorn 27's control socket is one per user: two servers would share it
        "control_socket_disable": True,
    }
    if os.path.isdir("/dev/shm"):
        options["worker_tmp_dir"] = "/dev/shm"  # heartbeat files off a slow disk
    options.update({k: v for k, v in extra.items() if v is not None})
    return options


class GuestRegistrationServer(BaseApplication):
    """gunicorn running ``create_app()`` in each worker."""

    def __init__(self, options: dict) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings:  # settings newer than the installed gunicorn: skip
                self.cfg.set(key, value)

    def load(self):
        from .cli import load_app

        return load_app()


def serve(host: str, port: int, workers: int, threads: int, **extra: Any) -> None:
    GuestRegistrationServer(server_options(host, port, workers, threads, **extra)).run()
