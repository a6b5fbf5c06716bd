"""The app server for the benchmark as a child process, and its memory use.

``start_server`` runs the app on 127.0.0.1 (gunicorn with 2 workers, or
``manage.py run``) in its own session; ``RssSampler`` measures the peak memory of
that process and its children while a block of code runs.
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


def start_server(kind: str, port: int, env: dict, log) -> tuple[subprocess.Popen, str]:
    """Start the app (``kind``: auto, gunicorn or flask) and wait until it answers.

    Returns the process (in a session of its own) and the kind actually used;
    stdout and stderr go to the open file ``log``.
    """
    gunicorn = Path(sys.executable).with_name("gunicorn")
    if kind == "auto":
        kind = "gunicorn" if gunicorn.exists() else "flask"
    if kind == "gunicorn":  # sync workers; --timeout bounds one request
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
            time.sleep(1)  # give the other gunicorn worker time to import the app
            return proc, kind
        except OSError:
            time.sleep(0.2)
    code = proc.poll()
    stop_server(proc)
    why = "did not answer within 60 s" if code is None else f"exited with {code}"
    raise ServerError(f"{kind} server {why}; see {log.name}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()  # gunicorn's master stops its workers on SIGTERM
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the session we started for it
            proc.wait(timeout=10)


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
