"""The load test's HTTP clients: ``Client`` (one connection per request, cookies kept),
``call`` (one request, counted in ``Stats``), and the client loops: export clients,
registration clients, the GET / probe, the stalled uploads and the backup started
from the admin page. ``public_clients`` runs the registration clients and the probe
in a process of their own."""

from __future__ import annotations

import functools
import http.client
import itertools
import json
import os
import re
import socket
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from guest_registration.demo import tiny_png
from load_common import (ADMIN, FORM_GET, FORM_POST, PAGE, STALLED_LENGTH, STALLED_SENT,
                         TIMEOUT, query)
from load_report import Stats

CSRF_RE = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"|value="([^"]+)"[^>]*name="csrf_token"')


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


def export_rows_header(headers, body, got):
    """None if X-Export-Rows is a whole number (stored in ``got``)."""
    try:
        got["rows"] = int(headers["X-Export-Rows"])
    except (KeyError, TypeError, ValueError):
        return f"no usable X-Export-Rows header: {headers.get('X-Export-Rows')!r}"
    return None


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


def join_all(stats, threads, deadline, late):
    """Join client threads until ``deadline`` (``time.monotonic()``); each one still
    running then is an error ``late``."""
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
        if t.is_alive():
            stats.error(t.name, late)


def guarded(stats, name, target, *args):
    def run():
        try:
            target(*args)
        except Exception as exc:
            stats.error(name, f"client crashed: {type(exc).__name__}: {exc}")
    return threading.Thread(target=run, name=name, daemon=True)


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
    join_all(stats, threads, time.monotonic() + 2 * TIMEOUT + 30,
             "still running long after the end")
    results.put({**stats.export(), "created": created})
