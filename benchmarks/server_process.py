"""The app server for the benchmark as a child process, and its memory use.

``start_server`` runs the app on 127.0.0.1 (``manage.py serve``: gunicorn with
gthread workers and the app's own settings; bare gunicorn with 2 sync workers; or
``manage.py run``) in its own session; ``start_worker`` runs ``manage.py worker``
(RQ, needs ``REDIS_URL`` in the environment) the same way; ``stop_server`` stops
either. ``RssSampler`` measures the peak memory of that process and its children
while a block of code runs.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class ServerError(RuntimeError):
    """The server did not start."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(kind: str, port: int, env: dict, log, workers: int | None = None,
                 threads: int | None = None, settle: float = 1.0,
                 ) -> tuple[subprocess.Popen, str]:
    """Start the app (``kind``: auto, serve, gunicorn or flask) and wait until it answers.

    ``serve`` is ``manage.py serve`` (gthread workers; ``workers``/``threads`` as
    given, else the command's defaults, 2 x 32). Returns the process (in a session
    of its own) and the kind actually used; stdout and stderr go to the open file
    ``log``. ``settle``: seconds to wait after the first answer, so every worker has
    imported the app.
    """
    gunicorn = Path(sys.executable).with_name("gunicorn")
    if kind == "auto":
        kind = "gunicorn" if gunicorn.exists() else "flask"
    if kind == "serve":
        cmd = [sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(port)]
        cmd += ["--workers", str(workers)] if workers else []
        cmd += ["--threads", str(threads)] if threads else []
        # --workers reads WEB_CONCURRENCY, --host/--port HOST/PORT: only what we pass counts
        env = {k: v for k, v in env.items() if k not in ("WEB_CONCURRENCY", "HOST", "PORT")}
    elif kind == "gunicorn":  # sync workers; --timeout bounds one request
        cmd = [str(gunicorn), "--workers", "2", "--bind", f"127.0.0.1:{port}",
               "--timeout", "300", "guest_registration:create_app()"]
    else:
        cmd = [sys.executable, "manage.py", "run", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/api/backup/guests")  # 401 without a token: alive
            conn.getresponse().read()
            conn.close()
            time.sleep(settle)  # give the other gunicorn workers time to import the app
            return proc, kind
        except OSError:
            time.sleep(0.2)
    code = proc.poll()
    stop_server(proc)
    why = "did not answer within 60 s" if code is None else f"exited with {code}"
    raise ServerError(f"{kind} server {why}; see {log.name}")


def start_worker(env: dict, log, log_path: Path, timeout: float = 60) -> subprocess.Popen:
    """``manage.py worker`` (RQ) in a session of its own; returns once it says it is
    waiting for jobs (read from ``log_path``, the file ``log`` writes to)."""
    proc = subprocess.Popen([sys.executable, "manage.py", "worker"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        log.flush()
        if "waiting for jobs" in log_path.read_text(errors="replace"):
            return proc
        time.sleep(0.2)
    code = proc.poll()
    stop_server(proc)
    why = f"did not start within {timeout:g} s" if code is None else f"exited with {code}"
    raise ServerError(f"manage.py worker {why}; see {log_path}")


def stop_server(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM (gunicorn's master stops its workers, an RQ worker finishes its job),
    SIGKILL to the session we started for it after ``timeout`` s; then whatever is
    left of that session (an orphaned worker or job child) is killed too."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    for pid in session_members(proc.pid):  # the session's other members, if any
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def session_members(sid: int) -> list[int]:
    """Processes of the session ``sid`` (one we started with start_new_session)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid:  # after "pid (comm)": state ppid pgrp session
            found.append(int(stat.parent.name))
    return found


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (gunicorn master + workers)."""
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        try:
            todo += map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
        except OSError:
            pass
    return tree


def status_kb(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/<pid>/status (0 if the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next((int(l.split()[1]) for l in text.splitlines() if l.startswith(field + ":")), 0)


class RssSampler:
    """``peak_mb``: peak of the summed VmRSS of a process tree, sampled every 50 ms.

    Also resets each process's VmHWM (``clear_refs`` 5) on entry and reads it on
    exit, catching spikes between samples: ``hwm_mb`` is the largest
    single-process high-water mark during the measurement.
    """

    def __init__(self, root: int):
        self.pids, self.peak_mb, self._stop = process_tree(root), 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        self.peak_mb = max(self.peak_mb, sum(status_kb(p, "VmRSS") for p in self.pids) / 1024)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self._sample()

    def __enter__(self) -> "RssSampler":
        for pid in self.pids:
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")
            except OSError:
                pass  # not permitted: VmHWM stays the lifetime peak
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()
        self.hwm_mb = max(status_kb(p, "VmHWM") for p in self.pids) / 1024
