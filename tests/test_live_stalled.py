"""Stalled uploads cannot take the site down: sixteen anonymous registration
POSTs that send their headers and part of the body, then stall, while the
public page keeps answering (the body is read before any database work)."""

from __future__ import annotations

import http.client
import socket
import time

import pytest
import sqlalchemy as sa

from tests.helpers import ADMIN
from tests.live_server import ARTIFACTS, pg_live_server

pytestmark = pytest.mark.live
STALLED = 16


def _server(pg_server, tmp_path_factory, name: str, command: str, env: dict):
    """A server on its own database with the demo trips; ``trip_id``: an open one."""
    with pg_live_server(pg_server, f"gr_{name}", tmp_path_factory.mktemp(name), admin=ADMIN,
                        log_path=ARTIFACTS / f"live-server-{name}.log", extra_env=env,
                        command=command) as srv:
        with srv.engine.connect() as conn:
            srv.trip_id = conn.execute(sa.text(
                "SELECT id FROM trip WHERE end_date >= current_date ORDER BY id LIMIT 1")
            ).scalar_one()
        yield srv


@pytest.fixture(scope="module", params=["run", "serve"])
def server(request, pg_server, tmp_path_factory):
    """The development server, and gunicorn as ``manage.py serve`` runs it."""
    yield from _server(pg_server, tmp_path_factory, f"live_stalled_{request.param}",
                       request.param, {"DATABASE_POOL_TIMEOUT": "2"})


def root_timings(port: int, times: int = 5, pause: float = 0.0) -> list[tuple[int, float]]:
    """``GET /`` ``times`` times: (status, seconds) of each."""
    timings = []
    for _ in range(times):
        started = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/")
        response = conn.getresponse()
        response.read()
        conn.close()
        timings.append((response.status, time.monotonic() - started))
        time.sleep(pause)
    return timings


def stall(port: int, trip_id: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    body_start = b"--x\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\na@b.cz\r\n"
    sock.sendall(
        f"POST /trips/{trip_id}/register HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: multipart/form-data; boundary=x\r\n"
        f"Content-Length: {4 * 1024 * 1024}\r\n\r\n".encode() + body_start)
    return sock  # and never sends the rest


def test_stalled_uploads_hold_no_connection_and_the_page_answers(server):
    sockets = [stall(server.port, server.trip_id) for _ in range(STALLED)]
    try:
        time.sleep(1.0)  # let every stalled request reach the server
        timings = root_timings(server.port, pause=0.3)
        with server.engine.connect() as conn:
            in_transaction = conn.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND xact_start IS NOT NULL")).scalar_one()
    finally:
        for sock in sockets:
            sock.close()
    assert all(status == 200 and seconds < 3 for status, seconds in timings), timings
    assert in_transaction == 0  # no stalled request holds a connection


@pytest.fixture(scope="module")
def few_threads(pg_server, tmp_path_factory):
    """gunicorn with 2 workers x 4 threads and a 2 s client timeout."""
    yield from _server(pg_server, tmp_path_factory, "live_stalled_threads", "serve",
                       {"WEB_THREADS": "4", "CLIENT_IO_TIMEOUT": "2"})


def test_more_stalled_uploads_than_threads_are_dropped_after_the_timeout(few_threads):
    """Twelve stalled uploads against eight threads: without a timeout on the
    client's socket every thread would wait for them forever and `GET /` never
    answer; with CLIENT_IO_TIMEOUT each stalled request ends with 408."""
    sockets = [stall(few_threads.port, few_threads.trip_id) for _ in range(12)]
    try:
        time.sleep(5.0)  # two rounds of 2 s timeouts: eight threads, then the other four
        timings = root_timings(few_threads.port)
        answers = []
        for sock in sockets:
            sock.settimeout(10)
            try:
                answers.append(sock.recv(64).split(b"\r\n")[0])
            except OSError as exc:
                answers.append(repr(exc).encode())
    finally:
        for sock in sockets:
            sock.close()
    assert all(status == 200 and seconds < 3 for status, seconds in timings), timings
    assert answers.count(b"HTTP/1.1 408 REQUEST TIMEOUT") == 12, answers
