#!/usr/bin/env python
"""Load test: monthly exports, a web system backup and public registrations at once.

    .venv/bin/python benchmarks/load_test.py [--seconds 60] [--clients 20] [--registrars 2]
        [--rows 200000] [--workers 3] [--threads 1] [--database-url URL] [--replace]

Fills a fresh database (generate_data.py), serves the app with gunicorn on a free
127.0.0.1 port, then for --seconds runs at once: export clients looping over
GET /api/backup/guests (four months x every format), registration clients on the
public form, and at half time one system backup through the admin page. Checks that
nothing was lost, prints a Markdown report (also benchmarks/results/load.md) and
exits 1 if a check failed. Databases, server and temp dirs are removed at the end.
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
import os
import re
import shutil
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
from server_process import ServerError, free_port, stop_server

ROOT = gen.ROOT
RESULTS = Path(__file__).resolve().parent / "results"
ADMIN = ("load-admin@example.com", "load-admin-password-1")
TIMEOUT = 120  # seconds per socket operation; a timeout counts as an error
CSRF_RE = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"|value="([^"]+)"[^>]*name="csrf_token"')


class Client:
    """A browser-like HTTP client: one connection per request, cookies kept."""

    def __init__(self, port: int, headers: dict | None = None):
        self.port, self.headers, self.cookies = port, dict(headers or {}), {}

    def request(self, method, path, body=None, headers=None):
        """(status, headers, body, seconds from sending to the last byte)."""
        hdrs = {**self.headers, **(headers or {})}
        if self.cookies:
            hdrs["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        start = time.perf_counter()
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()  # raises IncompleteRead if a chunked stream breaks
            elapsed = time.perf_counter() - start
        finally:
            conn.close()
        for cookie in resp.headers.get_all("Set-Cookie") or []:
            name, _, value = cookie.split(";", 1)[0].partition("=")
            self.cookies[name.strip()] = value
        return resp.status, resp.headers, data, elapsed


class Stats:
    """Latencies, bytes and rows per kind of request, and every error, thread-safe."""

    def __init__(self):
        self.lock = threading.Lock()
        self.times, self.bytes, self.rows = defaultdict(list), defaultdict(int), defaultdict(int)
        self.errors, self.error_kinds = [], defaultdict(int)  # "kind: message", kind -> count
        self.export_rows = defaultdict(set)  # (year, month) -> every X-Export-Rows seen

    def ok(self, kind, seconds, nbytes):
        with self.lock:
            self.times[kind].append(seconds)
            self.bytes[kind] += nbytes

    def error(self, kind, message):
        with self.lock:
            self.errors.append(f"{kind}: {message}")
            self.error_kinds[kind] += 1


def call(stats, kind, client, method, path, expect, check=None, **kw):
    """One request; a wrong status, an exception or a failed ``check(headers, body)``
    (returns a problem or None) is an error. Returns (headers, body) or None."""
    try:
        status, headers, body, seconds = client.request(method, path, **kw)
    except Exception as exc:  # timeouts, resets, broken chunked streams
        stats.error(kind, f"{method} {path}: {type(exc).__name__}: {exc}")
        return None
    problem = (f"HTTP {status}, body {body[:300]!r}" if status != expect
               else check(headers, body) if check else None)
    if problem:
        stats.error(kind, f"{method} {path}: {problem}")
        return None
    stats.ok(kind, seconds, len(body))
    return headers, body


def csrf_token(html: bytes) -> str:
    m = CSRF_RE.search(html.decode("utf-8", "replace"))
    if not m:
        raise RuntimeError("no csrf_token in the page")
    return m.group(1) or m.group(2)


def multipart(fields: dict, files: list) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
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


def export_problem(fmt, headers, body, got):
    """None if the body parses and has X-Export-Rows rows (stored in ``got``)."""
    try:
        got["rows"], parsed = int(headers["X-Export-Rows"]), parsed_rows(fmt, body)
    except Exception as exc:
        return f"body does not parse: {type(exc).__name__}: {str(exc)[:200]}"
    return None if parsed == got["rows"] else f"{parsed} rows parsed, X-Export-Rows {got['rows']}"


def exporter(n, port, token, jobs, stop, stats):
    client = Client(port, {"Authentication-Token": token})
    for year, month, fmt in itertools.islice(itertools.cycle(jobs), n, None):
        if stop.is_set():
            return
        kind, got = f"export {fmt} {year}-{month:02d}", {}
        path = f"/api/backup/guests?{urlencode({'year': year, 'month': month, 'format': fmt})}"
        if call(stats, kind, client, "GET", path, 200,
                functools.partial(export_problem, fmt, got=got)) is not None:
            with stats.lock:
                stats.rows[kind] += got["rows"]
                stats.export_rows[(year, month)].add(got["rows"])


def redirect_problem(want, headers, body):
    where = headers.get("Location", "")
    return None if urlsplit(where).path == want else f"redirected to {where!r}"


def registrar(n, port, trips, stop, stats, created, png):
    client = Client(port)
    for i in itertools.count():
        if stop.is_set():
            return
        trip = trips[(n + i) % len(trips)]
        if (page := call(stats, "register: form (GET)", client, "GET",
                         f"/trips/{trip}/register", 200)) is None:
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
        if call(stats, "register: submit (POST)", client, "POST", f"/trips/{trip}/register", 302,
                functools.partial(redirect_problem, f"/trips/{trip}/thanks"),
                body=body, headers={"Content-Type": ctype}) is not None:
            with stats.lock:
                created.append((email, photo))


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
    job, deadline = {}, time.monotonic() + 600
    while job.get("state") not in ("done", "failed"):
        if time.monotonic() > deadline:
            return stats.error("backup", "not done within 600 s")
        time.sleep(0.5)
        r = call(stats, "backup: poll job", client, "GET", "/admin/backup/job", 200)
        job = json.loads(r[1]) if r else {}
    result["job"], result["seconds"] = job, time.perf_counter() - t0
    if job["state"] != "done":
        return stats.error("backup", f"job failed: {job.get('error')}")
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


def start_gunicorn(port, env, workers, threads, log):
    cmd = [str(Path(sys.executable).with_name("gunicorn")), "--workers", str(workers),
           "--threads", str(threads), "--bind", f"127.0.0.1:{port}", "--timeout", "300",
           "guest_registration:create_app()"]  # --threads > 1 means gthread workers
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if Client(port).request("GET", "/api/backup/guests")[0] == 401:
                time.sleep(2)  # let every worker finish importing the app
                return proc
        except OSError:
            time.sleep(0.2)
    stop_server(proc)
    raise ServerError(f"gunicorn did not start; see {log.name}")


def manage(env, *args):
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def query(url, sql, params=None):
    conn = psycopg2.connect(gen.libpq_url(url))
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


def pct(values, p):
    v = sorted(values)
    return v[max(0, math.ceil(p * len(v)) - 1)] * 1000 if v else float("nan")


def drive(args, port, token, trips, jobs, db_url, folder):
    """Run every client at once for args.seconds; the backup starts at half time."""
    stats, stop, created, backup = Stats(), threading.Event(), [], {}
    t_start = time.monotonic()
    threads = [guarded(stats, f"exporter {i}", exporter, i, port, token, jobs, stop, stats)
               for i in range(args.clients)]
    threads += [guarded(stats, f"registrar {i}", registrar, i, port, trips, stop, stats,
                        created, tiny_png()) for i in range(args.registrars)]
    threads.append(guarded(stats, "backup", backup_flow, port, db_url,
                           t_start + args.seconds / 2, stats, backup, folder))
    for t in threads:
        t.start()
    time.sleep(args.seconds)
    stop.set()  # in-flight requests finish; the backup is waited for
    for t in threads:
        t.join(timeout=max(0.0, t_start + args.seconds + 900 - time.monotonic()))
        if t.is_alive():
            stats.error(t.name, "still running 15 minutes after the end")
    return stats, created, backup, time.monotonic() - t_start


def run_checks(check, stats, created, backup, static, env, db_url, restore_url, made, tmp):
    check("no errors (unexpected status, exception, timeout)", not stats.errors,
          f"{len(stats.errors)} errors")
    n_exports = sum(len(v) for k, v in stats.times.items() if k.startswith("export"))
    bad = sum(n for k, n in stats.error_kinds.items() if k.startswith("export"))
    check("every export body parses; rows == X-Export-Rows", n_exports and not bad,
          f"{n_exports} complete exports, {bad} failed")
    for (y, m), want in static.items():
        seen = stats.export_rows[(y, m)]
        check(f"{y}-{m:02d}: every export has {want:,} rows", seen == {want},
              f"row counts seen: {sorted(seen)}")
    emails = [e for e, _ in created]
    (found,), = query(db_url, "SELECT count(*) FROM guest g JOIN registration r "
                      "ON r.id = g.registration_id WHERE r.email = ANY(%s)", (emails,))
    check("every registration (302 to thanks) is in the database",
          emails and found == len(emails), f"{len(emails)} registered, {found} guests found")
    archive = backup.get("archive")
    check("web backup done and downloaded", archive, f"job {backup.get('job', {}).get('state')}")
    if archive is None:
        return
    r = manage(env, "verify", str(archive))
    check("`manage.py verify` of the downloaded archive", r.returncode == 0,
          (r.stdout + r.stderr).strip()[-300:])
    gen.create_database(restore_url)
    made.append(restore_url)
    r = manage(env, "restore", str(archive), "--database-url", restore_url,
               "--uploads", str(tmp / "restored_uploads"), "--yes")
    check("`manage.py restore` into a new database", r.returncode == 0,
          (r.stdout + r.stderr).strip()[-300:])
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


def render(args, port, info, stats, created, backup, wall, checks):
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem = int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1])
    load, (pg,), = info["load"], query(args.database_url, "SHOW server_version")[0]
    gver = subprocess.run([str(Path(sys.executable).with_name("gunicorn")), "--version"],
                          capture_output=True, text=True).stdout.strip()
    kind = "sync" if args.threads == 1 else f"gthread ({args.threads} threads each)"
    lines = ["# Load test: exports + web backup + registrations at once", "",
             f"- machine: {os.cpu_count()} CPUs (nproc), {mem / 2**20:.1f} GiB RAM, load average "
             f"{load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f} before the run; client, server and "
             "database on this machine",
             f"- PostgreSQL {pg}; Python {sys.version.split()[0]}; {gver}, {args.workers} {kind} "
             f"workers on 127.0.0.1:{port}",
             f"- data: {args.rows:,} guests in 2025-06, {args.small_rows:,} in 2025-07, none in "
             f"2025-05; registrations land in {info['now']}",
             f"- run: {args.seconds:g} s ({wall:.1f} s until every client finished); "
             f"{args.clients} export clients over {info['jobs']} month x format pairs (formats "
             f"offered: {', '.join(info['formats'])}); {args.registrars} registration clients; "
             f"one web backup at {args.seconds / 2:g} s", "",
             "| kind | requests | errors | p50 ms | p95 ms | max ms | req/s | MB | rows/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for kind in sorted(set(stats.times) | set(stats.error_kinds)):
        v = stats.times[kind]
        lines.append(f"| {kind} | {len(v)} | {stats.error_kinds[kind]} | {pct(v, .5):.0f} | "
                     f"{pct(v, .95):.0f} | {pct(v, 1):.0f} | {len(v) / args.seconds:.2f} | "
                     f"{stats.bytes[kind] / 1e6:.1f} | {stats.rows[kind] / args.seconds:,.0f} |")
    total = sum(len(v) for v in stats.times.values())
    lines += [f"| **all** | {total} | {len(stats.errors)} | | | | {total / args.seconds:.2f} | "
              f"{sum(stats.bytes.values()) / 1e6:.1f} | "
              f"{sum(stats.rows.values()) / args.seconds:,.0f} |", "",
              f"Registrations: {len(created)} ({sum(p for _, p in created)} with a photo)."]
    if "job" in backup:
        lines.append(f"Backup: {backup['job'].get('archive')}, "
                     f"{(backup['job'].get('bytes') or 0) / 1e6:.1f} MB, {backup['seconds']:.1f} s "
                     f"from POST to done; {backup['count']:,} guests at start (max id "
                     f"{backup['max_id']:,}).")
    lines += ["", "## Checks", ""] + [f"- {'PASS' if ok else 'FAIL'} {name}: {detail}"
                                      for name, ok, detail in checks]
    if stats.errors:
        lines += ["", f"## Errors (first 20 of {len(stats.errors)})", ""]
        lines += [f"- `{e[:400]}`" for e in stats.errors[:20]]
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/gr_load")
    ap.add_argument("--rows", type=int, default=200_000, help="guests in June 2025")
    ap.add_argument("--small-rows", type=int, default=1000, help="guests in July 2025")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--clients", type=int, default=20, help="concurrent export clients")
    ap.add_argument("--registrars", type=int, default=2, help="concurrent registration clients")
    ap.add_argument("--workers", type=int, default=3, help="gunicorn workers")
    ap.add_argument("--threads", type=int, default=1, help="threads per worker (>1: gthread)")
    ap.add_argument("--replace", action="store_true", help="drop existing databases first")
    args = ap.parse_args(argv)
    db_url, restore_url = args.database_url, args.database_url.split("?")[0] + "_restored"
    for url in (db_url, restore_url):
        if gen.database_exists(url):
            if not args.replace:
                raise SystemExit(f"database {gen.split_url(url)[1]} exists; use --replace")
            gen.drop_database(url)
    RESULTS.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="gr_load_"))
    env = {**os.environ, "DATABASE_URL": db_url, "INSTANCE_PATH": str(tmp / "instance"),
           "UPLOAD_FOLDER": str(tmp / "uploads"), "BACKUP_FOLDER": str(tmp / "backups")}
    made, server, checks, lines = [db_url], None, [], []
    log = open(RESULTS / "load-server.log", "w")  # noqa: SIM115 (closed in finally)

    def check(name, ok, detail=""):
        checks.append((name, bool(ok), detail))

    try:
        gen.generate(db_url, args.rows, args.small_rows, env=env, admin_email=ADMIN[0],
                     admin_password=ADMIN[1], log=lambda m: print(m, file=sys.stderr))
        token = manage(env, "auth-token", ADMIN[0]).stdout.strip()
        trips = [r[0] for r in query(db_url, "SELECT id FROM trip ORDER BY id LIMIT 4")]
        port = free_port()
        server = start_gunicorn(port, env, args.workers, args.threads, log)
        _, _, body, _ = Client(port, {"Authentication-Token": token}).request(
            "GET", "/api/backup/guests?year=2025&month=7&format=__x")  # 400 lists the formats
        formats = [f.strip() for f in json.loads(body)["error"].split("available:")[1].split(",")]
        now = datetime.now(timezone.utc)
        static = {gen.LARGE_MONTH: args.rows, gen.SMALL_MONTH: args.small_rows, (2025, 5): 0}
        jobs = [(y, m, f) for y, m in [*static, (now.year, now.month)] for f in formats]
        info = {"load": os.getloadavg(), "now": f"{now:%Y-%m}", "formats": formats,
                "jobs": len(jobs)}
        stats, created, backup, wall = drive(args, port, token, trips, jobs, db_url, tmp)
        run_checks(check, stats, created, backup, static, env, db_url, restore_url, made, tmp)
        lines = render(args, port, info, stats, created, backup, wall, checks)
    except BaseException as exc:
        check("the load test ran to the end", False, f"{type(exc).__name__}: {exc}")
        lines += ["", f"**Aborted**: {type(exc).__name__}: {exc}"]
        raise
    finally:
        if server is not None:
            stop_server(server)
        log.close()
        for url in made:
            gen.drop_database(url)
        shutil.rmtree(tmp, ignore_errors=True)
        (RESULTS / "load.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
    return 0 if checks and all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
