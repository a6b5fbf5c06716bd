"""CPU seconds a measurement costs, summed over every process that does its work.

On a shared machine the wall time of a job depends on what else runs; the CPU
time its processes use much less. :class:`CpuMeter` adds up, between entry and
exit: the PostgreSQL backends of one database (found by their process title,
``postgres: [CLUSTER: ]USER DB ...``, sampled every 20 ms so that a backend that exits
during the measurement, like psql's, is counted up to its last sample), the
given processes (e.g. the app server's tree), the children this process waited
for (psql) and the calling thread (the client reading the output).
Parallel query workers (their title names no database) are not counted.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def cpu_of(pid: int) -> float:
    """utime + stime of a process, all its threads (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def backends(database: str) -> dict[int, float]:
    """CPU seconds of each PostgreSQL backend connected to ``database``."""
    found = {}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            title = cmdline.read_bytes()
        except OSError:
            continue
        # "postgres: [CLUSTER: ]USER DB HOST(PORT) ACTIVITY", NUL-padded
        words = title.replace(b"\0", b" ").split()[1:5]
        if title.startswith(b"postgres: ") and database.encode() in words[:4]:
            found[int(cmdline.parent.name)] = cpu_of(int(cmdline.parent.name))
    return found


class CpuMeter:
    """``with CpuMeter("gr_bench", [server pids]) as m: ...`` then ``m.seconds`` (and
    ``m.parts``: database, processes, children, thread)."""

    def __init__(self, database: str, pids: list[int] | None = None):
        self.database, self.pids = database, list(pids or [])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.seconds, self.parts = 0.0, {}

    def _sample(self) -> None:
        for pid, cpu in backends(self.database).items():
            self._seen[pid] = max(self._seen.get(pid, 0.0), cpu)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self._sample()

    def __enter__(self) -> "CpuMeter":
        self._start = backends(self.database)
        self._seen = dict(self._start)
        self._procs = {pid: cpu_of(pid) for pid in self.pids}
        self._children = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._own = time.thread_time()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        own = time.thread_time() - self._own
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.parts = {
            "database": sum(cpu - self._start.get(pid, 0.0) for pid, cpu in self._seen.items()),
            "processes": sum(cpu_of(pid) - cpu for pid, cpu in self._procs.items()),
            "children": (children.ru_utime - self._children.ru_utime
                         + children.ru_stime - self._children.ru_stime),
            "thread": own,
        }
        self.seconds = sum(self.parts.values())
