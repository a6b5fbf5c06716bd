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
import json
import multiprocessing
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import generate_data as gen
from load_checks import PgSampler, Verifier, redis_connect, redis_key_prefixes, run_checks
from load_clients import (Addresses, Client, backup_flow, exporter, guarded, join_all,
                          open_stalled, public_clients, stalled_state)
from load_common import ADMIN, TIMEOUT, manage, query
from load_report import Stats, render
from server_process import free_port, start_server, start_worker, stop_server

RESULTS = Path(__file__).resolve().parent / "results"
SCENARIOS = {  # defaults per scenario; every one can be overridden on the command line
    "default": dict(seconds=60, clients=20, registrars=2, stalled=16, backup=True,
                    months="all", export_max_concurrent=None),
    "exports8": dict(seconds=30, clients=8, registrars=0, stalled=0, backup=False,
                     months="large", export_max_concurrent=8),
}


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
        join_all(stats, threads, t_start + args.seconds + 900,
                 "still running 15 minutes after the end")
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
            info["redis_keys"] = redis_key_prefixes(redis_conn)
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
