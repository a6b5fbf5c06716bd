#!/usr/bin/env python
"""Benchmark GET /api/backup/guests (the monthly guest export) against PostgreSQL's COPY.

    .venv/bin/python benchmarks/export_benchmark.py [--rows 500000] [--runs 3]
        [--database-url postgresql://postgres@127.0.0.1:5432/gr_bench] [--server auto]

Creates a fresh database, fills it (generate_data.py), serves the app on a free
127.0.0.1 port (gunicorn with 2 workers if installed, else ``manage.py run``) and
times psql's COPY of the export query, the CSV and JSON HTTP exports, and the
server's peak RSS for a small and a large month. Prints a Markdown table, also
written to benchmarks/results/export.md; drops the database at the end. What is
measured, and how: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import io
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import generate_data as gen
from cpu_meter import CpuMeter
from server_process import (RssSampler, ServerError, free_port, process_tree, start_server,
                            stop_server)

ROOT = gen.ROOT
RESULTS = Path(__file__).resolve().parent / "results"
ADMIN_EMAIL = "bench-admin@example.com"
HTTP_TIMEOUT = 120  # seconds, per socket operation
DOWNLOAD_DEADLINE = 900  # seconds, per whole export
TRICKY_NAMES = {"Nováková", "O'Brien", "Doe, Jr.", '"The Rock" Johnson'}


class BenchError(RuntimeError):
    """The benchmark cannot go on (bad answer from the app, wrong row count, ...)."""


def copy_sql(year: int, month: int) -> str:
    """The export's own SELECT (plugins/backup/guest_export.py), with literal bounds."""
    from sqlalchemy.dialects import postgresql

    from guest_backup.engines.postgresql import PostgresEngine
    from guest_backup.export.request import month_range
    from guest_backup.export.stream import export_query

    query = export_query(*month_range(year, month), timestamp=PostgresEngine().timestamp_text)
    return str(query.compile(dialect=postgresql.dialect(),
                             compile_kwargs={"literal_binds": True}))


def time_copy(url: str, sql: str) -> tuple[float, int]:
    """psql COPY ... TO STDOUT, read and discarded like the HTTP body; (seconds, rows)."""
    cmd = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", gen.libpq_url(url),
           "-c", f"COPY ({sql}) TO STDOUT WITH (FORMAT csv, HEADER)"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines = 0
    try:
        while chunk := proc.stdout.read(1 << 20):
            lines += chunk.count(b"\n")
        rc = proc.wait(timeout=DOWNLOAD_DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
    elapsed = time.perf_counter() - start
    if rc != 0:
        raise BenchError(f"psql COPY failed ({rc}): {proc.stderr.read().decode()[:2000]}")
    return elapsed, lines - 1


def fetch(port: int, token: str, year: int, month: int, fmt: str, keep: bool = False):
    """Download one export in full; returns (seconds, rows counted, X-Export-Rows, body?)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT)
    start = time.perf_counter()
    try:
        conn.request("GET", f"/api/backup/guests?year={year}&month={month}&format={fmt}",
                     headers={"Authentication-Token": token})
        resp = conn.getresponse()
        if resp.status != 200:
            raise BenchError(f"GET {fmt} {year}-{month:02d}: HTTP {resp.status} "
                             f"{resp.read(2000).decode(errors='replace')}")
        expected = int(resp.getheader("X-Export-Rows", "-1"))
        newlines, parts, first = 0, [], b""
        while chunk := resp.read(1 << 20):
            newlines += chunk.count(b"\n")
            first = first or chunk[:2]
            if keep:
                parts.append(chunk)
            if time.perf_counter() - start > DOWNLOAD_DEADLINE:
                raise BenchError(f"export {fmt} took longer than {DOWNLOAD_DEADLINE} s")
        elapsed = time.perf_counter() - start
    finally:
        conn.close()
    # CSV: header line + one CRLF line per row (no value holds a line break).
    # JSON: "[\n{..},\n ... {..}\n]" is rows + 1 line breaks; "[]" when empty.
    counted = newlines - 1 if fmt == "csv" or first != b"[]" else 0
    if counted != expected:
        raise BenchError(f"{fmt} {year}-{month:02d}: counted {counted} rows, "
                         f"X-Export-Rows says {expected}")
    return elapsed, counted, expected, (b"".join(parts) if keep else None)


def validate(fmt: str, body: bytes, expected: int) -> None:
    """Parse a whole body (untimed) and check row count, columns and tricky names."""
    from guest_backup.export.stream import FIELDS

    if fmt == "csv":
        rows = list(csv.reader(io.StringIO(body.decode("utf-8"), newline="")))
        header, records = rows[0], [dict(zip(rows[0], r)) for r in rows[1:]]
    else:
        records = json.loads(body)
        header = list(records[0]) if records else list(FIELDS)
    if header != list(FIELDS) or len(records) != expected:
        raise BenchError(f"{fmt}: header {header} / {len(records)} rows, expected {expected}")
    missing = TRICKY_NAMES - {r["last_name"] for r in records}
    if expected >= 1000 and missing:
        raise BenchError(f"{fmt}: names lost or mangled in the export: {sorted(missing)}")


def run(args, say) -> str:
    (ly, lm), (sy, sm) = gen.LARGE_MONTH, gen.SMALL_MONTH
    n = args.rows
    instance = tempfile.mkdtemp(prefix="gr_bench_instance_")
    env = {**os.environ, "DATABASE_URL": args.database_url, "INSTANCE_PATH": instance,
           "SECRET_KEY": secrets.token_urlsafe(32),
           "SECURITY_PASSWORD_SALT": secrets.token_urlsafe(16)}
    password = secrets.token_urlsafe(16)
    RESULTS.mkdir(exist_ok=True)
    server, kind = None, args.server
    try:
        gen.generate(args.database_url, n, args.small_rows, env=env, admin_email=ADMIN_EMAIL,
                     admin_password=password, log=say)
        token = subprocess.run([sys.executable, "manage.py", "auth-token", ADMIN_EMAIL],
                               cwd=ROOT, env=env, capture_output=True, text=True,
                               timeout=60, check=True).stdout.strip().splitlines()[-1]
        port = free_port()
        with open(RESULTS / "server.log", "w") as log:
            server, kind = start_server(args.server, port, env, log)
            say(f"server: {kind} (pid {server.pid}) on 127.0.0.1:{port}")

            sql = copy_sql(ly, lm)
            time_copy(args.database_url, sql)  # warm the cache
            for fmt in ("csv", "json"):  # warm-up: each worker imports and connects
                for _ in range(4):
                    fetch(port, token, sy, sm, fmt)
            results = {}
            db = gen.split_url(args.database_url)[1]
            for fmt in ("csv", "json"):  # the small month, on warmed-up workers: memory
                results[fmt, "small"] = [measure(server.pid, db, port, token, (sy, sm), fmt,
                                                 args.small_rows, i == 0)
                                         for i in range(args.runs)]
            # the large month: COPY, CSV and JSON alternated, round after round, so
            # that what else the machine does falls on all three alike
            for i in range(args.runs):
                with CpuMeter(db) as cpu:
                    seconds, rows = time_copy(args.database_url, sql)
                if rows != n:
                    raise BenchError(f"COPY returned {rows} rows, expected {n}")
                results.setdefault(("copy", "large"), []).append(
                    (seconds, 0.0, 0.0, cpu.seconds, cpu.parts))
                for fmt in ("csv", "json"):
                    results.setdefault((fmt, "large"), []).append(
                        measure(server.pid, db, port, token, (ly, lm), fmt, n, i == 0))
                say(f"round {i + 1}: " + "; ".join(
                    f"{fmt} {r[0]:.2f} s, CPU s " + " + ".join(
                        f"{k} {v:.2f}" for k, v in r[4].items() if v) + f" = {r[3]:.2f}"
                    for fmt in ("copy", "csv", "json") for r in results[fmt, "large"][-1:]))
    finally:
        if server is not None:
            stop_server(server)
        shutil.rmtree(instance, ignore_errors=True)
        if not args.keep_db:
            gen.drop_database(args.database_url)
            say("benchmark database dropped")

    return render(args, kind, results)


def measure(pid: int, db: str, port: int, token: str, month: tuple[int, int], fmt: str,
            want: int, check: bool) -> tuple:
    """One export download under the RSS sampler and the CPU meter: (seconds, peak
    tree RSS, VmHWM, CPU seconds of server, database and client); ``check`` parses
    the whole body afterwards (outside the timing)."""
    with RssSampler(pid) as rss, CpuMeter(db, process_tree(pid)) as cpu:
        seconds, rows, _, body = fetch(port, token, *month, fmt, keep=check)
    if rows != want:
        raise BenchError(f"{fmt} {month}: {rows} rows, generated {want}")
    if check:
        validate(fmt, body, rows)
    return seconds, rss.peak_mb, rss.hwm_mb, cpu.seconds, cpu.parts


def ratios(results: dict, fmt: str, i: int = 0) -> list[float]:
    """COPY seconds / export seconds (``i`` 0: wall, 3: CPU), round by round
    (alternated in the same round)."""
    return [c[i] / e[i] for c, e in zip(results["copy", "large"], results[fmt, "large"])]


def render(args, server_kind: str, results: dict) -> str:
    """The Markdown table (medians over the rounds, spread of the ratios)."""
    (ly, lm), (sy, sm) = gen.LARGE_MONTH, gen.SMALL_MONTH
    n, small = args.rows, args.small_rows

    def med(fmt, month, i):  # i: 0 seconds, 1 sampled tree RSS, 2 per-process VmHWM
        return statistics.median(r[i] for r in results[fmt, month])

    copy_s = med("copy", "large", 0)
    lines = [
        "| format | rows | seconds (median) | rows/s | ratio vs COPY, median (min–max) | "
        "CPU s (median) | CPU ratio vs COPY, median (min–max) | "
        f"peak server RSS MB, {small:,}-row month | peak server RSS MB, {n:,}-row month |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| COPY (psql, CSV) | {n:,} | {copy_s:.2f} | {n / copy_s:,.0f} | 1.00 | "
        f"{med('copy', 'large', 3):.2f} | 1.00 | – | – |",
    ]
    for fmt in ("csv", "json"):
        secs, r, c = med(fmt, "large", 0), ratios(results, fmt), ratios(results, fmt, 3)
        lines.append(f"| {fmt} (HTTP) | {n:,} | {secs:.2f} | {n / secs:,.0f} | "
                     f"**{statistics.median(r):.2f}** ({min(r):.2f}–{max(r):.2f}) | "
                     f"{med(fmt, 'large', 3):.2f} | {statistics.median(c):.2f} "
                     f"({min(c):.2f}–{max(c):.2f}) | "
                     f"{med(fmt, 'small', 1):.1f} | {med(fmt, 'large', 1):.1f} |")
    hwm = ", ".join(f"{fmt} {med(fmt, 'small', 2):.1f} → {med(fmt, 'large', 2):.1f}"
                    for fmt in ("csv", "json"))
    per_round = "; ".join(
        f"{fmt}: " + ", ".join(f"{x:.2f}" for x in ratios(results, fmt)) for fmt in ("csv", "json"))
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    lines += [
        "",
        f"{args.runs} rounds of COPY, CSV, JSON alternated; server: {server_kind} on 127.0.0.1; "
        f"months {ly}-{lm:02d} ({n:,} rows) and {sy}-{sm:02d} ({small:,} rows). "
        "ratio = COPY seconds / export seconds of the same round (1.0 = as fast as COPY; "
        f"goal >= 0.95); per round: {per_round}. Load average at the end: {load}. "
        "CPU s = CPU seconds of the database backends, the server's processes (HTTP) or "
        "psql (COPY), and the client reading the output (benchmarks/cpu_meter.py): less "
        "dependent on other load than the wall time. "
        "RSS = VmRSS of the server process and its children summed, sampled every 50 ms.",
        f"Largest single-process VmHWM (reset before each run), small → large month, MB: {hwm}.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=500_000, help="guests in the large month")
    parser.add_argument("--small-rows", type=int, default=1000, help="guests in the small month")
    parser.add_argument("--runs", type=int, default=3, help="repetitions per measurement")
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/gr_bench",
                        help="database to create (must not exist) and drop at the end")
    parser.add_argument("--server", choices=("auto", "gunicorn", "flask"), default="auto")
    parser.add_argument("--replace", action="store_true",
                        help="drop the database first if it already exists")
    parser.add_argument("--keep-db", action="store_true", help="do not drop the database")
    args = parser.parse_args()
    if args.rows < 1000 or args.small_rows < 1 or args.runs < 1:
        parser.error("need --rows >= 1000, --small-rows >= 1, --runs >= 1")
    if urlsplit(gen.libpq_url(args.database_url)).hostname != "127.0.0.1":
        parser.error("the benchmark only talks to a PostgreSQL server on 127.0.0.1")
    if gen.database_exists(args.database_url):
        if not args.replace:
            parser.error(f"database {gen.split_url(args.database_url)[1]} exists; "
                         "pass --replace to drop and recreate it")
        gen.drop_database(args.database_url)

    started = time.perf_counter()

    def say(msg: str) -> None:  # progress line with the elapsed time
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", flush=True)

    try:
        table = run(args, say)
    except (BenchError, ServerError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", None) or ""
        log = RESULTS / "server.log"
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        sys.exit(f"benchmark failed: {exc}\n{detail}\n--- tail of {log} ---\n{tail}")
    total = time.perf_counter() - started
    print("\n" + table + f"\n\nWhole run: {total:.0f} s.")
    (RESULTS / "export.md").write_text(
        f"# Guest export benchmark ({time.strftime('%Y-%m-%d %H:%M')})\n\n{table}\n\n"
        f"Whole run: {total:.0f} s.\n")


if __name__ == "__main__":
    main()
