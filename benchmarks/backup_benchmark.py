#!/usr/bin/env python
"""Benchmark ``manage.py backup`` (system backup ZIP) against ``pg_dump | gzip``.

    .venv/bin/python benchmarks/backup_benchmark.py [--rows 1400000] [--runs 3]
        [--database-url postgresql://postgres@127.0.0.1:5432/gr_backup_bench] [--replace]

Creates two fresh databases (``NAME`` with ``--rows`` guests, ~300 MB, and
``NAME_small`` with ``--small-rows`` guests) with generate_data.py, an uploads
folder with ordinary files and UUID-named guest photos, then times, alternating,
``pg_dump --format=plain --no-owner --no-privileges | gzip`` and
``manage.py backup --output DIR``, with the peak RSS of every process involved.
Prints a Markdown table, also written to benchmarks/results/backup.md; drops the
databases and temporary files at the end. Details: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from pathlib import Path

import psycopg2

import generate_data as gen
from server_process import process_tree, status_kb

ROOT = gen.ROOT
RESULTS = Path(__file__).resolve().parent / "results"
STEP_TIMEOUT = 600  # seconds, per subprocess (dump, backup)
TIME = "/usr/bin/time"  # GNU time, for the peak RSS of each command
GOAL = 1.0  # issue 26: a signed + encrypted backup no slower than pg_dump | gzip
PHOTO_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.jpg$")


class BenchError(RuntimeError):
    """A command failed or an archive is wrong."""


def make_uploads(folder: Path, files: int, photos: int) -> int:
    """``files`` ordinary uploads (half text, half random bytes, some in a subfolder)
    and ``photos`` ``<uuid>.jpg`` guest photos; returns the ordinary files' bytes."""
    rng, total = random.Random(42), 0
    for i in range(files):
        sub = folder / ("documents" if i % 3 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        size = rng.randint(20_000, 200_000)
        if i % 2:  # incompressible, like a PDF or an image
            data, name = rng.randbytes(size), f"attachment_{i:02d}.pdf"
        else:
            words = [rng.choice(gen.LAST_NAMES) for _ in range(size // 8)]
            data, name = " ".join(words).encode()[:size], f"notes_{i:02d}.txt"
        (sub / name).write_bytes(data)
        total += len(data)
    for _ in range(photos):
        (folder / f"{uuid.UUID(int=rng.getrandbits(128), version=4)}.jpg").write_bytes(
            rng.randbytes(300_000))
    return total


def with_time(cmd: list[str], rss_file: Path) -> list[str]:
    """``cmd`` under GNU time, which writes its peak RSS (KiB) and its CPU seconds
    (user, system; with the children it waited for) to ``rss_file``. (Not
    ``os.wait4``: a child forked from this Python process inherits its high-water mark.)"""
    return [TIME, "-f", "%M %U %S", "-o", str(rss_file), *cmd]


def peak_kib(rss_file: Path) -> int:
    return int(rss_file.read_text().split()[-3])


def cpu_s(rss_file: Path) -> float:
    """User + system CPU seconds of the command and the children it waited for."""
    user, system = rss_file.read_text().split()[-2:]
    return float(user) + float(system)


def wait_bounded(procs: list[subprocess.Popen]) -> list[int]:
    """Wait for all ``procs`` within STEP_TIMEOUT (killing them all after it)."""
    deadline = time.monotonic() + STEP_TIMEOUT
    try:
        return [p.wait(timeout=max(0.1, deadline - time.monotonic())) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


class ChildHwm(threading.Thread):
    """Largest ``VmHWM`` of the ``comm`` (pg_dump) processes under ``root``, sampled every
    20 ms (VmHWM only grows: the last sample before the child exits is close to its peak),
    and when such a process (not a ``--version`` run) was first and last seen, in
    ``time.perf_counter()`` seconds (None if never): where a command's time goes."""

    def __init__(self, root: int, comm: str = "pg_dump"):
        super().__init__(daemon=True)
        self.root, self.comm, self.peak_kb, self.stop = root, comm, 0, threading.Event()
        self.first: float | None = None
        self.last: float | None = None

    def run(self) -> None:
        while not self.stop.wait(0.02):
            for pid in process_tree(self.root)[1:]:
                try:
                    if Path(f"/proc/{pid}/comm").read_text().strip() == self.comm:
                        self.peak_kb = max(self.peak_kb, status_kb(pid, "VmHWM"))
                        self._seen(pid)
                except OSError:
                    pass  # already gone

    def _seen(self, pid: int) -> None:
        if b"--version" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
            return
        now = time.perf_counter()
        self.first = now if self.first is None else self.first
        self.last = now


def run_pipeline(url: str, out: Path, work: Path) -> dict:
    """``pg_dump --format=plain --no-owner --no-privileges DB | gzip > out``."""
    dump_rss, gzip_rss = work / "rss_pg_dump", work / "rss_gzip"
    start = time.perf_counter()
    with open(out, "wb") as fh, tempfile.TemporaryFile() as err:
        dump = subprocess.Popen(with_time(["pg_dump", "--format=plain", "--no-owner",
                                           "--no-privileges", "-d", gen.libpq_url(url)], dump_rss),
                                stdout=subprocess.PIPE, stderr=err)
        try:
            gz = subprocess.Popen(with_time(["gzip"], gzip_rss), stdin=dump.stdout, stdout=fh,
                                  stderr=err)
        finally:
            dump.stdout.close()  # gzip holds the read end now
        codes = wait_bounded([dump, gz])
        seconds = time.perf_counter() - start
        if any(codes):
            err.seek(0)
            raise BenchError(f"pg_dump | gzip failed {codes}: {err.read(2000)!r}")
    return {"s": seconds, "bytes": out.stat().st_size, "rss_dump": peak_kib(dump_rss),
            "rss_gzip": peak_kib(gzip_rss)}


def run_backup(env: dict, outdir: Path, work: Path) -> dict:
    """``manage.py backup --output outdir``; its archive is the last line of stdout."""
    rss_file = work / "rss_backup"
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(with_time([sys.executable, "manage.py", "backup", "--output",
                                           str(outdir)], rss_file),
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        sampler = ChildHwm(proc.pid)
        sampler.start()
        try:
            (rc,) = wait_bounded([proc])
        finally:
            sampler.stop.set()
        seconds = time.perf_counter() - start
        sampler.join(timeout=5)
        out.seek(0)
        text = out.read().decode(errors="replace")
    if rc != 0:
        raise BenchError(f"manage.py backup failed ({rc}):\n{text[-2000:]}")
    path = Path(text.strip().splitlines()[-1])
    # GNU time reports the largest process of the tree: Python, not its pg_dump child
    return {"s": seconds, "path": path, "bytes": path.stat().st_size,
            "rss": peak_kib(rss_file), "rss_dump": sampler.peak_kb}


def check_archive(path: Path, files: int, photos: int) -> int:
    """The ZIP has the dump, every ordinary upload, no photo; returns the dump's size."""
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        manifest = json.loads(zf.read("manifest.json"))
        dump = zf.getinfo("database.sql").file_size
    uploads = [n for n in names if n.startswith("uploads/")]
    leaked = [n for n in uploads if PHOTO_RE.match(n.rsplit("/", 1)[-1])]
    if len(uploads) != files or leaked or manifest["excluded_guest_photos"] != photos:
        raise BenchError(f"{path.name}: {len(uploads)} uploads (want {files}), photos in it: "
                         f"{leaked[:3]}, excluded {manifest['excluded_guest_photos']} (want {photos})")
    if dump != manifest["members"]["database.sql"]["size"] or dump == 0:
        raise BenchError(f"{path.name}: database.sql is {dump} bytes, manifest disagrees")
    return dump


def check_output(path: Path, files: int, photos: int) -> int:
    """:func:`check_archive` for a plain archive; an age-encrypted one (``.zip.age``)
    must start with the age header and have its signature sidecar (``.sig``); its
    dump's size is not known without decrypting it (0)."""
    if not path.name.endswith(".age"):
        return check_archive(path, files, photos)
    with open(path, "rb") as fh:
        header = fh.read(22)
    if header != b"age-encryption.org/v1\n" or not Path(f"{path}.sig").is_file():
        raise BenchError(f"{path.name}: no age header ({header!r}) or no .sig sidecar")
    return 0


def remove_output(path: Path) -> None:
    """The archive and its sidecars (``.sig``)."""
    for f in path.parent.glob(path.name + "*"):
        f.unlink()


def database_size(url: str) -> int:
    with psycopg2.connect(gen.libpq_url(url), connect_timeout=10) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_database_size(current_database())")
        size = cur.fetchone()[0]
    conn.close()
    return size


def measure(url: str, env: dict, work: Path, runs: int, files: int, photos: int,
            log) -> tuple[list[dict], list[dict], int]:
    """``runs`` alternating (pipeline, backup) pairs; outputs deleted after each run."""
    pipe, back, dump_bytes = [], [], 0
    env = {**env, "DATABASE_URL": url}
    for i in range(runs):
        p = run_pipeline(url, work / "dump.sql.gz", work)
        (work / "dump.sql.gz").unlink()
        b = run_backup(env, work / "out", work)
        dump_bytes = check_output(b["path"], files, photos)
        remove_output(b["path"])
        pipe.append(p)
        back.append(b)
        log(f"  run {i + 1}: pipeline {p['s']:.2f} s, backup {b['s']:.2f} s")
    return pipe, back, dump_bytes


def med(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def table(info: dict, pipe: list[dict], back: list[dict], spipe: list[dict],
          sback: list[dict]) -> str:
    # judged by the larger of the ratio of the median times and the median of the
    # rounds' ratios, as s3_benchmark.py does (a few rounds can read either way)
    of_medians = med(back, "s") / med(pipe, "s")
    of_rounds = statistics.median(b["s"] / p["s"] for p, b in zip(pipe, back))
    ratio = max(of_medians, of_rounds)
    per_run = ", ".join(f"{b['s'] / p['s']:.2f}" for p, b in zip(pipe, back))
    dump = f"{info['dump_bytes'] / 1e6:.0f} MB" if info["dump_bytes"] else "(encrypted: n/a)"
    secs = lambda rs: ", ".join(f"{r['s']:.2f}" for r in rs)  # noqa: E731
    rows = [
        ("wall time, median (s)", f"{med(pipe, 's'):.2f}", f"{med(back, 's'):.2f}"),
        ("wall time, each run (s)", secs(pipe), secs(back)),
        ("archive size (MB)", f"{med(pipe, 'bytes') / 1e6:.1f} (.sql.gz)",
         f"{med(back, 'bytes') / 1e6:.1f} (.zip{'.age' if info['encrypted'] else ''}, "
         "incl. uploads)"),
        ("peak RSS (MiB), large DB", f"pg_dump {mib(med(pipe, 'rss_dump'))} + gzip "
         f"{mib(med(pipe, 'rss_gzip'))}", f"python {mib(med(back, 'rss'))} "
         f"(+ its pg_dump {mib(med(back, 'rss_dump'))})"),
        (f"peak RSS (MiB), small DB ({info['small_rows']:,} guests)",
         f"pg_dump {mib(med(spipe, 'rss_dump'))} + gzip {mib(med(spipe, 'rss_gzip'))}",
         f"python {mib(med(sback, 'rss'))} (+ its pg_dump {mib(med(sback, 'rss_dump'))})"),
        ("wall time, small DB, median (s)", f"{med(spipe, 's'):.2f}", f"{med(sback, 's'):.2f}"),
    ]
    lines = [
        f"Large DB: {info['rows']:,} guests, pg_database_size {info['db_bytes'] / 1e6:.0f} MB, "
        f"plain SQL dump {dump}; small DB: "
        f"{info['small_db_bytes'] / 1e6:.0f} MB. Uploads: {info['files']} files, "
        f"{info['upload_bytes'] / 1e6:.1f} MB, plus {info['photos']} guest photos (left out). "
        f"{info['runs']} alternating runs each, after one warm-up; medians. Archives "
        f"{'signed + age-encrypted' if info['encrypted'] else 'signed'}. 1-min load average "
        f"{' -> '.join(f'{x:.2f}' for x in info['load'])}.",
        "",
        "| | `pg_dump \\| gzip` (level 6) | `manage.py backup` |",
        "|---|---:|---:|",
        *(f"| {a} | {b} | {c} |" for a, b, c in rows),
        "",
        f"**Ratio backup / pipeline: {ratio:.2f}** (the larger of the ratio of the median "
        f"times, {of_medians:.2f}, and the median of the rounds' ratios, {of_rounds:.2f}; "
        f"per run: {per_run}; "
        f"{'meets' if ratio <= GOAL else 'misses'} the goal of <= {GOAL}). "
        f"Peak RSS of the backup process, large vs small DB: "
        f"{mib(med(back, 'rss'))} vs {mib(med(sback, 'rss'))} MiB.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    gen.add_archive_arguments(parser, "gr_backup_bench", deadline=1800)
    parser.add_argument("--rows", type=int, default=1_400_000, help="guests in the large DB")
    parser.add_argument("--small-rows", type=int, default=20_000, help="guests in the small DB")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each command")
    parser.add_argument("--encrypted", action="store_true",
                        help="age-encrypt the backups (BACKUP_AGE_RECIPIENTS, a fresh identity)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.rows < 1 or args.small_rows < 1:
        parser.error("--runs, --rows and --small-rows must be positive")
    big = gen.libpq_url(args.database_url)
    small = gen.sibling_url(big, "_small")
    if not os.access(TIME, os.X_OK):
        raise SystemExit(f"{TIME} (GNU time) is needed for the peak memory; apt-get install time")
    gen.refuse_existing((big, small), args.replace)
    gen.start_deadline(args.deadline)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    created: list[str] = []
    tmp = tempfile.TemporaryDirectory(prefix="gr_backup_bench_")
    work = Path(tmp.name)
    env = {**os.environ, "INSTANCE_PATH": str(work / "instance"),
           "UPLOAD_FOLDER": str(work / "uploads"), "BACKUP_FOLDER": str(work / "backups")}
    env.pop("BACKUP_AGE_RECIPIENTS", None)
    if args.encrypted:
        env["BACKUP_AGE_RECIPIENTS"] = gen.age_recipient(work)
    try:
        # bound every statement of the data generation (libpq reads PGOPTIONS)
        gen_env = {**env, "PGOPTIONS": "-c statement_timeout=600s"}
        os.environ["PGOPTIONS"] = gen_env["PGOPTIONS"]
        for url, rows in ((small, args.small_rows), (big, args.rows)):
            gen.drop_database(url)  # only reached with --replace or when missing
            created.append(url)
            gen.generate(url, rows, 0, env=gen_env, log=lambda m: log("  " + m))
        del os.environ["PGOPTIONS"]
        info = {"rows": args.rows, "small_rows": args.small_rows, "runs": args.runs,
                "files": args.files, "photos": args.photos, "encrypted": args.encrypted,
                "load": [os.getloadavg()[0]],
                "db_bytes": database_size(big), "small_db_bytes": database_size(small)}
        log(f"pg_database_size: {info['db_bytes'] / 1e6:.1f} MB ({args.rows:,} guests), "
            f"{info['small_db_bytes'] / 1e6:.1f} MB ({args.small_rows:,} guests)")
        info["upload_bytes"] = make_uploads(work / "uploads", args.files, args.photos)
        (work / "out").mkdir()
        log("warm-up (untimed) ...")
        measure(big, env, work, 1, args.files, args.photos, log=lambda m: None)
        log(f"large DB, {args.runs} runs each:")
        pipe, back, info["dump_bytes"] = measure(big, env, work, args.runs, args.files,
                                                 args.photos, log)
        log(f"small DB, {args.runs} runs each:")
        spipe, sback, _ = measure(small, env, work, args.runs, args.files, args.photos, log)
        info["load"].append(os.getloadavg()[0])
        result = table(info, pipe, back, spipe, sback)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "backup.md").write_text(result)
        print("\n" + result)
    finally:
        signal.alarm(0)
        os.environ.pop("PGOPTIONS", None)
        for url in created if not args.keep_db else []:
            gen.drop_database(url)
        tmp.cleanup()
        log(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
