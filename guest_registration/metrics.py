"""Prometheus metrics at ``/metrics`` (``prometheus-client``, the ``metrics`` extra).

Off (404) unless ``METRICS_TOKEN`` or ``METRICS_ALLOW`` is set:

- ``METRICS_TOKEN``: a scraper sends ``Authorization: Bearer <token>`` (compared
  in constant time); no token: 401, a wrong one: 403.
- ``METRICS_ALLOW``: addresses and networks (comma-separated, ``10.0.0.5,
  192.168.0.0/24``) that may scrape without a token. Behind a proxy the client's
  address is the one ``TRUSTED_PROXIES`` makes trusted (:mod:`.headers`).

``serve`` runs several processes: every one of them (and ``manage.py worker``)
counts in files of ``PROMETHEUS_MULTIPROC_DIR`` (default ``<instance>/prometheus``),
which ``serve`` prepares at start (:mod:`.metrics_folder`); a scrape adds
them up. Plugins add collectors of their own to ``app.extensions[COLLECTORS]``
(values computed at scrape time). The host counts HTTP requests (by endpoint
name, never the raw path) and failed logins.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import logging
import os
import threading
import time
from typing import Any, Callable

from flask import Flask, Response, abort, current_app, g, has_app_context, request

from .config import ConfigError

log = logging.getLogger(__name__)
#: app.extensions key: collectors (objects with ``collect()``) plugins add for /metrics
COLLECTORS = "metrics_collectors"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_made: dict[Callable[[Any], Any], Any] = {}
_making = threading.Lock()

_DEFINITIONS: dict[str, Callable[[Any], Any]] = {
    "requests": lambda c: c.Counter(
        "guest_http_requests", "HTTP requests answered, by endpoint name, method and status",
        ["handler", "method", "status"]),
    "duration": lambda c: c.Histogram(
        "guest_http_request_duration_seconds", "Time to the response's headers, by endpoint",
        ["handler"], buckets=BUCKETS),
    "login_failures": lambda c: c.Counter(
        "guest_login_failures", "Failed logins and re-authentications", ["kind"]),
}


def _settings(app: Flask) -> None:
    """The settings' defaults (the app's config, then the environment, then these)."""
    for name in ("METRICS_TOKEN", "METRICS_ALLOW"):
        app.config.setdefault(name, os.environ.get(name, ""))
    app.config.setdefault(MULTIPROC_ENV, os.environ.get(MULTIPROC_ENV)
                          or os.path.join(app.instance_path, "prometheus"))


def _allow_list(config) -> str:
    """METRICS_ALLOW as one comma-separated string (it may be given as a list)."""
    raw = config.get("METRICS_ALLOW") or ""
    return (raw if isinstance(raw, str) else ",".join(str(part) for part in raw)).strip()


def enabled(app: Flask) -> bool:
    return bool((app.config.get("METRICS_TOKEN") or "").strip() or _allow_list(app.config))


@functools.lru_cache(maxsize=16)
def allowed_networks(raw: str) -> tuple:
    """METRICS_ALLOW as networks; a wrong entry is a ValueError naming it."""
    networks = []
    for part in (p.strip() for p in raw.split(",")):
        if part:
            try:
                networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ConfigError(f"METRICS_ALLOW: {part[:60]!r} is not an address or "
                                  f"network") from None
    return tuple(networks)


def _prometheus():
    """prometheus_client, or None when it is not installed."""
    try:
        import prometheus_client
        from prometheus_client import values
    except ImportError:
        return None
    if os.environ.get(MULTIPROC_ENV) and not getattr(values.ValueClass, "_multiprocess", False):
        # the folder was named after prometheus_client was imported (serve's master)
        values.ValueClass = values.MultiProcessValue()
    return prometheus_client


def metric(define: Callable[[Any], Any]):
    """The metric ``define(prometheus_client)`` makes, made once per process (the
    one cache of the host's and the plugins' metrics: wiring hands it to the
    backup plugin); None without prometheus_client, and where no scrape could read
    what is counted (:func:`_counts_reach_a_scrape`)."""
    if not _counts_reach_a_scrape():
        return None
    made = _made.get(define)
    if made is None:
        client = _prometheus()
        if client is None:
            return None
        with _making:
            made = _made.get(define)
            if made is None:
                made = _made[define] = define(client)
    return made


def _counts_reach_a_scrape() -> bool:
    """Whether what this process counts can be scraped: it counts into the shared
    folder (``PROMETHEUS_MULTIPROC_DIR``), or it is the web app with ``/metrics``
    on. Not so: a command run without that folder (its counts died with it) or a
    web app with metrics off; nothing is counted there, and prometheus_client is
    not imported (about 10 ms at the end of a backup). Outside an app: counted."""
    if os.environ.get(MULTIPROC_ENV) or not has_app_context():
        return True
    return bool(current_app.extensions.get("guest_web", True)) and enabled(current_app)


def _metric(name: str):
    return metric(_DEFINITIONS[name])


def _address_allowed(raw: str) -> bool:
    try:
        address = ipaddress.ip_address((request.remote_addr or "").split("%")[0])
    except ValueError:
        return False
    if getattr(address, "ipv4_mapped", None):
        address = address.ipv4_mapped
    return any(address in network for network in allowed_networks(raw))


def _refusal() -> Response | None:
    """None when this request may scrape; else the answer (404 off, 401, 403)."""
    token = (current_app.config.get("METRICS_TOKEN") or "").strip()
    allow = _allow_list(current_app.config)
    if not token and not allow:
        abort(404)  # off: the same page as any unknown address
    if allow and _address_allowed(allow):
        return None
    if not token:
        return Response("Forbidden\n", 403, mimetype="text/plain")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return Response("Unauthorized\n", 401, mimetype="text/plain",
                        headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        return Response("Forbidden\n", 403, mimetype="text/plain")
    return None


def metrics_view() -> Response:
    """``GET /metrics``: every process's counters and the plugins' collectors."""
    refused = _refusal()
    if refused is not None:
        return refused
    client = _prometheus()
    if client is None:
        return Response("prometheus-client is not installed: "
                        "pip install 'guest-registration[metrics]'\n", 503, mimetype="text/plain")
    registry = client.CollectorRegistry()
    folder = os.environ.get(MULTIPROC_ENV)
    if folder and os.path.isdir(folder):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry, folder)
    else:  # one process (manage.py run, tests): its own registry
        registry.register(client.REGISTRY)
    for collector in current_app.extensions.get(COLLECTORS, []):
        registry.register(collector)
    response = Response(client.generate_latest(registry), mimetype=client.CONTENT_TYPE_LATEST)
    response.headers["Cache-Control"] = "no-store"
    return response


def _started() -> None:
    g.metrics_started = time.perf_counter()


def _counted(response):
    """Every response, by endpoint name (never the raw path: no unbounded labels)."""
    try:
        requests = _metric("requests")
        if requests is not None:
            handler = request.endpoint or "none"
            method = request.method if request.method in METHODS else "other"
            requests.labels(handler, method, str(response.status_code)).inc()
            started = g.get("metrics_started")
            if started is not None:
                _metric("duration").labels(handler).observe(time.perf_counter() - started)
    except Exception as exc:  # a metric never breaks a response
        log.warning("counting a request failed (%s)", type(exc).__name__)
    return response


def count_login_failure(kind: str = "login") -> None:
    """A failed login (``login``) or re-authentication (``verify``)."""
    try:
        failures = _metric("login_failures")
        if failures is not None:
            failures.labels(kind).inc()
    except Exception as exc:
        log.warning("counting a failed login failed (%s)", type(exc).__name__)


def init_app(app: Flask) -> None:
    """Settings, ``/metrics``, the request counters; plugins add their collectors
    to ``app.extensions[COLLECTORS]``."""
    _settings(app)
    allowed_networks(_allow_list(app.config))  # a wrong entry stops start-up
    app.extensions.setdefault(COLLECTORS, [])
    app.add_url_rule("/metrics", "metrics", metrics_view, methods=["GET"])
    app.before_request(_started)
    app.after_request(_counted)
