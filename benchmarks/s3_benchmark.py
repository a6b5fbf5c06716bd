#!/usr/bin/env python
"""Benchmark ``manage.py backup`` local-only against the same backup copied to S3.

    .venv/bin/python benchmarks/s3_benchmark.py [--rows 1400000] [--runs 3]
        [--database-url postgresql://postgres@127.0.0.1:5432/gr_s3_bench] [--replace]

Creates a database (``--rows`` guests, ~300 MB) with generate_data.py and an
uploads folder, starts moto's S3 server (``python -m moto.server``) as a separate
process on a free loopback port, then times, alternating, ``manage.py backup``
local-only and with ``BACKUP_REMOTE_URL=s3://bench-bucket/site-a`` (multipart,
the default 8 MiB parts; and ``--small-part-runs`` runs with ``BACKUP_S3_PART_MB=5``), with
the peak RSS of the backup process. Every uploaded object is read back (size,
SHA-256, part count) and no multipart upload may be left open. Prints a Markdown
table, also written to benchmarks/results/s3.md. Details: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import generate_data as gen
from backup_benchmark import (RESULTS, TIME, BenchError, check_output, database_size,
                              make_uploads, med, mib)
from restore_benchmark import manage, run, sql

BUCKET, PREFIX = "bench-bucket", "site-a"
CREDS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
         "AWS_DEFAULT_REGION": "us-east-1"}
MiB = 1024 * 1024
TIME_GOAL, RSS_GOAL = 1.10, 50  # issue 26: to S3 with no local copy vs the local backup


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A new certificate for 127.0.0.1 and its key (openssl)."""
    cert, key = folder / "moto-cert.pem", folder / "moto-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


#: ``python -m moto.server`` with Nagle's algorithm off on the connections it accepts
#: (werkzeug's server leaves it on: over TLS, where an answer's headers and body are
#: two records, the body waits for the client's delayed ACK of the headers)
MOTO_NODELAY = ("import sys; from werkzeug.serving import WSGIRequestHandler; "
                "WSGIRequestHandler.disable_nagle_algorithm = True; "
                "from moto.server import main; main(sys.argv[1:])")


def start_s3_server(log_path: Path, tls: tuple[Path, Path] | None = None, stub: bool = False,
                    nodelay: bool = False) -> tuple[subprocess.Popen, str]:
    """moto's S3 server in its own process (its CPU and memory are not the backup's);
    over HTTPS with ``tls`` (certificate, key), as S3 itself is served. ``stub``:
    benchmarks/stub_s3.py instead, the in-memory S3 that costs almost nothing.
    ``nodelay``: moto with TCP_NODELAY on its connections (:data:`MOTO_NODELAY`)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if stub:
        cmd = [sys.executable, str(Path(__file__).with_name("stub_s3.py")), str(port)]
        cmd += [str(tls[0]), str(tls[1])] if tls else []
    else:
        cmd = [sys.executable] + (["-c", MOTO_NODELAY] if nodelay else ["-m", "moto.server"])
        cmd += ["-H", "127.0.0.1", "-p", str(port)]
        cmd += ["-c", str(tls[0]), "-k", str(tls[1])] if tls else []
    with open(log_path, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"the S3 server exited ({proc.returncode}); see {log_path}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    proc.kill()
    proc.wait()
    raise BenchError("the S3 server did not start within 60 s")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def check_remote(s3, path: Path, part_mb: int) -> int:
    """The object's bytes equal the local archive's (size, SHA-256, streamed), it has
    the expected number of parts, and no multipart upload is left open; then the
    object is deleted (moto keeps everything). Returns the number of parts."""
    key = f"{PREFIX}/{path.name}"
    body = s3.get_object(Bucket=BUCKET, Key=key)
    etag, h, size = body["ETag"].strip('"'), hashlib.sha256(), 0
    for chunk in body["Body"].iter_chunks(MiB):
        h.update(chunk)
        size += len(chunk)
    with open(path, "rb") as fh:
        local_size, local_sha = path.stat().st_size, hashlib.file_digest(fh, "sha256").hexdigest()
    if size != local_size or h.hexdigest() != local_sha:
        raise BenchError(f"{key}: {size} bytes / sha256 {h.hexdigest()[:16]} in S3, local "
                         f"{local_size} bytes / sha256 {local_sha[:16]}")
    parts = int(etag.rsplit("-", 1)[1]) if "-" in etag else 1
    if parts > max(1, math.ceil(local_size / (5 * MiB))):  # S3's smallest part: 5 MiB
        raise BenchError(f"{key}: {parts} parts for {local_size} bytes at {part_mb} MiB")
    open_uploads = s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    if open_uploads:
        raise BenchError(f"unfinished multipart uploads: {[u['Key'] for u in open_uploads]}")
    for obj in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/").get("Contents", []):
        s3.delete_object(Bucket=BUCKET, Key=obj["Key"])
    return parts


def upload_seconds(url: str, name: str) -> float:
    """The upload phase as the audit log saw it (start and end of ``remote.upload``)."""
    row = sql(url, "SELECT extract(epoch FROM finished_at - created_at), outcome FROM audit_log"
                   f" WHERE action = 'upload' AND target = '{name}'")
    if row is None or row[1] != "ok":  # a streamed upload may be audited with the backup
        return float("nan")
    return float(row[0])


# In the app, without the backup around it: RSS after start-up, after building the S3
# client (boto3 imports + the S3 service model), and the peak during one upload.
PROBE = """
import sys
from pathlib import Path
from guest_registration.cli import load_app
from guest_backup.storages.s3 import S3StorageType
kb = lambda f: int(next(l for l in open("/proc/self/status") if l.startswith(f)).split()[1])
app = load_app()
before = kb("VmRSS:")
storage = S3StorageType().open(app.config["BACKUP_REMOTE_URL"], app.config)
client = kb("VmRSS:")
Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM
storage.upload(Path(sys.argv[1]))
print(before, client, kb("VmHWM:"))
"""


def probe(env: dict, work: Path, archive: Path, s3, part_mb: int) -> dict:
    try:
        r = run([sys.executable, "-c", PROBE, str(archive)], env, work)
    except BenchError:  # the storage's API changed (streamed uploads): no probe
        return {"client": float("nan"), "upload": float("nan")}
    before, client, peak = map(int, r["out"].split()[-3:])
    check_remote(s3, archive, part_mb)
    return {"client": client - before, "upload": peak - client}


def one_backup(kind: str, env: dict, work: Path, s3, moto_pid: int, url: str, files: int,
               photos: int, keep: bool = False) -> dict:
    before = cpu_seconds(moto_pid)
    r = run(manage("backup"), env, work, comm="pg_dump")
    r["moto_cpu"] = cpu_seconds(moto_pid) - before
    path = Path(r["out"].strip().splitlines()[-1])
    if r["out"].strip().splitlines()[-1].startswith("s3://"):  # BACKUP_KEEP_LOCAL=0
        path = remote_only(s3, env, work, path.name)
    r["bytes"] = path.stat().st_size
    check_output(path, files, photos)
    if kind != "local":
        if f"copied to s3://{BUCKET}/{PREFIX}" not in r["out"]:
            raise BenchError(f"{kind}: no 'copied to' line:\n{r['out'][-1000:]}")
        r["parts"] = check_remote(s3, path, int(env["BACKUP_S3_PART_MB"]))
        r["upload_s"] = upload_seconds(url, path.name)
    r["path"] = path
    for f in path.parent.glob(path.name + "*") if not keep else []:
        f.unlink()
    return r


def remote_only(s3, env: dict, work: Path, name: str) -> Path:
    """After a backup kept only in S3: nothing in the backup folder; the object (and
    its signature sidecar) downloaded into ``work/remote`` for the checks."""
    left = [p.name for p in Path(env["BACKUP_FOLDER"]).glob("*") if p.is_file()]
    if any(n.startswith(name.split(".")[0]) for n in left):
        raise BenchError(f"BACKUP_KEEP_LOCAL=0 left a local archive: {left}")
    folder = work / "remote"
    folder.mkdir(exist_ok=True)
    for obj in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/{name}").get("Contents", []):
        s3.download_file(BUCKET, obj["Key"], str(folder / obj["Key"].rsplit("/", 1)[1]))
    return folder / name


def measure(envs: dict, work: Path, s3, moto_pid: int, url: str, runs: int, small_runs: int,
            files: int, photos: int, log) -> dict:
    """``runs`` alternating rounds of (local, s3 with the default 8 MiB parts), the first
    ``small_runs`` rounds also with s3 5 MiB parts."""
    series: dict[str, list[dict]] = {k: [] for k in envs}
    for i in range(runs):
        for kind, env in envs.items():
            if kind == "s3 5 MiB" and i >= small_runs:
                continue
            series[kind].append(one_backup(kind, env, work, s3, moto_pid, url, files, photos))
        log(f"  run {i + 1}: " + ", ".join(f"{k} {v[-1]['s']:.2f} s" for k, v in series.items()
                                           if len(v) > i))
    return series


def round_ratio(runs: list, local: list) -> float:
    """The median of the rounds' ratios (each run against the local run of its round)."""
    return statistics.median(r["s"] / b["s"] for r, b in zip(runs, local))


def phases(runs: list) -> str:
    """Where a backup's time went: when its pg_dump was first seen, for how long, and
    the time after it (the end of the upload, retention, the exit); 20 ms samples."""
    tail = statistics.median(r["s"] - r["child_from"] - r["child_for"] for r in runs)
    return f"{med(runs, 'child_from'):.2f} / {med(runs, 'child_for'):.2f} / {tail:.2f}"


def table(info: dict, series: dict) -> str:
    loc = series["local"]
    base_s, base_rss = med(loc, "s"), med(loc, "rss")
    kinds = [k for k in series if series[k]]
    secs = lambda rs: ", ".join(f"{r['s']:.2f}" for r in rs)  # noqa: E731
    cell = lambda f: " | ".join(f(k, series[k]) for k in kinds)  # noqa: E731
    part = {"local": 0, "s3 8 MiB": 8, "s3 5 MiB": 5}
    na = lambda k, fn: "" if k == "local" else fn()  # noqa: E731
    goals = []
    for k in kinds[1:]:
        extra = (max(r["rss"] for r in series[k]) - base_rss) / 1024
        p = info["probe"][k]
        spread = [r["s"] / b["s"] for r, b in zip(series[k], loc)]
        # the verdict takes the larger of the two medians: the ratio of the median
        # times and the median of the rounds' ratios (what the restore and export
        # benchmarks print) can differ by a few hundredths on a noisy machine
        ratio = max(med(series[k], "s") / base_s, round_ratio(series[k], loc))
        goals.append(f"{k}: time ratio **{ratio:.2f}** (the larger of the ratio of the "
                     f"median times, {med(series[k], 's') / base_s:.2f}, and the median of the "
                     f"rounds, {round_ratio(series[k], loc):.2f}; per round "
                     f"{', '.join(f'{x:.2f}' for x in spread)}; "
                     f"{'meets' if ratio <= TIME_GOAL else 'misses'} <= {TIME_GOAL}), peak RSS "
                     f"+{extra:.1f} MiB over local-only (largest run; "
                     f"{'meets' if extra <= RSS_GOAL else 'misses'} <= +{RSS_GOAL} MiB; the probe:"
                     f" S3 client +{mib(p['client'])}, upload +{mib(p['upload'])})")
    lines = [
        f"{info['rows']:,} guests, pg_database_size {info['db_bytes'] / 1e6:.0f} MB; uploads "
        f"{info['files']} files ({info['upload_bytes'] / 1e6:.1f} MB) + {info['photos']} guest "
        f"photos (left out). `manage.py backup` into BACKUP_FOLDER, local-only vs with "
        f"`BACKUP_REMOTE_URL=s3://{BUCKET}/{PREFIX}` against {info['server']}, a separate "
        f"process on 127.0.0.1, over {info['scheme'].upper()}. One untimed warm-up of each, then "
        f"{info['runs']} alternating rounds; medians. Archives "
        f"{'signed + age-encrypted' if info['encrypted'] else 'signed'}; S3 backups with "
        f"BACKUP_KEEP_LOCAL={info['keep_local']}. {os.cpu_count()} CPUs; 1-min load average "
        f"{info['load'][0]:.2f} before the warm-up, {info['load'][1]:.2f} after the last run.",
        "",
        "| | " + " | ".join({"local": "local-only"}.get(k, f"with S3 upload, "
                                                          f"{part[k]} MiB parts") for k in kinds)
        + " |",
        "|---|" + "---:|" * len(kinds),
        "| runs | " + cell(lambda k, rs: str(len(rs))) + " |",
        "| wall time, median (s) | " + cell(lambda k, rs: f"{med(rs, 's'):.2f}") + " |",
        "| wall time, each run (s) | " + cell(lambda k, rs: secs(rs)) + " |",
        f"| **ratio vs local-only** (goal <= {TIME_GOAL}) | " + cell(
            lambda k, rs: f"**{med(rs, 's') / base_s:.2f}**") + " |",
        "| ratio, median of the rounds' ratios | " + cell(
            lambda k, rs: f"{round_ratio(rs, loc):.2f}") + " |",
        "| upload phase (audit log), median (s) | " + cell(
            lambda k, rs: na(k, lambda: f"{med(rs, 'upload_s'):.2f}")) + " |",
        "| archive (MB) / parts | " + cell(lambda k, rs: f"{med(rs, 'bytes') / 1e6:.1f}" + na(
            k, lambda: f" / {rs[0]['parts']}")) + " |",
        "| peak RSS, backup process, median (max) (MiB) | " + cell(
            lambda k, rs: f"{mib(med(rs, 'rss'))} ({mib(max(r['rss'] for r in rs))})") + " |",
        f"| **peak RSS over local-only** (goal <= +{RSS_GOAL} MiB) | " + cell(lambda k, rs: na(
            k, lambda: f"**+{(max(r['rss'] for r in rs) - base_rss) / 1024:.1f}**")) + " |",
        "| pg_dump seen from / ran for / the backup's end after it (s), medians | " + cell(
            lambda k, rs: phases(rs)) + " |",
        "| its pg_dump child, median (MiB) | " + cell(
            lambda k, rs: mib(med(rs, "rss_child"))) + " |",
        "| backup process CPU (user + system, with pg_dump), median (s) | " + cell(
            lambda k, rs: f"{med(rs, 'cpu'):.2f}") + " |",
        "| S3 server CPU per backup, median (s) | " + cell(
            lambda k, rs: f"{med(rs, 'moto_cpu'):.2f}") + " |",
        "| probe: RSS of building the S3 client / upload peak above that (MiB) | | " + " | ".join(
            f"+{mib(p['client'])} / +{mib(p['upload'])}" for p in info["probe"].values()) + " |",
        "",
        "; ".join(goals) + ". Every upload was read back from S3 (size and SHA-256 equal to "
        "the local archive, or with BACKUP_KEEP_LOCAL=0 to the object downloaded and checked "
        "after the run, with no archive left in the backup folder) and "
        "`list_multipart_uploads` was empty after each.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    gen.add_archive_arguments(parser, "gr_s3_bench", deadline=1800)
    parser.add_argument("--rows", type=int, default=1_400_000, help="guests in the database")
    parser.add_argument("--runs", type=int, default=3,
                        help="timed rounds (local, S3 with the default 8 MiB parts)")
    parser.add_argument("--small-part-runs", type=int, default=1,
                        help="of those rounds, how many also run with BACKUP_S3_PART_MB=5")
    parser.add_argument("--encrypted", action="store_true",
                        help="age-encrypt every backup (BACKUP_AGE_RECIPIENTS, a fresh identity)")
    parser.add_argument("--keep-local", choices=("0", "1"), default="1",
                        help="BACKUP_KEEP_LOCAL of the S3 backups (0: the archive in S3 only)")
    parser.add_argument("--tls", action="store_true",
                        help="moto over HTTPS (a new self-signed certificate, trusted through "
                             "AWS_CA_BUNDLE), as S3 is reached in production")
    parser.add_argument("--stub", action="store_true",
                        help="benchmarks/stub_s3.py instead of moto: an in-memory S3 that checks "
                             "nothing, so the ratio shows what the backup's own S3 client costs "
                             "(a diagnostic: issue 26's goal is measured against moto); the "
                             "table goes to benchmarks/results/s3-stub.md")
    parser.add_argument("--moto-nodelay", action="store_true",
                        help="moto with Nagle's algorithm off on its connections (werkzeug's "
                             "server leaves it on, which over TLS holds each answer's body "
                             "for the client's delayed ACK): a diagnostic of how much of the "
                             "HTTPS row is that stall; the table goes to "
                             "benchmarks/results/s3-nodelay.md")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.rows < 1 or args.small_part_runs < 0:
        parser.error("--runs and --rows must be positive")
    if args.stub and args.moto_nodelay:
        parser.error("--moto-nodelay is a moto setting; --stub runs no moto")
    url = gen.libpq_url(args.database_url)
    if not os.access(TIME, os.X_OK):
        raise SystemExit(f"{TIME} (GNU time) is needed for the peak memory; apt-get install time")
    gen.refuse_existing([url], args.replace)
    import boto3
    import moto

    gen.start_deadline(args.deadline)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="gr_s3_bench_")
    work, moto_proc, created = Path(tmp.name), None, False
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BACKUP_", "AWS_")) or k == "AWS_CA_BUNDLE"}
    env.update(INSTANCE_PATH=str(work / "instance"), DATABASE_URL=url,
               UPLOAD_FOLDER=str(work / "uploads"), BACKUP_FOLDER=str(work / "backups"))
    if args.encrypted:
        env["BACKUP_AGE_RECIPIENTS"] = gen.age_recipient(work)
    try:
        RESULTS.mkdir(exist_ok=True)
        tls = self_signed(work) if args.tls else None
        moto_proc, endpoint = start_s3_server(
            RESULTS / ("stub-s3.log" if args.stub else "moto.log"), tls, stub=args.stub,
            nodelay=args.moto_nodelay)
        server = ("the in-memory stub S3 (`benchmarks/stub_s3.py`: checks nothing, costs almost "
                  "nothing; a diagnostic, not the goal's stand)" if args.stub else
                  f"moto {moto.__version__} (`python -m moto.server` with TCP_NODELAY on its "
                  "connections; a diagnostic, not the goal's stand)" if args.moto_nodelay else
                  f"moto {moto.__version__} (`python -m moto.server`)")
        log(f"S3 server at {endpoint} (pid {moto_proc.pid}): {server}")
        ca = {"AWS_CA_BUNDLE": str(tls[0])} if tls else {}
        s3_env = {**env, **CREDS, **ca, "AWS_ENDPOINT_URL": endpoint,
                  "BACKUP_REMOTE_URL": f"s3://{BUCKET}/{PREFIX}",
                  "BACKUP_KEEP_LOCAL": args.keep_local}
        envs = {"local": env, "s3 8 MiB": {**s3_env, "BACKUP_S3_PART_MB": "8"},
                "s3 5 MiB": {**s3_env, "BACKUP_S3_PART_MB": "5"}}
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"],
                          region_name=CREDS["AWS_DEFAULT_REGION"],
                          verify=str(tls[0]) if tls else None)
        s3.create_bucket(Bucket=BUCKET)
        gen_env = {**env, "PGOPTIONS": "-c statement_timeout=600s"}
        os.environ["PGOPTIONS"] = gen_env["PGOPTIONS"]
        gen.drop_database(url)  # only reached with --replace or when missing
        created = True
        gen.generate(url, args.rows, 0, env=gen_env, log=lambda m: log("  " + m))
        del os.environ["PGOPTIONS"]
        info = {"rows": args.rows, "runs": args.runs, "files": args.files, "photos": args.photos,
                "scheme": endpoint.split(":")[0],
                "encrypted": args.encrypted, "keep_local": args.keep_local,
                "db_bytes": database_size(url), "server": server,
                "upload_bytes": make_uploads(work / "uploads", args.files, args.photos)}
        log(f"pg_database_size: {info['db_bytes'] / 1e6:.1f} MB ({args.rows:,} guests)")
        info["load"] = [os.getloadavg()[0]]
        log(f"warm-up (untimed), load average {info['load'][0]:.2f} ...")
        measure(envs, work, s3, moto_proc.pid, url, 1, 1, args.files, args.photos,
                log=lambda m: None)
        log(f"{args.runs} rounds:")
        series = measure(envs, work, s3, moto_proc.pid, url, args.runs, args.small_part_runs,
                         args.files, args.photos, log)
        info["load"].append(os.getloadavg()[0])
        archive = one_backup("local", env, work, s3, moto_proc.pid, url, args.files, args.photos,
                             keep=True)["path"]
        info["probe"] = {k: probe(envs[k], work, archive, s3, int(envs[k]["BACKUP_S3_PART_MB"]))
                         for k in series if k != "local" and series[k]}
        result = table(info, series)
        (RESULTS / ("s3-stub.md" if args.stub else "s3-nodelay.md" if args.moto_nodelay
                    else "s3.md")).write_text(result)
        print("\n" + result)
    finally:
        signal.alarm(0)
        os.environ.pop("PGOPTIONS", None)
        if moto_proc is not None and moto_proc.poll() is None:
            moto_proc.terminate()
            try:
                moto_proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                moto_proc.kill()
                moto_proc.wait()
        if created and not args.keep_db:
            gen.drop_database(url)
        tmp.cleanup()
        log(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
