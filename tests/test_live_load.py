"""Sixteen slow exports at once against the real server (``manage.py run`` on
PostgreSQL): every export completes with all its rows or is told to come back
(429/503 with Retry-After) within 5 s, the public page stays fast, and the
database sees at most one connection per export in progress."""

from __future__ import annotations

import gc
import http.client
import statistics
import threading
import time

import pytest
import sqlalchemy as sa

from tests.helpers import ADMIN, insert_bulk_guests
from tests.live_server import ARTIFACTS, pg_live_server

pytestmark = pytest.mark.live

ROWS = 60_000          # ~7 MB of CSV, more than loopback socket buffers: ~14 s at 500 KB/s
CLIENTS = 16
READ_RATE = 500 * 1024  # bytes per second per client
ANSWER_WITHIN = 5.0     # seconds until the status line


@pytest.fixture(scope="module")
def server(pg_server, tmp_path_factory):
    with pg_live_server(pg_server, "gr_live_load", tmp_path_factory.mktemp("live-load"),
                        admin=ADMIN, log_path=ARTIFACTS / "live-server-load.log") as srv:
        insert_bulk_guests(srv.engine, ROWS, 2024, 3, "Load")
        srv.token = srv.auth_token(ADMIN[0])
        yield srv


def slow_export(srv, results: list, streaming: list, lock: threading.Lock) -> None:
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
    try:
        conn.request("GET", "/api/backup/guests?year=2024&month=3&format=csv",
                     headers={"Authentication-Token": srv.token})
        response = conn.getresponse()
        answered = time.monotonic() - started
        outcome = {"status": response.status, "answered": answered,
                   "retry_after": response.getheader("Retry-After")}
        if response.status == 200:
            with lock:
                streaming.append(1)
            expected, lines = int(response.getheader("X-Export-Rows")), 0
            try:
                while chunk := response.read(64 * 1024):
                    lines += chunk.count(b"\n")  # (no line break inside these fields)
                    time.sleep(len(chunk) / READ_RATE)
            finally:
                with lock:
                    streaming.pop()
            outcome.update(expected=expected, rows=lines - 1)  # the header line
        else:
            response.read()
        results.append(outcome)
    except Exception as exc:  # recorded, the test fails on it
        results.append({"status": type(exc).__name__, "answered": time.monotonic() - started})
    finally:
        conn.close()


def test_sixteen_slow_exports_and_the_public_page(server):
    results: list[dict] = []
    streaming: list[int] = []
    lock = threading.Lock()
    page_times: list[float] = []
    samples: list[tuple[int, int]] = []
    stop = threading.Event()

    def poll_page():
        while not stop.is_set():
            started = time.monotonic()
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                response.read()
                page_times.append(time.monotonic() - started if response.status == 200 else 99)
            except Exception:
                page_times.append(99.0)
            finally:
                conn.close()
            stop.wait(max(0.0, 0.5 - (time.monotonic() - started)))

    def sample_database():
        while not stop.is_set():
            with server.engine.connect() as conn:
                in_transaction = conn.execute(sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() AND xact_start IS NOT NULL")).scalar_one()
            with lock:
                samples.append((in_transaction, len(streaming)))
            stop.wait(0.3)

    # The clocks are the clients', in this process: a full collection here pauses them
    # all at once. In one CI run (2026-12-06) all 16 answers took 7.75 s to arrive,
    # though the server's log shows it answered them within its first second: this
    # process then held 8.2 M objects (every app the suite built, kept by a logout
    # receiver; fixed), and a full collection took 7.3-8.0 s. With ~1 M objects it
    # still takes ~1 s, so the window measured is kept free of collections.
    gc.collect()
    gc.disable()
    try:
        helpers = [threading.Thread(target=poll_page),
                   threading.Thread(target=sample_database)]
        for t in helpers:
            t.start()
        clients = [threading.Thread(target=slow_export, args=(server, results, streaming, lock))
                   for _ in range(CLIENTS)]
        for t in clients:
            t.start()
        for t in clients:
            t.join(timeout=120)
        stop.set()
        for t in helpers:
            t.join(timeout=30)
    finally:
        gc.enable()

    assert len(results) == CLIENTS
    completed = [r for r in results if r["status"] == 200]
    refused = [r for r in results if r["status"] in (429, 503)]
    assert len(completed) + len(refused) == CLIENTS, results  # no 500, no error, no hang
    assert completed, results
    assert all(r["rows"] == r["expected"] == ROWS for r in completed), completed
    assert all(int(r["retry_after"]) > 0 for r in refused), refused
    assert max(r["answered"] for r in results) < ANSWER_WITHIN, results
    assert len(page_times) >= 4
    p95 = statistics.quantiles(page_times, n=20)[-1] if len(page_times) >= 20 else max(page_times)
    assert p95 < 1.0, sorted(page_times)
    # at most one connection per export streaming (EXPORT_MAX_CONCURRENT, 2 by
    # default), plus one for a page at that instant; never a request left in a
    # transaction (clients see an export start a moment after its snapshot does,
    # so the samples are compared with the limit, not with the clients' count)
    assert max(in_tx for in_tx, _ in samples) <= 2 + 1, samples
    assert max(s[0] for s in samples) >= 1  # the sampler did see the exports' snapshots
    print(f"{len(completed)} completed, {len(refused)} told to retry; GET / p95 {p95:.3f} s "
          f"over {len(page_times)}; max in transaction {max(s[0] for s in samples)}")
