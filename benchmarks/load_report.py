"""The load test's statistics (``Stats``: latencies, bytes, rows, deliberate 429s and
errors per kind of request), its goals and its Markdown report (``render``)."""

from __future__ import annotations

import math
import os
import sys
import threading
from collections import defaultdict
from pathlib import Path

from load_common import FORM_GET, FORM_POST, PAGE, STALLED_LENGTH, STALLED_SENT, query


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


def pct(values, p):
    v = sorted(values)
    return v[max(0, math.ceil(p * len(v)) - 1)] * 1000 if v else float("nan")


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
