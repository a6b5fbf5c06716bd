#!/usr/bin/env python
"""Benchmark the start-up of ``manage.py backup --help`` and ``manage.py backup-list``
against ``python -c pass``.

    .venv/bin/python benchmarks/startup_benchmark.py [--runs 3] [--repeat 5]

In a temporary instance folder with an SQLite database (``manage.py setup`` and
three ``manage.py backup`` runs, untimed: ``backup-list`` lists and checks the
seals of three signed archives), with the project's bytecode compiled first as an
installed wheel has it, runs ``--runs`` rounds; each round runs the
three commands one after the other, ``--repeat`` times, and keeps each command's
median wall time of the round (a start-up takes tenths of a second: single runs
are mostly noise on a shared machine). Reports per command the median over the
rounds of (command - ``python -c pass``), the spread over the rounds, the peak
RSS (GNU time, largest process) and the modules imported (``-X importtime``,
counted once, untimed). Goal (issue 26): at most +0.25 s. Prints a Markdown
table, also written to benchmarks/results/startup.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import generate_data as gen
from backup_benchmark import RESULTS, TIME, BenchError, peak_kib, with_time

ROOT = gen.ROOT
GOAL = 0.25  # seconds over a bare interpreter
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "backup --help": [sys.executable, "manage.py", "backup", "--help"],
    "backup-list": [sys.executable, "manage.py", "backup-list"],
}
HEAVY = ("flask_admin", "flask_security", "boto3", "botocore", "pyrage")


def timed(cmd: list[str], env: dict, work: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one run; a failure is an error."""
    rss = work / "rss"
    start = time.perf_counter()
    proc = subprocess.run(with_time(cmd, rss), cwd=ROOT, env=env, capture_output=True,
                          timeout=120)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(cmd[1:])} failed ({proc.returncode}): "
                         f"{proc.stderr.decode(errors='replace')[-1500:]}")
    return seconds, peak_kib(rss)


def imports(cmd: list[str], env: dict) -> tuple[int, list[str]]:
    """How many modules the command imports, and which of the heavy ones."""
    proc = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    names = [line.split("|")[-1].strip() for line in proc.stderr.splitlines()
             if line.startswith("import time:") and "|" in line][1:]
    return len(names), sorted({n.split(".")[0] for n in names if n.split(".")[0] in HEAVY})


def measure(env: dict, work: Path, runs: int, repeat: int, log) -> dict:
    series: dict[str, list[tuple[float, int]]] = {name: [] for name in COMMANDS}
    for name, cmd in COMMANDS.items():  # warm-up: page cache, .pyc files
        timed(cmd, env, work)
    for i in range(runs):
        samples: dict[str, list[tuple[float, int]]] = {name: [] for name in COMMANDS}
        for _ in range(repeat):
            for name, cmd in COMMANDS.items():
                samples[name].append(timed(cmd, env, work))
        for name, got in samples.items():
            series[name].append((statistics.median(s for s, _ in got), max(k for _, k in got)))
        log(f"  round {i + 1}: " + ", ".join(f"{n} {v[-1][0]:.3f} s" for n, v in series.items()))
    return series


def table(series: dict, counts: dict, info: dict) -> str:
    base = series["python -c pass"]
    lines = [
        f"{info['runs']} rounds, each command {info['repeat']} times per round (median of the "
        f"round), alternated; {os.cpu_count()} CPUs; 1-min load average "
        f"{info['load'][0]:.2f} -> {info['load'][1]:.2f}; {info['bytecode']}; `backup-list` "
        f"lists 3 signed archives. Goal: at most +{GOAL} s.",
        "",
        "| command | wall s, median | over `python -c pass`, median (min–max of rounds) "
        "| peak RSS MiB | modules imported | heavy imports |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, got in series.items():
        extra = [s - b for (s, _), (b, _) in zip(got, base)]
        over = ("–" if name == "python -c pass" else
                f"**+{statistics.median(extra):.3f}** ({min(extra):+.3f} – {max(extra):+.3f})")
        n, heavy = counts[name]
        lines.append(f"| `{name}` | {statistics.median(s for s, _ in got):.3f} | {over} | "
                     f"{max(k for _, k in got) / 1024:.1f} | {n} | {', '.join(heavy) or '–'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="rounds")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each command per round")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.repeat < 1:
        parser.error("--runs and --repeat must be positive")
    if not os.access(TIME, os.X_OK):
        raise SystemExit(f"{TIME} (GNU time) is needed for the peak memory; apt-get install time")
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="gr_startup_bench_") as tmp:
        work = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKUP_", "AWS_"))}
        env.update(INSTANCE_PATH=str(work / "instance"), DATABASE_URL=f"sqlite:///{work}/app.db",
                   UPLOAD_FOLDER=str(work / "uploads"), BACKUP_FOLDER=str(work / "backups"))
        env.pop("REDIS_URL", None)
        bytecode = gen.compile_bytecode()
        for command in ("setup", "backup", "backup", "backup"):
            subprocess.run([sys.executable, "manage.py", command], cwd=ROOT, env=env,
                           check=True, capture_output=True, timeout=120)
        info = {"runs": args.runs, "repeat": args.repeat, "load": [os.getloadavg()[0]],
                "bytecode": bytecode}
        counts = {name: imports(cmd, env) for name, cmd in COMMANDS.items()}
        series = measure(env, work, args.runs, args.repeat, log)
        info["load"].append(os.getloadavg()[0])
    result = table(series, counts, info)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "startup.md").write_text(result)
    print("\n" + result)


if __name__ == "__main__":
    main()
