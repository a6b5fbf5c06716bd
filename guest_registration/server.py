"""``manage.py serve``: the app under gunicorn, with settings fit for it.

- ``gthread`` workers: threads serve pages while others stream long exports or
  wait on a slow client; a stalled upload holds a thread, never a database
  connection (bodies are read before any database work).
- Each worker builds its own app (no preloading), so no database connection or
  pool crosses a ``fork``.
- The worker timeout is a liveness check of the worker's main loop (a long export
  never trips it); ``graceful_timeout`` lets running exports finish on a restart
  (``kill -HUP`` reloads workers one by one, ``kill -TERM`` stops gracefully).
- A client's socket waits ``CLIENT_IO_TIMEOUT`` seconds for progress, then the
  request ends (408): a stalled upload frees its thread.
- Workers build their app with the function the CLI was given (``load_app``), passed
  in by ``manage.py serve``: this module imports no app factory.
- gunicorn's own ``X-Forwarded-*`` handling is off: whether a proxy's headers count
  is ``TRUSTED_PROXIES``'s decision alone (:mod:`.headers`).
"""

from __future__ import annotations

import os
import socket
from typing import Any, Callable

from gunicorn.app.base import BaseApplication

from .web import CLIENT_STALLED

DEFAULT_WORKERS = 2
DEFAULT_THREADS = 32
#: seconds a restart waits for running requests (a long export) before ending them
GRACEFUL_TIMEOUT = 120


class SocketTimeout:
    """WSGI middleware: every read from (and write to) a client's socket waits at
    most ``seconds`` for progress, so a client that stalls in the middle of its
    request body frees its thread after that long (it gets 408) instead of holding
    it forever. A slow client that keeps sending is not affected."""

    def __init__(self, app, seconds: float) -> None:
        self.app, self.seconds = app, seconds

    def __call__(self, environ, start_response):
        sock = environ.get("gunicorn.socket")
        if sock is None or self.seconds <= 0:
            return self.app(environ, start_response)
        sock.settimeout(self.seconds)
        body = self.app(environ, start_response)
        if not environ.get(CLIENT_STALLED):
            return body
        return _ThenHangUp(body, sock)


class _ThenHangUp:
    """The response to a client that stalled, then no more reading from it: its
    connection is not kept alive (nor is the rest of its body waited for)."""

    def __init__(self, body, sock) -> None:
        self.body, self.sock = body, sock

    def __iter__(self):
        return iter(self.body)

    def close(self) -> None:
        try:
            if hasattr(self.body, "close"):
                self.body.close()
        finally:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


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
    """gunicorn running ``load_app()`` (a new app) in each worker."""

    def __init__(self, options: dict, load_app: Callable[[], Any]) -> None:
        self.options = options
        self.load_app = load_app
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings:  # settings newer than the installed gunicorn: skip
                self.cfg.set(key, value)

    def load(self):
        app = self.load_app()
        app.wsgi_app = SocketTimeout(app.wsgi_app, int(app.config["CLIENT_IO_TIMEOUT"]))
        return app


def serve(host: str, port: int, workers: int, threads: int, *,
          load_app: Callable[[], Any], **extra: Any) -> None:
    """Run gunicorn until it is stopped; each worker calls ``load_app()`` for its app.
    With metrics on, PROMETHEUS_MULTIPROC_DIR is prepared first and a worker that
    exits is marked dead (:mod:`.metrics`)."""
    from .metrics_folder import child_exit, prepare_for_serve

    if prepare_for_serve(load_app):
        extra.setdefault("child_exit", child_exit)
    GuestRegistrationServer(server_options(host, port, workers, threads, **extra),
                            load_app).run()
