#!/usr/bin/env python
"""Load test: exports, public registrations, stalled uploads and a web backup at once.

    .venv/bin/python benchmarks/load_test.py [--scenario default|exports8] [--redis]
        [--seconds S] [--clients N] [--registrars N] [--stalled N] [--rows 200000]
        [--workers W] [--threads T] [--export-max-concurrent N] [--database-url URL]
        [--replace]

Fills a fresh database (generate_data.py: 200,000 guests in 2025-06, 1,000 in
2025-07) plus four trips that are still open (the generated ones ended in 2025),
serves the app with ``manage.py serve`` (gunicorn gthread workers, the app's own
settings; default 2 workers x 32 threads) on a free 127.0.0.1 port and drives it:

* ``default`` (60 s): 20 export clients looping over GET /api/backup/guests (four
  months x every format); 2 registration clients on the public form; 16 stalled
  uploads (a multipart POST to /trips/<id>/register announcing 4 MiB, of which
  only the headers and the first 64 KiB are sent, then nothing for the whole run:
  they should hold server threads, never database connections); a probe doing
  GET / every 0.5 s; and at half time one system backup through the admin page
  (login, CSRF, start, poll /admin/backup/job, download).
* ``exports8`` (30 s): 8 export clients on the 200,000-row month only, with
  EXPORT_MAX_CONCURRENT=8, plus the GET / probe: the public page while 8 large
  exports stream.

An export over EXPORT_MAX_CONCURRENT (app default 2, shared by every server
process) gets 429 with Retry-After: that is deliberate. Those 429s are counted in
their own column, not as errors, and the client waits min(Retry-After,
--retry-wait) (default 1 s) and asks again for the same export.

The app runs with TRUSTED_PROXIES=1, as in production behind one reverse proxy, and
every registration (its form GET and its POST) carries its own X-Forwarded-For
address (10.x.y.z from a counter), as many guests behind the proxy would; without
that all registrations would come from 127.0.0.1 and the per-address limit
(REGISTRATION_LIMIT_PER_ADDRESS, 20 per hour) would answer 429 after 20.

``--redis`` sets REDIS_URL (default redis://127.0.0.1:6379/12; that database is
FLUSHDB'd before and after) for the server and starts one ``manage.py worker`` (RQ)
for the run: the page's backup is then queued for it, and the rate limits and the
export slots live in Redis. The job's state is read from /admin/backup/job either way.

The registration clients and the probe run in a second (spawned) client process,
so their timings do not include waiting for the export clients' GIL; export bodies
are written to files during the run and parsed after it.

Checks that nothing was lost (every export parses and has exactly X-Export-Rows
rows, every successful registration is in the database, the web backup verifies and
restores every guest that existed when it started, the stalled uploads held no
database connection), that nothing failed other than the deliberate 429s, and
reports the goals (public form p95 < 500 ms; GET / p95
< 1 s while 8 exports stream). Prints a Markdown report (also
benchmarks/results/load.md, or load-<scenario>[-redis].md with --scenario/--redis;
server and worker output next to it in <report>-server.log / <report>-worker.log) and exits 1 if a
check failed (a missed goal alone does not). Everything is bounded in time;
databases, processes, sockets and temp dirs are removed at the end.
"""

from __future__ import annotations

import argparse
import csv
import functools
import http.client
import io
import itertools
import json
import math
import multiprocessing
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import psycopg2
from psycopg2 import sql as pgsql

import generate_data as gen
from guest_registration.demo import tiny_png
from server_process import free_port, start_server, start_worker, stop_server

ROOT = gen.ROOT
RESULTS = Path(__file__).resolve().parent / "results"
ADMIN = ("load-admin@example.com", "load-admin-password-1")
TIMEOUT = 120  # seconds per socket operation; a timeout counts as an error
STALLED_LENGTH = 4 * 1024 * 1024  # what a stalled upload announces
STALLED_SENT = 64 * 1024  # what it sends of its file part before stalling
CSRF_RE = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"|value="([^"]+)"[^>]*name="csrf_token"')
SCENARIOS = {  # defaults per scenario; every one can be overridden on the command line
    "default": dict(seconds=60, clients=20, registrars=2, stalled=16, backup=True,
                    months="all", export_max_concurrent=None),
    "exports8": dict(seconds=30, clients=8, registrars=0, stalled=0, backup=False,
                     months="large", export_max_concurrent=8),
}
FORM_GET, FORM_POST, PAGE = "public form: GET register", "public form: POST register", "public page: GET /"


class Client:
    """A browser-like HTTP client: one connection per request, cookies kept."""

    def __init__(self, port: int, headers: dict | None = None):
        self.port, self.headers, self.cookies = port, dict(headers or {}), {}

    def request(self, method, path, body=None, headers=None, sink=None):
        """(status, headers, body, seconds from sending to the last byte). With ``sink``
        (a binary file) a 200 body is written there in 1 MB reads, and ``body`` is
        b"" (the byte count is ``sink.tell()``)."""
        hdrs = {**self.headers, **(headers or {})}
        if self.cookies:
            hdrs["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        start = time.perf_counter()
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            if sink is not None and resp.status == 200:
                sink.seek(0)
                sink.truncate()
                while chunk := resp.read(1 << 20):  # IncompleteRead if a stream breaks
                    sink.write(chunk)
                data = b""
            else:
                data = resp.read()  # raises IncompleteRead if a chunked stream breaks
            elapsed = time.perf_counter() - start
        finally:
            conn.close()
        for cookie in resp.headers.get_all("Set-Cookie") or []:
            name, _, value = cookie.split(";", 1)[0].partition("=")
            self.cookies[name.strip()] = value
        return resp.status, resp.headers, data, elapsed


class Stats:
    """Latencies, bytes, rows, deliberate 429s per kind of request, every error;
    thread-safe."""

    def __init__(self):
        self.lock = threading.Lock()
        self.times, self.bytes, self.rows = defaultdict(list), defaultdict(int), defaultdict(int)
        self.busy = defaultdict(int)  # kind -> deliberate 429s (export limit)
        self.errors, self.error_kinds = [], defaultdict(int)  # "kind: message", kind -> count
        self.export_rows = defaultdict(set)  # (year, month) -> every X-Export-Rows seen
        # export requests in flight now (client side), shared with the public clients'
        # process; None there (read through ``exporting_seen``)
        self.exporting = None
        self.probe_exporting = []  # export requests in flight at each probe request
        self.verified = 0  # export bodies parsed with X-Export-Rows rows

    def ok(self, kind, seconds, nbytes):
        with self.lock:
            self.times[kind].append(seconds)
            self.bytes[kind] += nbytes

    def error(self, kind, message):
        with self.lock:
            self.errors.append(f"{kind}: {message}")
            self.error_kinds[kind] += 1

    def busy429(self, kind):
        with self.lock:
            self.busy[kind] += 1

    def in_flight(self, delta):
        if self.exporting is not None:
            with self.exporting.get_lock():
                self.exporting.value += delta

    def merge(self, other: dict):
        """Add the results of the public clients' process (``export()`` there)."""
        with self.lock:
            for kind, values in other["times"].items():
                self.times[kind] += values
            for name in ("bytes", "busy", "error_kinds"):
                for kind, n in other[name].items():
                    getattr(self, name)[kind] += n
            self.errors += other["errors"]
            self.probe_exporting += other["probe_exporting"]

    def export(self) -> dict:
        with self.lock:
            return {"times": dict(self.times), "bytes": dict(self.bytes), "busy": dict(self.busy),
                    "error_kinds": dict(self.error_kinds), "errors": list(self.errors),
                    "probe_exporting": list(self.probe_exporting)}


def call(stats, kind, client, method, path, expect, check=None, retry_busy=None, stop=None,
         **kw):
    """One request; a wrong status, an exception or a failed ``check(headers, body)``
    (returns a problem or None) is an error. With ``retry_busy`` (seconds), a 429 is
    counted as deliberate and the request is repeated after min(Retry-After,
    retry_busy) s until ``stop`` is set. Returns (headers, body) or None."""
    while True:
        if retry_busy is not None:
            stats.in_flight(+1)  # an export request on the wire (not waiting after a 429)
        try:
            status, headers, body, seconds = client.request(method, path, **kw)
        except Exception as exc:  # timeouts, resets, broken chunked streams
            stats.error(kind, f"{method} {path}: {type(exc).__name__}: {exc}")
            return None
        finally:
            if retry_busy is not None:
                stats.in_flight(-1)
        if status == 429 and retry_busy is not None:
            stats.busy429(kind)
            try:
                wait = min(float(headers.get("Retry-After", retry_busy)), retry_busy)
            except ValueError:
                wait = retry_busy
            if stop.wait(wait):
                return None
            continue
        problem = (f"HTTP {status}, body {body[:300]!r}" if status != expect
                   else check(headers, body) if check else None)
        if problem:
            stats.error(kind, f"{method} {path}: {problem}")
            return None
        stats.ok(kind, seconds, len(body) if kw.get("sink") is None else kw["sink"].tell())
        return headers, body


def csrf_token(html: bytes) -> str:
    m = CSRF_RE.search(html.decode("utf-8", "replace"))
    if not m:
        raise RuntimeError("no csrf_token in the page")
    return m.group(1) or m.group(2)


def multipart(fields: dict, files: list, boundary: str | None = None) -> tuple[bytes, str]:
    boundary = boundary or uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"; filename="{fn}"\r\n'
              f"Content-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n"
              for k, fn, ctype, data in files]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def parsed_rows(fmt: str, body: bytes) -> int:
    if fmt == "csv":
        return sum(1 for _ in csv.reader(io.StringIO(body.decode("utf-8"), newline=""))) - 1
    if fmt == "json":
        return len(json.loads(body))
    raise ValueError(f"the load test cannot parse format {fmt!r}")


def export_rows_header(headers, body, got):
    """None if X-Export-Rows is a whole number (stored in ``got``)."""
    try:
        got["rows"] = int(headers["X-Export-Rows"])
    except (KeyError, TypeError, ValueError):
        return f"no usable X-Export-Rows header: {headers.get('X-Export-Rows')!r}"
    return None


def parsed_file_rows(fmt: str, path: str) -> int:
    return parsed_rows(fmt, Path(path).read_bytes())


class Verifier:
    """Export bodies are written to files while the run lasts (as a real downloader
    would) and parsed only after it, in a pool of spawned processes: parsing 200,000-row
    bodies in the run (``json.loads`` of 70 MB holds the GIL for about a second) would
    slow the export clients down and take the machine's 2 cores from the server."""

    def __init__(self, folder: Path):
        self.folder, self.lock, self.pending, self._n = folder, threading.Lock(), [], 0
        folder.mkdir(parents=True, exist_ok=True)

    def new_file(self):
        with self.lock:
            self._n += 1
            return open(self.folder / f"export-{self._n}", "w+b")  # noqa: SIM115

    def add(self, kind, year, month, fmt, rows, path):
        with self.lock:
            self.pending.append((kind, year, month, fmt, rows, path))

    def finish(self, stats, timeout, workers=2):
        """Parse every body (``timeout`` s in all); each one that does not parse or has
        another row count than X-Export-Rows is an error. Files are removed."""
        from concurrent.futures import ProcessPoolExecutor

        deadline = time.monotonic() + timeout
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        try:
            futures = [pool.submit(parsed_file_rows, fmt, str(path))
                       for _, _, _, fmt, _, path in self.pending]
            for (kind, year, month, _, rows, path), future in zip(self.pending, futures):
                try:
                    parsed = future.result(timeout=max(0.0, deadline - time.monotonic()))
                except Exception as exc:  # a parse error, or TimeoutError
                    stats.error(kind, f"body does not parse: {type(exc).__name__}: "
                                      f"{str(exc)[:200]}")
                    continue
                finally:
                    Path(path).unlink(missing_ok=True)
                if parsed != rows:
                    stats.error(kind, f"{parsed} rows parsed, X-Export-Rows {rows}")
                    continue
                with stats.lock:
                    stats.rows[kind] += rows
                    stats.export_rows[(year, month)].add(rows)
                    stats.verified += 1
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def exporter(n, port, token, jobs, stop, stats, retry_wait, verifier):
    client = Client(port, {"Authentication-Token": token})
    for year, month, fmt in itertools.islice(itertools.cycle(jobs), n, None):
        if stop.is_set():
            return
        kind, got = f"export {fmt} {year}-{month:02d}", {}
        path = f"/api/backup/guests?{urlencode({'year': year, 'month': month, 'format': fmt})}"
        with verifier.new_file() as sink:
            r = call(stats, kind, client, "GET", path, 200,
                     functools.partial(export_rows_header, got=got), retry_busy=retry_wait,
                     stop=stop, sink=sink)
        if r is not None:
            verifier.add(kind, year, month, fmt, got["rows"], sink.name)
        else:
            Path(sink.name).unlink(missing_ok=True)


def redirect_problem(want, headers, body):
    where = headers.get("Location", "")
    return None if urlsplit(where).path == want else f"redirected to {where!r}"


class Addresses:
    """Distinct client addresses 10.x.y.z for X-Forwarded-For (TRUSTED_PROXIES=1):
    each registration looks like another guest behind the reverse proxy."""

    def __init__(self, first=1):
        self._next, self._lock = itertools.count(first), threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            k = next(self._next)
        return f"10.{(k >> 16) & 255}.{(k >> 8) & 255}.{k & 255}"


def registrar(n, port, trips, stop, stats, created, png, addresses):
    client = Client(port)
    for i in itertools.count():
        if stop.is_set():
            return
        trip, xff = trips[(n + i) % len(trips)], {"X-Forwarded-For": addresses()}
        if (page := call(stats, FORM_GET, client, "GET", f"/trips/{trip}/register", 200,
                         headers=xff)) is None:
            time.sleep(0.5)
            continue
        email = f"load-{n}-{i}@example.com"
        fields = {"csrf_token": csrf_token(page[1]), "email": email, "language": "cs",
                  "guests-0-first_name": f"Zoë {n}-{i}", "guests-0-last_name": "O'Brien, Jr.",
                  "guests-0-age_category": "adult" if i % 4 else "child",
                  "guests-0-document_type": ("passport", "id_card", "driving_license")[i % 3],
                  "guests-0-document_number": f"L{n}X{i:06d}", "guests-0-gdpr_consent": "y"}
        photo = i % 3 == 0
        files = [("guests-0-document_photo", "passport.png", "image/png", png)] if photo else []
        body, ctype = multipart(fields, files)
        if call(stats, FORM_POST, client, "POST", f"/trips/{trip}/register", 302,
                functools.partial(redirect_problem, f"/trips/{trip}/thanks"),
                body=body, headers={"Content-Type": ctype, **xff}) is not None:
            with stats.lock:
                created.append((email, photo))


def prober(port, stop, stats, interval, exporting):
    """GET / every ``interval`` s (on a fixed schedule; a slow answer delays only the
    next one), noting how many exports are in flight at each start."""
    client, tick = Client(port), time.monotonic()
    while not stop.is_set():
        with stats.lock:
            stats.probe_exporting.append(exporting.value)
        call(stats, PAGE, client, "GET", "/", 200)
        tick += interval
        stop.wait(max(0.0, tick - time.monotonic()))


def open_stalled(port, trip, address):
    """A multipart POST announcing STALLED_LENGTH bytes; only the headers, the CSRF
    field and the first STALLED_SENT bytes of a file part are sent. The socket is
    returned open: it sends nothing more until closed."""
    boundary = uuid.uuid4().hex
    head, _ = multipart({"csrf_token": "x", "email": "stalled@example.com"}, [], boundary)
    head = head[:-len(f"--{boundary}--\r\n")] + (
        f'--{boundary}\r\nContent-Disposition: form-data; name="guests-0-document_photo"; '
        f'filename="scan.png"\r\nContent-Type: image/png\r\n\r\n').encode()
    body = head + os.urandom(STALLED_SENT)
    request = (f"POST /trips/{trip}/register HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
               f"Content-Length: {STALLED_LENGTH}\r\nX-Forwarded-For: {address}\r\n"
               "Connection: close\r\n\r\n").encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(request + body)
    return sock


def stalled_state(sock) -> str:
    """'open' (no answer, not closed), 'answered: <status line>', 'closed' or 'reset'."""
    try:
        sock.setblocking(False)
        data = sock.recv(200, socket.MSG_PEEK)
    except BlockingIOError:
        return "open"
    except OSError:
        return "reset"
    return "answered: " + data.split(b"\r\n")[0].decode("latin-1") if data else "closed"


class PgSampler:
    """Every second: sessions of the app's database by state (pg_stat_activity);
    keeps the peak of each state and of the total."""

    def __init__(self, url):
        self.url, self.name = url, gen.split_url(url)[1]
        self.peak, self.stop, self.samples = defaultdict(int), threading.Event(), 0
        self.thread = threading.Thread(target=self._run, name="pg sampler", daemon=True)

    def sample(self) -> dict:
        rows = query(self.url, "SELECT coalesce(state, '?'), count(*) FROM pg_stat_activity "
                     "WHERE datname = %s AND pid <> pg_backend_pid() GROUP BY 1", (self.name,))
        return dict(rows)

    def _run(self):
        while not self.stop.wait(1.0):
            try:
                now = self.sample()
            except Exception:
                continue
            self.samples += 1
            for state, n in [*now.items(), ("total", sum(now.values()))]:
                self.peak[state] = max(self.peak[state], n)


def backup_flow(port, db_url, start_at, stats, result, folder):
    time.sleep(max(0.0, start_at - time.monotonic()))
    client, form = Client(port), {"Content-Type": "application/x-www-form-urlencoded"}
    page = call(stats, "backup: login form", client, "GET", "/login", 200)
    if page is None or call(stats, "backup: login (POST)", client, "POST", "/login", 302,
                            body=urlencode({"email": ADMIN[0], "password": ADMIN[1],
                                            "csrf_token": csrf_token(page[1])}),
                            headers=form) is None:
        return
    if (page := call(stats, "backup: admin page", client, "GET", "/admin/backup/", 200)) is None:
        return
    token = csrf_token(page[1])
    # right before the start: every guest up to this id must be in the archive
    (result["max_id"], result["count"]), = query(db_url, "SELECT max(id), count(*) FROM guest")
    t0 = time.perf_counter()
    if call(stats, "backup: start (POST)", client, "POST", "/admin/backup/start", 302,
            functools.partial(redirect_problem, "/admin/backup/"),
            body=urlencode({"csrf_token": token}), headers=form) is None:
        return
    job, deadline, result["states"] = {}, time.monotonic() + 600, []
    while job.get("state") not in ("done", "failed"):
        if time.monotonic() > deadline:
            return stats.error("backup", f"not done within 600 s (last state {job})")
        time.sleep(0.5)
        r = call(stats, "backup: poll job", client, "GET", "/admin/backup/job", 200)
        job = json.loads(r[1]) if r else {}
        if job.get("state") and job["state"] not in result["states"]:
            result["states"].append(job["state"])
    result["job"], result["seconds"] = job, time.perf_counter() - t0
    if job["state"] != "done":
        return stats.error("backup", f"job failed: {job.get('error')}")
    if not job.get("download_url"):
        return stats.error("backup", f"job done but no download_url: {job}")
    r = call(stats, "backup: download", client, "GET", job["download_url"], 200)
    if r is not None:
        result["archive"] = folder / job["archive"]
        result["archive"].write_bytes(r[1])


def guarded(stats, name, target, *args):
    def run():
        try:
            target(*args)
        except Exception as exc:
            stats.error(name, f"client crashed: {type(exc).__name__}: {exc}")
    return threading.Thread(target=run, name=name, daemon=True)


def manage(env, *args):
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def query(url, sql, params=None):
    conn = psycopg2.connect(gen.libpq_url(url), connect_timeout=10)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


def pct(values, p):
    v = sorted(values)
    return v[max(0, math.ceil(p * len(v)) - 1)] * 1000 if v else float("nan")


def public_clients(port, trips, registrars, interval, exporting, ready, go, stop, results):
    """The registration clients and the GET / probe, in a process of their own (spawned):
    the export clients parse 200,000-row bodies (``json.loads`` holds the GIL for
    about a second), which in the same process would show up as public-page latency.
    Runs from ``go`` until ``stop``; puts its stats and registrations on ``results``."""
    stats, done, created, addresses = Stats(), threading.Event(), [], Addresses()
    threads = [guarded(stats, f"registrar {i}", registrar, i, port, trips, done, stats,
                       created, tiny_png(), addresses) for i in range(registrars)]
    threads.append(guarded(stats, "probe", prober, port, done, stats, interval, exporting))
    ready.set()
    go.wait(120)
    for t in threads:
        t.start()
    stop.wait(3600)
    done.set()
    for t in threads:
        t.join(timeout=2 * TIMEOUT + 30)
        if t.is_alive():
            stats.error(t.name, "still running long after the end")
    results.put({**stats.export(), "created": created})


def drive(args, port, token, trips, jobs, db_url, folder, pg):
    """Open the stalled uploads, then run every client at once for args.seconds; the
    backup starts at half time. Export clients and the backup run as threads here,
    the registration clients and the GET / probe in a second process. Returns
    everything the checks and the report need."""
    stats, stop, backup, run = Stats(), threading.Event(), {}, {}
    addresses = Addresses(first=(1 << 23) + 1)  # stalled uploads: 10.128.0.1 on
    mp = multiprocessing.get_context("spawn")  # no fork of this threaded process
    verifier = Verifier(folder / "exports")
    stats.exporting = mp.Value("i", 0)
    ready, go, child_stop, results = mp.Event(), mp.Event(), mp.Event(), mp.Queue()
    child = mp.Process(target=public_clients, name="public clients", daemon=True,
                       args=(port, trips, args.registrars, args.probe_interval, stats.exporting,
                             ready, go, child_stop, results))
    stalled, created = [], []
    try:
        child.start()
        if not ready.wait(120):
            raise RuntimeError("the public clients' process did not start within 120 s")
        for i in range(args.stalled):
            stalled.append(open_stalled(port, trips[i % len(trips)], addresses()))
        if stalled:  # let the server's threads take them, then look at the database
            time.sleep(2)
            run["pg_with_stalled"] = pg.sample()
        t_start = time.monotonic()
        threads = [guarded(stats, f"exporter {i}", exporter, i, port, token, jobs, stop, stats,
                           args.retry_wait, verifier) for i in range(args.clients)]
        if args.backup:
            threads.append(guarded(stats, "backup", backup_flow, port, db_url,
                                   t_start + args.seconds / 2, stats, backup, folder))
        pg.thread.start()
        go.set()
        for t in threads:
            t.start()
        time.sleep(args.seconds)
        stop.set()  # in-flight requests finish; the backup is waited for
        child_stop.set()
        try:
            other = results.get(timeout=3 * TIMEOUT + 60)
            stats.merge(other)
            created = other["created"]
        except queue.Empty:
            stats.error("public clients", "no results from their process")
        for t in threads:
            t.join(timeout=max(0.0, t_start + args.seconds + 900 - time.monotonic()))
            if t.is_alive():
                stats.error(t.name, "still running 15 minutes after the end")
        run["wall"] = time.monotonic() - t_start
        run["stalled"] = [stalled_state(s) for s in stalled]
        verifier.finish(stats, timeout=600)
    finally:
        pg.stop.set()
        stop.set()
        child_stop.set()
        go.set()
        for s in stalled:
            s.close()
        child.join(timeout=30)
        if child.is_alive():
            child.kill()  # the process this function started
            child.join(timeout=10)
    return stats, created, backup, run


def run_checks(check, args, stats, created, backup, run, static, env, db_url, restore_url, made,
               tmp, redis_conn):
    check("no errors (unexpected status, exception, timeout; deliberate 429s of the export "
          "limit excluded)", not stats.errors,
          f"{len(stats.errors)} errors, {sum(stats.busy.values())} deliberate 429s")
    n_exports = sum(len(v) for k, v in stats.times.items() if k.startswith("export"))
    bad = sum(n for k, n in stats.error_kinds.items() if k.startswith("export"))
    check("every export body parses; rows == X-Export-Rows", n_exports and not bad
          and stats.verified == n_exports,
          f"{n_exports} complete downloads, {stats.verified} parsed with X-Export-Rows rows, "
          f"{bad} export errors")
    for (y, m), want in static.items():
        seen = stats.export_rows[(y, m)]
        check(f"{y}-{m:02d}: every export has {want:,} rows", seen == {want},
              f"row counts seen: {sorted(seen)}")
    check("GET / probe answered", stats.times[PAGE], f"{len(stats.times[PAGE])} answers")
    if args.stalled:
        idle_tx = run.get("pg_with_stalled", {}).get("idle in transaction", 0)
        check(f"{args.stalled} stalled uploads hold no database connection",
              idle_tx == 0, f"sessions of the app's database 2 s after opening them, no other "
              f"client yet: {run.get('pg_with_stalled')}")
    if args.registrars:
        emails = [e for e, _ in created]
        (found,), = query(db_url, "SELECT count(*) FROM guest g JOIN registration r "
                          "ON r.id = g.registration_id WHERE r.email = ANY(%s)", (emails,))
        check("every registration (302 to thanks) is in the database",
              emails and found == len(emails), f"{len(emails)} registered, {found} guests found")
    if not args.backup:
        return
    archive = backup.get("archive")
    check("web backup done and downloaded", archive,
          f"job {backup.get('job', {}).get('state')}; states seen: {backup.get('states')}")
    if redis_conn is not None and backup.get("job", {}).get("id"):
        status = redis_job_status(redis_conn, f"backup-{backup['job']['id']}")
        check("the backup ran as an RQ job on `manage.py worker`", status == "finished",
              f"RQ job backup-{backup['job']['id']}: {status}; page states seen: "
              f"{backup.get('states')}")
    if archive is None:
        return
    r = manage(env, "verify", str(archive))
    check("`manage.py verify` of the downloaded archive", r.returncode == 0,
          f"exit {r.returncode}: " + (r.stdout + r.stderr).strip()[-300:])
    gen.create_database(restore_url)
    made.append(restore_url)
    r = manage(env, "restore", str(archive), "--database-url", restore_url,
               "--uploads", str(tmp / "restored_uploads"), "--yes")
    check("`manage.py restore` into a new database", r.returncode == 0,
          f"exit {r.returncode}: " + (r.stdout + r.stderr).strip()[-600:])
    if r.returncode != 0:
        return
    (got,), = query(restore_url, "SELECT count(*) FROM guest WHERE id <= %s", (backup["max_id"],))
    check("restored: every guest that existed at backup start", got == backup["count"],
          f"{got:,} restored with id <= {backup['max_id']:,}; {backup['count']:,} at start")
    with zipfile.ZipFile(archive) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        members = {Path(n).name for n in zf.namelist()}
    restored = {t: query(restore_url, pgsql.SQL("SELECT count(*) FROM {}")
                         .format(pgsql.Identifier(t)))[0][0] for t in manifest["row_counts"]}
    diff = {t: (n, restored[t]) for t, n in manifest["row_counts"].items() if restored[t] != n}
    check("restored row counts == manifest row_counts", not diff,
          f"{len(restored)} tables; differing (manifest, restored): {diff}")
    photos = {r[0] for r in query(db_url, "SELECT document_photo FROM guest "
                                  "WHERE document_photo NOT LIKE 'uploads/%'")}
    check("no uploaded guest photo in the archive", not (photos & members),
          f"{len(photos)} photos uploaded; in the archive: {sorted(photos & members)[:3]}")


def redis_job_status(conn, job_id):
    try:
        from rq.job import Job

        status = Job.fetch(job_id, connection=conn).get_status()
        return getattr(status, "value", str(status))  # an enum in RQ >= 1.x
    except Exception as exc:
        return f"unknown ({type(exc).__name__}: {exc})"


def goals(args, stats):
    """(goal, met, measured) for the scenario's targets."""
    out = [("0 errors except deliberate 429s", not stats.errors,
            f"{len(stats.errors)} errors; {sum(stats.busy.values())} deliberate 429s")]
    if args.registrars:
        for kind in (FORM_GET, FORM_POST):
            v = stats.times[kind]
            out.append((f"{kind}: p95 < 500 ms", v and pct(v, .95) < 500,
                        f"p50 {pct(v, .5):.0f} ms, p95 {pct(v, .95):.0f} ms ({len(v)} requests)"))
    v = stats.times[PAGE]
    if args.scenario == "exports8":
        out.append((f"{PAGE}: p95 < 1 s while {args.clients} large exports stream",
                    v and pct(v, .95) < 1000,
                    f"p50 {pct(v, .5):.0f} ms, p95 {pct(v, .95):.0f} ms, max {pct(v, 1):.0f} ms"))
    return out


def render(args, port, info, stats, created, backup, run, checks, pg):
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem = int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1])
    before, after = info["load"], info["load_after"]
    (pg_version,), = query(args.database_url, "SHOW server_version")
    import gunicorn

    limit = (f"EXPORT_MAX_CONCURRENT={args.export_max_concurrent}"
             if args.export_max_concurrent is not None else "EXPORT_MAX_CONCURRENT unset (app "
             "default 2)")
    mode = (f"REDIS_URL={args.redis_url}: page backups queued for one `manage.py worker` (RQ), "
            "rate limits and export slots in Redis" if args.redis else
            "no REDIS_URL: page backup in a thread of the web process, limits in memory per "
            "process, export slots as file locks")
    lines = [f"# Load test, scenario `{args.scenario}`{' with Redis' if args.redis else ''}", "",
             f"- machine: {os.cpu_count()} CPUs (nproc), {mem / 2**20:.1f} GiB RAM; client, "
             "server and database on this machine; load average (1/5/15 min) "
             f"{before[0]:.2f}/{before[1]:.2f}/{before[2]:.2f} before the run, "
             f"{after[0]:.2f}/{after[1]:.2f}/{after[2]:.2f} after it",
             f"- PostgreSQL {pg_version}; Python {sys.version.split()[0]}; `manage.py serve` "
             f"(gunicorn {gunicorn.__version__}, gthread, {args.workers or 'default 2'} workers "
             f"x {args.threads or 'default 32'} threads) on 127.0.0.1:{port}; "
             f"TRUSTED_PROXIES=1; {limit}; {mode}",
             f"- data: {args.rows:,} guests in 2025-06, {args.small_rows:,} in 2025-07, none in "
             f"2025-05; registrations land in {info['now']} (on {len(info['trips'])} open trips)",
             f"- run: {args.seconds:g} s ({run['wall']:.1f} s until every client finished); "
             f"{args.clients} export clients over {info['jobs']} month x format pairs (formats "
             f"offered: {', '.join(info['formats'])}; after a 429 a client waits "
             f"min(Retry-After, {args.retry_wait:g} s) and asks again); "
             + (f"{args.registrars} registration clients (one X-Forwarded-For address per "
                "registration); " if args.registrars else "")
             + (f"{args.stalled} stalled uploads; " if args.stalled else "")
             + f"GET / every {args.probe_interval:g} s"
             + (f"; one web backup at {args.seconds / 2:g} s" if args.backup else "")
             + ". Registration clients and the probe run in a second client process (no GIL "
               "shared with the export clients' parsing)", "",
             "| kind | requests | 429 (deliberate) | errors | p50 ms | p95 ms | max ms | req/s "
             "| MB | rows/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for kind in sorted(set(stats.times) | set(stats.error_kinds) | set(stats.busy)):
        v = stats.times[kind]
        lines.append(f"| {kind} | {len(v)} | {stats.busy[kind]} | {stats.error_kinds[kind]} | "
                     f"{pct(v, .5):.0f} | {pct(v, .95):.0f} | {pct(v, 1):.0f} | "
                     f"{len(v) / args.seconds:.2f} | {stats.bytes[kind] / 1e6:.1f} | "
                     f"{stats.rows[kind] / args.seconds:,.0f} |")
    total = sum(len(v) for v in stats.times.values())
    lines += [f"| **all** | {total} | {sum(stats.busy.values())} | {len(stats.errors)} | | | | "
              f"{total / args.seconds:.2f} | {sum(stats.bytes.values()) / 1e6:.1f} | "
              f"{sum(stats.rows.values()) / args.seconds:,.0f} |", ""]
    if args.registrars:
        lines.append(f"Registrations: {len(created)} ({sum(p for _, p in created)} with a photo).")
    lines.append(f"Export bodies: written to files during the run, all parsed after it "
                 f"({stats.verified} with exactly X-Export-Rows rows).")
    probes = sorted(stats.probe_exporting)
    if probes:
        lines.append(f"Export requests on the wire (client side, 429 waits not counted) when a "
                     f"GET / probe started: min "
                     f"{probes[0]}, median {probes[len(probes) // 2]}, max {probes[-1]} "
                     f"({len(probes)} probes).")
    if args.stalled:
        states = defaultdict(int)
        for s in run.get("stalled", []):
            states[s] += 1
        lines.append(f"Stalled uploads ({args.stalled}, {STALLED_SENT // 1024} KiB of "
                     f"{STALLED_LENGTH // 2**20} MiB sent) at the end of the run: "
                     + ", ".join(f"{n} {s}" for s, n in sorted(states.items())) + ".")
    if pg.samples:
        lines.append("Sessions of the app's database (pg_stat_activity, peak of "
                     f"{pg.samples} 1-s samples): " + ", ".join(
                         f"{k} {v}" for k, v in sorted(pg.peak.items()))
                     + " (a streaming export's session is 'idle in transaction' between "
                       "fetches" + ("; the backup's pg_dump and its own sessions count too"
                                    if args.backup else "") + ").")
    if info.get("redis_keys"):
        lines.append("Keys in the Redis database after the run, by prefix: " + ", ".join(
            f"`{k}*` {n}" for k, n in sorted(info["redis_keys"].items())) + ".")
    if "job" in backup:
        lines.append(f"Backup: {backup['job'].get('archive')}, "
                     f"{(backup['job'].get('bytes') or 0) / 1e6:.1f} MB, {backup['seconds']:.1f} s "
                     f"from POST to {backup['job'].get('state')} (states seen by the page: "
                     f"{' -> '.join(backup.get('states', []))}); {backup['count']:,} guests at "
                     f"start (max id {backup['max_id']:,}).")
    lines += ["", "## Goals", ""] + [f"- {'MET' if ok else 'MISSED'} {name}: {detail}"
                                     for name, ok, detail in goals(args, stats)]
    lines += ["", "## Checks (nothing lost)", ""] + [
        f"- {'PASS' if ok else 'FAIL'} {name}: {detail}" for name, ok, detail in checks]
    if stats.errors:
        lines += ["", f"## Errors (first 20 of {len(stats.errors)})", ""]
        lines += [f"- `{e[:400]}`" for e in stats.errors[:20]]
    return lines


def redis_connect(url):
    import redis

    conn = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
    conn.ping()
    return conn


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", choices=sorted(SCENARIOS), default="default")
    ap.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/gr_load")
    ap.add_argument("--rows", type=int, default=200_000, help="guests in June 2025")
    ap.add_argument("--small-rows", type=int, default=1000, help="guests in July 2025")
    ap.add_argument("--seconds", type=float, help="default: 60 (default), 30 (exports8)")
    ap.add_argument("--clients", type=int, help="concurrent export clients (20 / 8)")
    ap.add_argument("--registrars", type=int, help="concurrent registration clients (2 / 0)")
    ap.add_argument("--stalled", type=int, help="stalled uploads held open (16 / 0)")
    ap.add_argument("--export-max-concurrent", type=int,
                    help="EXPORT_MAX_CONCURRENT for the server (default: unset, i.e. the "
                         "app's 2; exports8: 8)")
    ap.add_argument("--retry-wait", type=float, default=1.0,
                    help="most seconds an export client waits after a 429 (default 1)")
    ap.add_argument("--probe-interval", type=float, default=0.5, help="seconds between GET /")
    ap.add_argument("--workers", type=int, help="manage.py serve --workers (default: its 2)")
    ap.add_argument("--threads", type=int, help="manage.py serve --threads (default: its 32)")
    ap.add_argument("--redis", action="store_true",
                    help="REDIS_URL for the server and one `manage.py worker` for the run")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/12",
                    help="with --redis; this database is FLUSHDB'd before and after")
    ap.add_argument("--replace", action="store_true", help="drop existing databases first")
    args = ap.parse_args(argv)
    for key, value in SCENARIOS[args.scenario].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    db_url, restore_url = args.database_url, args.database_url.split("?")[0] + "_restored"
    for url in (db_url, restore_url):
        if gen.database_exists(url):
            if not args.replace:
                raise SystemExit(f"database {gen.split_url(url)[1]} exists; use --replace")
            gen.drop_database(url)
    redis_conn = None
    if args.redis:
        redis_conn = redis_connect(args.redis_url)
        redis_conn.flushdb()
    RESULTS.mkdir(exist_ok=True)
    name = "load" + (f"-{args.scenario}" if args.scenario != "default" else "") + \
        ("-redis" if args.redis else "")
    tmp = Path(tempfile.mkdtemp(prefix="gr_load_"))
    env = {**os.environ, "DATABASE_URL": db_url, "INSTANCE_PATH": str(tmp / "instance"),
           "UPLOAD_FOLDER": str(tmp / "uploads"), "BACKUP_FOLDER": str(tmp / "backups"),
           "TRUSTED_PROXIES": "1"}
    for key in ("REDIS_URL", "EXPORT_MAX_CONCURRENT", "RATELIMIT_STORAGE_URI"):
        env.pop(key, None)  # only what this run sets counts
    if args.redis:
        env["REDIS_URL"] = args.redis_url
    if args.export_max_concurrent is not None:
        env["EXPORT_MAX_CONCURRENT"] = str(args.export_max_concurrent)
    made, server, worker, checks, lines, done = [db_url], None, None, [], [], None
    log = open(RESULTS / f"{name}-server.log", "w")  # noqa: SIM115 (closed in finally)
    worker_log_path = RESULTS / f"{name}-worker.log"
    worker_log = open(worker_log_path, "w") if args.redis else None  # noqa: SIM115
    pg = PgSampler(db_url)

    def check(what, ok, detail=""):
        checks.append((what, bool(ok), detail))

    try:
        gen.generate(db_url, args.rows, args.small_rows, env=env, admin_email=ADMIN[0],
                     admin_password=ADMIN[1], log=lambda m: print(m, file=sys.stderr))
        # the generated trips ended in 2025 (registration closed, 410): add open ones
        trips = [r[0] for r in query(
            db_url, "INSERT INTO trip (title, start_date, end_date, max_guests, created_at) "
            "SELECT 'Load test trip ' || t, current_date + 30 + t, current_date + 37 + t, 50, "
            "now() FROM generate_series(1, 4) AS t RETURNING id")]
        token = manage(env, "auth-token", ADMIN[0]).stdout.strip()
        port = free_port()
        server, _ = start_server("serve", port, env, log, workers=args.workers,
                                 threads=args.threads, settle=3.0)
        if args.redis:
            worker = start_worker(env, worker_log, worker_log_path)
        _, _, body, _ = Client(port, {"Authentication-Token": token}).request(
            "GET", "/api/backup/guests?year=2025&month=7&format=__x")  # 400 lists the formats
        formats = [f.strip() for f in json.loads(body)["error"].split("available:")[1].split(",")]
        now = datetime.now(timezone.utc)
        static = {gen.LARGE_MONTH: args.rows}
        if args.months == "all":
            static.update({gen.SMALL_MONTH: args.small_rows, (2025, 5): 0})
        months = [*static] + ([(now.year, now.month)] if args.months == "all" else [])
        jobs = [(y, m, f) for y, m in months for f in formats]
        info = {"load": os.getloadavg(), "now": f"{now:%Y-%m}", "formats": formats,
                "jobs": len(jobs), "trips": trips}
        print(f"running scenario {args.scenario} for {args.seconds:g} s on port {port}",
              file=sys.stderr)
        stats, created, backup, run = drive(args, port, token, trips, jobs, db_url, tmp, pg)
        info["load_after"] = os.getloadavg()
        done = (args, port, info, stats, created, backup, run, checks, pg)
        if redis_conn is not None:  # evidence that limits and jobs went through Redis
            keys = defaultdict(int)
            for key in redis_conn.scan_iter(count=1000):
                key = key.decode("utf-8", "replace")
                keys[":".join(re.split(r"[:/]", key)[:2])] += 1  # e.g. LIMITS:LIMITER, rq:job
            info["redis_keys"] = dict(keys)
        run_checks(check, args, stats, created, backup, run, static, env, db_url, restore_url,
                   made, tmp, redis_conn)
        lines = render(args, port, info, stats, created, backup, run, checks, pg)
    except BaseException as exc:
        check("the load test ran to the end", False, f"{type(exc).__name__}: {exc}")
        if done is not None:  # the run itself finished: report it with the checks so far
            try:
                lines = render(*done)
            except Exception:
                pass
        lines += ["", f"**Aborted**: {type(exc).__name__}: {exc}"]
        raise
    finally:
        for proc in (worker, server):
            if proc is not None:
                stop_server(proc, timeout=30)
        log.close()
        if worker_log is not None:
            worker_log.close()
        for url in made:
            gen.drop_database(url)
        if redis_conn is not None:
            redis_conn.flushdb()
        shutil.rmtree(tmp, ignore_errors=True)
        (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
    return 0 if checks and all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
