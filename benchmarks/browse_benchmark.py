#!/usr/bin/env python
"""Benchmark browsing an archive (Restore a selection) through the real web server.

    .venv/bin/python benchmarks/browse_benchmark.py [--rows 1500000]
        [--database-url postgresql://postgres@127.0.0.1:5432/gr_browse_bench] [--replace]
        [--keep-db] [--server serve|flask]

Fills a database with generate_data.py (``--rows`` guests, three per registration,
12 trips), makes one archive with ``manage.py backup`` and verifies it
(``manage.py verify``: the page offers verified archives only), starts the app
(``manage.py serve``: gunicorn, 2 gthread workers), logs in as an admin and, like
a person on the page: opens the archive (POST, then the page until it shows the
archive: verify + load into a scratch database + search indexes), then asks the
search pages and measures each first page's wall time, a few further pages, one
"compare with today" of a search, and one trip compared with today (the whole
trip streamed from both databases). The server's memory (summed RSS of the
gunicorn master and workers) is sampled before opening, after opening, and
during the searches. Prints a Markdown table, also written to
benchmarks/results/browse.md. Goals: first page < 2 s; memory growth < 100 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

import generate_data as gen

from load_clients import Client, csrf_token
from server_process import RssSampler, free_port, process_tree, start_server, status_kb, stop_server

RESULTS = Path(__file__).resolve().parent / "results"
ADMIN = ("browse-admin@example.com", "browse-admin-password-1")
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
#: (label, query string of the search page)
SEARCHES = [
    ("common last name", {"q": "Nováková"}),
    ("first + last name", {"q": "Jan Dvořák"}),
    ("last name of several words", {"q": "van der Berg"}),
    ("document number prefix", {"q": "A1B2"}),
    ("one e-mail address", {"q": "guest123456@example.com"}),
    ("e-mail prefix matching everyone", {"q": "guest"}),
    ("nobody", {"q": "Zzyzx"}),
    ("name in one trip", {"q": "Müller", "trip": "5"}),
    ("name and one day", {"q": "Smith", "from": "2025-06-20", "to": "2025-06-20"}),
    ("one trip, no text", {"trip": "3"}),
]


def rss_mb(pid: int) -> float:
    return sum(status_kb(p, "VmRSS") for p in process_tree(pid)) / 1024


def get(client: Client, path: str, want: int = 200) -> tuple[bytes, float]:
    status, headers, body, seconds = client.request("GET", path)
    if status != want:
        raise RuntimeError(f"GET {path}: HTTP {status} {body[:300]!r}")
    return body, seconds


def post(client: Client, path: str, fields: dict) -> dict:
    status, headers, body, _ = client.request("POST", path, body=urlencode(fields),
                                              headers=FORM)
    if status != 302:
        raise RuntimeError(f"POST {path}: HTTP {status} {body[:300]!r}")
    return headers


def log_in(client: Client) -> None:
    page, _ = get(client, "/login")
    post(client, "/login", {"email": ADMIN[0], "password": ADMIN[1],
                            "csrf_token": csrf_token(page)})


def open_archive(client: Client, name: str, timeout: float = 3600) -> tuple[str, float]:
    """POST open, then the session page until it shows the archive: (id, seconds)."""
    page, _ = get(client, "/admin/backup/browse/")
    if name.encode() not in page:
        raise RuntimeError(f"{name} is not offered on the page (not verified?)")
    start = time.perf_counter()
    where = post(client, "/admin/backup/browse/open", {"csrf_token": csrf_token(page),
                                                        "archive": name})["Location"]
    sid = re.search(r"/s/([0-9a-f]{16})/", where).group(1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body, _ = get(client, f"/admin/backup/browse/s/{sid}/")
        if b'id="browse-session"' in body:
            return sid, time.perf_counter() - start
        if b'data-state="failed"' in body:
            raise RuntimeError("the archive could not be opened; see the server log")
        time.sleep(0.5)
    raise RuntimeError("the archive did not open in time")


def measure_searches(client: Client, sid: str) -> list[dict]:
    out = []
    base = f"/admin/backup/browse/s/{sid}/"
    for label, args in SEARCHES:
        body, seconds = get(client, base + "?" + urlencode(args))
        rows = body.count(b"data-guest=")
        nxt = re.search(rb'id="browse-next" href="([^"]+)"', body)
        out.append({"label": label, "args": args, "s": seconds, "rows": rows,
                    "more": bool(nxt)})
    body, _ = get(client, base + "?" + urlencode({"q": "Nováková"}))
    pages = []
    for _ in range(5):  # keyset pages: each as fast as the first
        nxt = re.search(rb'id="browse-next" href="([^"]+)"', body)
        if not nxt:
            break
        body, seconds = get(client, nxt.group(1).decode().replace("&amp;", "&"))
        pages.append(seconds)
    out.append({"label": "next 5 pages of 'Nováková' (max)", "s": max(pages or [0]),
                "rows": 50, "more": True})
    _, seconds = get(client, base + "?" + urlencode({"q": "Nováková", "compare": "1"}))
    out.append({"label": "compare a search with today", "s": seconds, "rows": 50,
                "more": True})
    _, seconds = get(client, f"/admin/backup/browse/s/{sid}/trip/1")
    out.append({"label": "compare trip 1 (every row of it) with today", "s": seconds,
                "rows": None, "more": False})
    return out


def table(info: dict, searches: list[dict]) -> str:
    first = [s for s in searches if "args" in s]
    worst = max(s["s"] for s in first)
    growth = info["rss_peak"] - info["rss_before"]
    lines = [
        f"{info['guests']:,} guests ({info['registrations']:,} registrations), archive "
        f"{info['archive_bytes'] / 1e6:.1f} MB; server `{info['server']}` (2 workers); "
        f"{os.cpu_count()} CPUs, load average {info['load']:.2f} at the start.",
        "",
        f"**Open** (POST → the page shows the archive): {info['open_s']:.1f} s wall time; of "
        f"it verify + load + erasures {info['load_s']:.1f} s and the search indexes "
        f"{info['index_s']:.1f} s.",
        "",
        "| search (first page of 50 unless said) | wall time (s) | rows | more pages |",
        "|---|---:|---:|---|",
        *[f"| {s['label']} | {s['s']:.3f} | {s['rows'] if s['rows'] is not None else ''} | "
          f"{'yes' if s['more'] else 'no'} |" for s in searches],
        "",
        f"**Slowest first page: {worst:.3f} s** ({'meets' if worst < 2 else 'misses'} the "
        f"goal of < 2 s).",
        "",
        f"Server memory (summed RSS of the master and workers): {info['rss_before']:.0f} MB "
        f"before opening, {info['rss_open']:.0f} MB after opening, peak "
        f"{info['rss_peak']:.0f} MB during the searches and comparisons (largest single "
        f"process high-water mark {info['hwm']:.0f} MB). **Growth {growth:.0f} MB** "
        f"({'meets' if growth < 100 else 'misses'} the goal of < 100 MB).",
    ]
    return "\n".join(lines) + "\n"


def run(args, work: Path, log) -> tuple[dict, list[dict]]:
    src = gen.libpq_url(args.database_url)
    env = {**os.environ, "INSTANCE_PATH": str(work / "instance"), "DATABASE_URL": src,
           "UPLOAD_FOLDER": str(work / "uploads"), "BACKUP_FOLDER": str(work / "backups"),
           "SECRET_KEY": "browse-benchmark", "SECURITY_PASSWORD_SALT": "browse-benchmark"}
    for key in ("REDIS_URL", "BACKUP_REMOTE_URL", "BACKUP_AGE_RECIPIENTS"):
        env.pop(key, None)
    gen.generate(src, args.rows, 0, env={**env, "PGOPTIONS": "-c statement_timeout=1200s"},
                 admin_email=ADMIN[0], admin_password=ADMIN[1], log=lambda m: log("  " + m))
    manage = [sys.executable, "manage.py"]
    import subprocess

    out = subprocess.run(manage + ["backup"], cwd=gen.ROOT, env=env, capture_output=True,
                         text=True, timeout=3600, check=True).stdout
    archive = Path(out.strip().splitlines()[-1])
    subprocess.run(manage + ["verify", str(archive)], cwd=gen.ROOT, env=env, check=True,
                   capture_output=True, timeout=3600)
    log(f"archive {archive.name} ({archive.stat().st_size / 1e6:.1f} MB), verified")
    (guests,), = gen_query(src, "SELECT count(*) FROM guest")
    (regs,), = gen_query(src, "SELECT count(*) FROM registration")
    info = {"guests": guests, "registrations": regs, "archive_bytes": archive.stat().st_size,
            "load": os.getloadavg()[0]}
    RESULTS.mkdir(exist_ok=True)
    port = free_port()
    with open(RESULTS / "browse-server.log", "w") as server_log:
        proc, info["server"] = start_server(args.server, port, env, server_log, workers=2,
                                            threads=4)
        try:
            client = Client(port)
            log_in(client)
            get(client, "/admin/backup/browse/")
            get(client, "/admin/backup/")  # every worker has served a page
            info["rss_before"] = rss_mb(proc.pid)
            sid, info["open_s"] = open_archive(client, archive.name)
            entry = json.loads((work / "instance" / "browse" / "sessions.json").read_text())[sid]
            info.update(load_s=entry["open_seconds"], index_s=entry["index_seconds"],
                        rss_open=rss_mb(proc.pid))
            log(f"open {info['open_s']:.1f} s")
            with RssSampler(proc.pid) as sampler:
                searches = measure_searches(client, sid)
            info.update(rss_peak=max(sampler.peak_mb, info["rss_open"]), hwm=sampler.hwm_mb)
            page, _ = get(client, f"/admin/backup/browse/s/{sid}/")
            post(client, f"/admin/backup/browse/s/{sid}/close", {"csrf_token": csrf_token(page)})
        finally:
            stop_server(proc)
            drop_leftovers(work, src)
    return info, searches


def drop_leftovers(work: Path, src: str) -> None:
    """Scratch databases a failed run left open (the registry names them)."""
    try:
        entries = json.loads((work / "instance" / "browse" / "sessions.json").read_text())
    except (OSError, ValueError):
        return
    base = src.rpartition("/")[0]
    for entry in entries.values():
        if entry.get("database", "").startswith("guest_browse_"):
            gen.drop_database(f"{base}/{entry['database']}")


def gen_query(url: str, sql: str):
    import psycopg2

    conn = psycopg2.connect(url, connect_timeout=10)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_500_000, help="guests in the database")
    parser.add_argument("--database-url",
                        default="postgresql://postgres@127.0.0.1:5432/gr_browse_bench")
    parser.add_argument("--replace", action="store_true", help="drop the database first")
    parser.add_argument("--keep-db", action="store_true", help="keep the database")
    parser.add_argument("--server", default="serve", choices=("serve", "flask"))
    parser.add_argument("--deadline", type=int, default=5400, help="abort after this many s")
    args = parser.parse_args(argv)
    src = gen.libpq_url(args.database_url)
    gen.refuse_existing([src], args.replace)
    gen.start_deadline(args.deadline)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gr_browse_bench_") as tmp:
        try:
            gen.drop_database(src)  # only reached with --replace or when missing
            info, searches = run(args, Path(tmp), log)
        finally:
            if not args.keep_db:
                gen.drop_database(src)
    result = table(info, searches)
    (RESULTS / "browse.md").write_text(result)
    print("\n" + result)
    log(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
