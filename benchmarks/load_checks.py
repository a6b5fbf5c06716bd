"""The load test's checks that nothing was lost: export bodies parsed after the run
(``Verifier``), sessions of the app's database (``PgSampler``, pg_stat_activity),
registrations in the database, and the web backup verified and restored into a
new database (``run_checks``); and what Redis holds (the RQ job, keys by prefix)."""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import re
import threading
import time
import zipfile
from collections import defaultdict
from pathlib import Path

from psycopg2 import sql as pgsql

import generate_data as gen
from load_common import PAGE, manage, query


def parsed_file_rows(fmt: str, path: str) -> int:
    """Rows of the export body in the file ``path``, parsed in full (csv module /
    ``json.loads``); runs in a spawned process of ``Verifier.finish``."""
    body = Path(path).read_bytes()
    if fmt == "csv":
        return sum(1 for _ in csv.reader(io.StringIO(body.decode("utf-8"), newline=""))) - 1
    if fmt == "json":
        return len(json.loads(body))
    raise ValueError(f"the load test cannot parse format {fmt!r}")


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


def redis_connect(url):
    import redis

    conn = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
    conn.ping()
    return conn


def redis_key_prefixes(conn) -> dict:
    """Keys in the Redis database by prefix (evidence that limits and jobs went through
    Redis): the first two parts split at ':' or '/', e.g. LIMITS:LIMITER, rq:job."""
    keys = defaultdict(int)
    for key in conn.scan_iter(count=1000):
        key = key.decode("utf-8", "replace")
        keys[":".join(re.split(r"[:/]", key)[:2])] += 1
    return dict(keys)
