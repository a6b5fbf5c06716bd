#!/usr/bin/env python
"""Benchmark signed and age-encrypted backups, and ``manage.py restore`` against ``psql``.

    .venv/bin/python benchmarks/restore_benchmark.py [--rows 1400000] [--runs 3]
        [--database-url postgresql://postgres@127.0.0.1:5432/gr_restore_bench] [--replace]

Creates a database (``--rows`` guests, ~300 MB) with generate_data.py and an
uploads folder, generates an age identity, then times, alternating:
``manage.py backup`` plain (signed) and with ``BACKUP_AGE_RECIPIENTS`` (signed +
encrypted); ``manage.py restore`` of both archives and ``psql --single-transaction
-f database.sql`` (the plain archive's dump), each into a fresh empty database,
with the peak RSS of every process; ``manage.py verify`` of both archives and the
app's start-up (``backup-key``) as phases of the restore. Prints a Markdown
table, also written to benchmarks/results/restore.md. Details: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import psycopg2

import generate_data as gen
from backup_benchmark import (RESULTS, TIME, BenchError, ChildHwm, check_archive, database_size,
                              make_uploads, med, mib, peak_kib, wait_bounded, with_time)

ROOT = gen.ROOT


def run(cmd: list[str], env: dict, work: Path, comm: str | None = None) -> dict:
    """``cmd`` (in the repo) under GNU time; wall time, peak RSS of its largest process
    and, with ``comm``, the sampled peak of that child; stdout+stderr as ``out``."""
    rss_file = work / "rss"
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(with_time(cmd, rss_file), cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
        sampler = ChildHwm(proc.pid, comm or "-")
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
        raise BenchError(f"{' '.join(cmd[:4])} failed ({rc}):\n{text[-2000:]}")
    return {"s": seconds, "rss": peak_kib(rss_file), "rss_child": sampler.peak_kb, "out": text}


def manage(*args: str) -> list[str]:
    return [sys.executable, "manage.py", *args]


def sql(url: str, statement: str, autocommit: bool = True):
    conn = psycopg2.connect(gen.libpq_url(url), connect_timeout=10)
    try:
        conn.autocommit = autocommit
        with conn.cursor() as cur:
            cur.execute(statement)
            return cur.fetchone() if cur.description else None
    finally:
        conn.close()


def backup(env: dict, outdir: Path, work: Path) -> dict:
    """``manage.py backup --output outdir``: the archive is the last line of stdout."""
    r = run(manage("backup", "--output", str(outdir)), env, work, comm="pg_dump")
    r["path"] = Path(r["out"].strip().splitlines()[-1])
    r["bytes"] = r["path"].stat().st_size
    return r


def measure_backups(env: dict, enc_env: dict, work: Path, runs: int, files: int,
                    photos: int, log) -> tuple[list[dict], list[dict]]:
    """``runs`` alternating (plain, encrypted) backups; the last pair is kept in work/."""
    plain, enc, outdir = [], [], work / "out"
    for i in range(runs):
        for series, e, suffix in ((plain, env, ".zip"), (enc, enc_env, ".zip.age")):
            shutil.rmtree(outdir, ignore_errors=True)
            outdir.mkdir()
            r = backup(e, outdir, work)
            if not r["path"].name.endswith(suffix):
                raise BenchError(f"{r['path'].name}: expected a {suffix} archive")
            if suffix == ".zip":
                check_archive(r["path"], files, photos)
            elif not r["path"].with_name(r["path"].name + ".sig").is_file():
                raise BenchError(f"{r['path'].name}: no .sig sidecar")
            keep = work / f"kept{suffix}"  # the name is signed: keep it (and the sidecar)
            shutil.rmtree(keep, ignore_errors=True)
            keep.mkdir()
            for f in outdir.glob(r["path"].name + "*"):
                f.rename(keep / f.name)
            r["path"] = keep / r["path"].name
            series.append(r)
        log(f"  run {i + 1}: plain {plain[-1]['s']:.2f} s, encrypted {enc[-1]['s']:.2f} s")
    shutil.rmtree(outdir, ignore_errors=True)
    return plain, enc


def check_encrypted(archive: Path, key: Path, work: Path, files: int, photos: int) -> dict:
    """``age -d -i key -o plain.zip archive`` (the stock CLI), then a full ZIP check."""
    plain = work / "decrypted.zip"
    start = time.perf_counter()
    proc = subprocess.run(["age", "-d", "-i", str(key), "-o", str(plain), str(archive)],
                          capture_output=True, timeout=600)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise BenchError(f"age -d failed: {proc.stderr[-500:]!r}")
    dump = check_archive(plain, files, photos)
    with zipfile.ZipFile(plain) as zf:
        bad = zf.testzip()  # reads every member, checks its CRC-32
    if bad is not None:
        raise BenchError(f"decrypted archive: bad CRC in {bad}")
    size = plain.stat().st_size
    plain.unlink()
    return {"s": seconds, "zip_bytes": size, "dump_bytes": dump}


def fresh(target: str) -> None:
    """An empty target database, and a checkpoint, so that every load starts alike."""
    gen.drop_database(target)
    gen.create_database(target)
    sql(target, "CHECKPOINT")


def measure_restores(archives: dict, target: str, env: dict, work: Path, key: Path,
                     pubkey: str, dump: Path, runs: int, guests: int, files: int, log) -> dict:
    cmds = {"psql": (["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction",
                      "-f", str(dump), "-d", target], None)}
    for kind, path in archives.items():
        extra = ["--identity", str(key)] if kind == "encrypted" else []
        cmds[kind] = (manage("restore", str(path), "--database-url", target, "--uploads",
                             str(work / "restored"), "--yes", "--trusted-key", pubkey, *extra),
                      "psql")
        cmds[f"verify {kind}"] = (manage("verify", str(path), "--trusted-key", pubkey, *extra), None)
    cmds["start-up"] = (manage("backup-key"), None)
    series: dict[str, list[dict]] = {k: [] for k in cmds}
    for i in range(runs):
        for kind, (cmd, comm) in cmds.items():
            loads = not kind.startswith(("verify", "start-up"))
            if loads:
                fresh(target)
                shutil.rmtree(work / "restored", ignore_errors=True)
            r = run(cmd, env, work, comm=comm)
            if loads:
                (count,) = sql(target, "SELECT count(*) FROM guest")
                if count != guests:
                    raise BenchError(f"{kind}: {count} guests restored, the source has {guests}")
                if kind != "psql" and f"and {files} uploads" not in r["out"]:
                    raise BenchError(f"{kind}: unexpected output {r['out'][-500:]}")
                gen.drop_database(target)
            elif kind.startswith("verify") and "OK " not in r["out"]:
                raise BenchError(f"{kind}: {r['out'][-500:]}")
            series[kind].append(r)
        log(f"  run {i + 1}: " + ", ".join(f"{k} {v[-1]['s']:.2f} s" for k, v in series.items()))
    shutil.rmtree(work / "restored", ignore_errors=True)
    return series


def table(info: dict, plain: list[dict], enc: list[dict], rs: dict) -> str:
    secs = lambda runs: ", ".join(f"{r['s']:.2f}" for r in runs)  # noqa: E731
    ratio = med(enc, "s") / med(plain, "s")
    base = med(rs["psql"], "s")
    r_plain, r_enc = med(rs["plain"], "s") / base, med(rs["encrypted"], "s") / base
    goal = lambda r, g: "meets" if r <= g else "misses"  # noqa: E731
    lines = [
        f"{info['rows']:,} guests, pg_database_size {info['db_bytes'] / 1e6:.0f} MB, plain SQL "
        f"dump {info['dump_bytes'] / 1e6:.0f} MB; uploads {info['files']} files "
        f"({info['upload_bytes'] / 1e6:.1f} MB) + {info['photos']} guest photos (left out). "
        f"{info['runs']} alternating runs each after one untimed warm-up round; medians. "
        f"{os.cpu_count()} CPUs; 1-min load average {info['load'][0]:.2f} before the warm-up "
        f"and {info['load'][1]:.2f} after the last timed run (other work on the machine adds noise).",
        "",
        "### Backup: signed vs signed + age-encrypted",
        "",
        "| | `manage.py backup` (signed) | with `BACKUP_AGE_RECIPIENTS` (signed + encrypted) |",
        "|---|---:|---:|",
        f"| wall time, median (s) | {med(plain, 's'):.2f} | {med(enc, 's'):.2f} |",
        f"| wall time, each run (s) | {secs(plain)} | {secs(enc)} |",
        f"| archive size (MB) | {med(plain, 'bytes') / 1e6:.1f} (.zip) | "
        f"{med(enc, 'bytes') / 1e6:.1f} (.zip.age) |",
        f"| peak RSS (MiB) | python {mib(med(plain, 'rss'))} (+ pg_dump "
        f"{mib(med(plain, 'rss_child'))}) | python {mib(med(enc, 'rss'))} (+ pg_dump "
        f"{mib(med(enc, 'rss_child'))}) |",
        "",
        f"**Ratio encrypted / plain (median wall time): {ratio:.2f}** ({goal(ratio, 1.10)} the "
        f"goal of <= 1.10). `age -d -i key.txt` (the age CLI) decrypted the last encrypted "
        f"archive in {info['age_s']:.2f} s into a {info['zip_bytes'] / 1e6:.1f} MB ZIP that "
        f"passed `ZipFile.testzip()` and the member checks.",
        "",
        "### Restore into a fresh empty database",
        "",
        "| | `psql --single-transaction -f database.sql` | `manage.py restore` plain "
        "| `manage.py restore --identity` encrypted |",
        "|---|---:|---:|---:|",
        f"| wall time, median (s) | {base:.2f} | {med(rs['plain'], 's'):.2f} | "
        f"{med(rs['encrypted'], 's'):.2f} |",
        f"| wall time, each run (s) | {secs(rs['psql'])} | {secs(rs['plain'])} | "
        f"{secs(rs['encrypted'])} |",
        f"| ratio vs psql | 1.00 | **{r_plain:.2f}** | **{r_enc:.2f}** |",
        f"| peak RSS (MiB) | psql {mib(med(rs['psql'], 'rss'))} | largest "
        f"{mib(med(rs['plain'], 'rss'))} (psql child {mib(med(rs['plain'], 'rss_child'))}) | "
        f"largest {mib(med(rs['encrypted'], 'rss'))} (psql child "
        f"{mib(med(rs['encrypted'], 'rss_child'))}) |",
        f"| `manage.py verify` alone, median (s) | | {med(rs['verify plain'], 's'):.2f} | "
        f"{med(rs['verify encrypted'], 's'):.2f} |",
        f"| peak RSS of verify (MiB) | | {mib(med(rs['verify plain'], 'rss'))} | "
        f"{mib(med(rs['verify encrypted'], 'rss'))} |",
        "",
        f"Ratio restore / psql: plain {r_plain:.2f}, encrypted {r_enc:.2f} "
        f"({goal(max(r_plain, r_enc), 1.5)} the goal of <= 1.5). Every restore brought back "
        f"all {info['guests']:,} guests (and every upload). App start-up alone "
        f"(`manage.py backup-key`): {med(rs['start-up'], 's'):.2f} s median.",
        "",
        "Where a restore's time goes (medians; the restore verifies first, then loads): "
        + "; ".join(f"{k}: start-up {up:.2f} s + verify work {med(rs['verify ' + k], 's') - up:.2f}"
                    f" s + load {med(rs[k], 's') - med(rs['verify ' + k], 's'):.2f} s (psql alone "
                    f"{base:.2f} s)" for k in ("plain", "encrypted")
                    for up in [med(rs["start-up"], "s")]) + ".",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    gen.add_archive_arguments(parser, "gr_restore_bench", deadline=3600)
    parser.add_argument("--rows", type=int, default=1_400_000, help="guests in the database")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each command")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.rows < 1:
        parser.error("--runs and --rows must be positive")
    src = gen.libpq_url(args.database_url)
    target = gen.sibling_url(src, "_target")
    for tool in (TIME, shutil.which("age"), shutil.which("psql")):
        if not tool or not os.access(tool, os.X_OK):
            raise SystemExit("needs GNU time at /usr/bin/time, age and psql on the PATH")
    gen.refuse_existing((src, target), args.replace)
    from pyrage import x25519

    gen.start_deadline(args.deadline)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="gr_restore_bench_")
    work = Path(tmp.name)
    identity = x25519.Identity.generate()
    key = work / "key.txt"
    key.touch(mode=0o600)
    key.write_text(f"# benchmark identity\n{identity}\n")
    env = {**os.environ, "INSTANCE_PATH": str(work / "instance"), "DATABASE_URL": src,
           "UPLOAD_FOLDER": str(work / "uploads"), "BACKUP_FOLDER": str(work / "backups")}
    env.pop("BACKUP_AGE_RECIPIENTS", None)
    enc_env = {**env, "BACKUP_AGE_RECIPIENTS": str(identity.to_public())}
    created = []
    try:
        gen_env = {**env, "PGOPTIONS": "-c statement_timeout=600s"}
        os.environ["PGOPTIONS"] = gen_env["PGOPTIONS"]
        gen.drop_database(target)  # only reached with --replace or when missing
        gen.drop_database(src)
        created += [target, src]
        gen.generate(src, args.rows, 0, env=gen_env, log=lambda m: log("  " + m))
        del os.environ["PGOPTIONS"]
        (guests,) = sql(src, "SELECT count(*) FROM guest")
        info = {"rows": args.rows, "runs": args.runs, "files": args.files, "photos": args.photos,
                "guests": guests, "db_bytes": database_size(src),
                "upload_bytes": make_uploads(work / "uploads", args.files, args.photos)}
        log(f"pg_database_size: {info['db_bytes'] / 1e6:.1f} MB ({guests:,} guests)")
        pubkey = run(manage("backup-key"), env, work)["out"].strip().splitlines()[-1]
        log(f"signing key {pubkey}; age recipient {identity.to_public()}")
        log("warm-up (untimed) ...")
        info["load"] = [os.getloadavg()[0]]
        measure_backups(env, enc_env, work, 1, args.files, args.photos, log=lambda m: None)
        log(f"backups, {args.runs} runs each:")
        plain, enc = measure_backups(env, enc_env, work, args.runs, args.files, args.photos, log)
        archives = {"plain": plain[-1]["path"], "encrypted": enc[-1]["path"]}
        checked = check_encrypted(archives["encrypted"], key, work, args.files, args.photos)
        info.update(age_s=checked["s"], zip_bytes=checked["zip_bytes"])
        dump = work / "database.sql"
        with zipfile.ZipFile(archives["plain"]) as zf, zf.open("database.sql") as src_fh, \
                open(dump, "wb") as out:
            shutil.copyfileobj(src_fh, out, 1 << 20)
        info["dump_bytes"] = dump.stat().st_size
        log("warm-up (untimed) ...")
        measure_restores(archives, target, env, work, key, pubkey, dump, 1, guests, args.files,
                         log=lambda m: None)
        log(f"restores, {args.runs} runs each (+ verify and start-up):")
        rs = measure_restores(archives, target, env, work, key, pubkey, dump, args.runs, guests,
                              args.files, log)
        info["load"].append(os.getloadavg()[0])
        result = table(info, plain, enc, rs)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "restore.md").write_text(result)
        print("\n" + result)
    finally:
        signal.alarm(0)
        os.environ.pop("PGOPTIONS", None)
        for url in created:
            if url != src or not args.keep_db:
                gen.drop_database(url)
        tmp.cleanup()
        log(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
