"""Helpers for end-to-end browser tests: the real app in its own process, and
Chromium driven through Playwright's sync API.

``live_server(database_url, workdir)`` prepares the app the way an operator
would (``manage.py setup``, ``demo-data``, ``users create``), starts
``manage.py run`` on a free port, waits until it answers and stops it at the
end. Everything the server and the commands print goes to one log file; use
``LiveServer.log_since(offset)`` to show what a failing test made it print.

``browser_unavailable_reason()`` / ``require_browser()`` implement the skip
policy: without Playwright or Chromium the browser tests are skipped with the
reason, unless ``REQUIRE_BROWSER=1``, which turns that into a failure.
``chromium(playwright)`` launches the browser with the settings this machine needs.

These are plain functions and context managers; a test module wraps them in
fixtures of the scope it wants (see ``tests/browser/conftest.py``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from tests.helpers import create_pg_database, drop_pg_database, missing

ROOT = Path(__file__).resolve().parent.parent
MANAGE = ROOT / "manage.py"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"

#: Chromium to drive (``playwright install`` cannot download browsers here).
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

#: Environment variables the app reads; the parent's values must not leak in.
APP_ENV = ("DATABASE_URL", "INSTANCE_PATH", "SECRET_KEY", "SECURITY_PASSWORD_SALT",
           "UPLOAD_FOLDER", "BACKUP_FOLDER", "ADMIN_EMAIL", "ADMIN_PASSWORD",
           "DISABLED_PLUGINS", "MAX_PHOTO_BYTES", "FLASK_APP", "FLASK_DEBUG", "FLASK_RUN_PORT",
           "FLASK_RUN_HOST")

COMMAND_TIMEOUT = 120  # seconds for one manage.py command (setup, demo-data, users create)
STARTUP_TIMEOUT = 60   # seconds until the server must answer
STOP_TIMEOUT = 10      # seconds between terminate and kill


# --------------------------------------------------------------------------- server

class LiveServerError(RuntimeError):
    """The app could not be prepared or started; the message ends with its log."""


@dataclass
class LiveServer:
    base_url: str
    port: int
    database_url: str
    workdir: Path
    instance_path: Path
    upload_folder: Path
    backup_folder: Path
    log_path: Path
    env: dict[str, str]
    command: str = "run"
    process: subprocess.Popen | None = field(default=None, repr=False)

    def url(self, path: str = "/") -> str:
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def log_offset(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, offset: int = 0) -> str:
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(offset)
                return fh.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def manage(self, *args: str, timeout: float = COMMAND_TIMEOUT) -> str:
        """Run ``python manage.py ARGS`` against this server's database and folders."""
        return run_manage(args, self.env, self.log_path, timeout=timeout)

    def auth_token(self, email: str) -> str:
        """An API token of ``email`` (an active admin), from ``manage.py auth-token``."""
        return self.manage("auth-token", email).strip().splitlines()[-1]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _tail(text: str, lines: int = 80) -> str:
    return "\n".join(text.splitlines()[-lines:])


def run_manage(args: Sequence[str], env: dict[str, str], log_path: Path, *,
               timeout: float = COMMAND_TIMEOUT, echo: Sequence[str] | None = None) -> str:
    """Run one ``manage.py`` command, append its output to the log, return the output.

    ``echo`` is what the log shows as the command (to keep passwords out of it).
    """
    cmd = [sys.executable, str(MANAGE), *args]
    shown = " ".join(echo if echo is not None else args)
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=timeout)
        output, code = proc.stdout.decode("utf-8", "replace"), proc.returncode
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"").decode("utf-8", "replace")
        code = f"timeout after {timeout}s"
    with log_path.open("a", encoding="utf-8") as log:
        log.write(f"$ manage.py {shown}\n{output}")
        if not output.endswith("\n"):
            log.write("\n")
    if code != 0:
        raise LiveServerError(f"manage.py {shown} failed ({code}):\n{_tail(output)}")
    return output


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except (urllib.error.URLError, OSError):
        return False


def _stop(proc: subprocess.Popen, log) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.write(f"--- server did not stop within {STOP_TIMEOUT}s: killed\n")
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)
    log.write(f"--- server exited with {proc.returncode}\n")
    log.flush()


def _start(server: LiveServer, log, timeout: float) -> bool:
    """Start ``manage.py run``; True once it answers, False if the port was taken."""
    if server.command == "serve":  # gunicorn, as in production
        args = ["serve", "--host", "127.0.0.1", "--port", str(server.port), "--workers", "2"]
    else:
        args = ["run", "--host", "127.0.0.1", "--port", str(server.port), "--no-reload",
                "--no-debugger"]
    cmd = [sys.executable, str(MANAGE), *args]
    log.write(f"$ manage.py {' '.join(args)}\n")
    log.flush()
    offset = server.log_offset()
    server.process = subprocess.Popen(cmd, cwd=ROOT, env=server.env, stdin=subprocess.DEVNULL,
                                      stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            log.flush()
            if "Address already in use" in server.log_since(offset):
                return False
            raise LiveServerError(
                f"the server exited with {server.process.returncode} before answering; "
                f"log {server.log_path}:\n{_tail(server.log_since())}")
        if _answers(server.url("/login")):
            return True
        time.sleep(0.2)
    _stop(server.process, log)
    raise LiveServerError(f"the server did not answer within {timeout}s; "
                          f"log {server.log_path}:\n{_tail(server.log_since())}")


@contextlib.contextmanager
def live_server(database_url: str, workdir: Path, *,
                admin: tuple[str, str], user: tuple[str, str] | None = None,
                demo_data: bool = True, log_path: Path | None = None,
                startup_timeout: float = STARTUP_TIMEOUT,
                extra_env: dict[str, str] | None = None,
                command: str = "run") -> Iterator[LiveServer]:
    """Prepare and run the real app (``manage.py run``, or ``serve``: gunicorn) in
    its own process.

    ``setup`` creates the tables and ``admin``; ``demo-data`` loads the demo
    trips and guests; ``user`` (email, password) is created as an active user
    without a role with Flask-Security's ``users create``. Yields a
    :class:`LiveServer`; the server is terminated (then killed) on exit, and on
    an error while starting the exception carries the end of the log.
    """
    workdir = Path(workdir)
    instance = workdir / "instance"
    uploads, backups = workdir / "uploads", workdir / "backups"
    instance.mkdir(parents=True, exist_ok=True)
    log_path = Path(log_path) if log_path else workdir / "live-server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text("")
    env = {k: v for k, v in os.environ.items() if k not in APP_ENV}
    env.update({
        "DATABASE_URL": database_url,
        "INSTANCE_PATH": str(instance),
        "SECRET_KEY": "live-server-secret-key",
        "SECURITY_PASSWORD_SALT": "live-server-salt",
        "UPLOAD_FOLDER": str(uploads),
        "BACKUP_FOLDER": str(backups),
        "FLASK_DEBUG": "0",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    env.update(extra_env or {})
    server = LiveServer(base_url="", port=0, database_url=database_url, workdir=workdir,
                        instance_path=instance, upload_folder=uploads, backup_folder=backups,
                        log_path=log_path, env=env, command=command)

    run_manage(["setup", "--admin-email", admin[0], "--admin-password", admin[1]], env,
               log_path, echo=["setup", "--admin-email", admin[0], "--admin-password", "***"])
    if demo_data:
        run_manage(["demo-data"], env, log_path)
    if user:
        run_manage(["users", "create", "--password", user[1], "--active", user[0]], env,
                   log_path, echo=["users", "create", "--password", "***", "--active", user[0]])

    with log_path.open("a", encoding="utf-8") as log:
        for _attempt in range(3):  # another process may grab the free port first
            server.port = free_port()
            server.base_url = f"http://127.0.0.1:{server.port}"
            if _start(server, log, startup_timeout):
                break
        else:
            raise LiveServerError(f"no free port after 3 attempts; log {log_path}:\n"
                                  f"{_tail(server.log_since())}")
        try:
            yield server
        finally:
            _stop(server.process, log)


@contextlib.contextmanager
def pg_live_server(pg_server: str, name: str, workdir: Path, **options) -> Iterator[LiveServer]:
    """:func:`live_server` on a PostgreSQL database of its own, created for it and
    dropped afterwards; ``srv.engine`` is an SQLAlchemy engine on that database."""
    import sqlalchemy as sa

    from guest_registration.config import normalise_database_url
    url = create_pg_database(pg_server, name)
    engine = sa.create_engine(normalise_database_url(url))
    try:
        with live_server(url, workdir, **options) as srv:
            srv.engine = engine
            yield srv
    finally:
        engine.dispose()
        drop_pg_database(pg_server, url)


# --------------------------------------------------------------------------- browser

def browser_unavailable_reason() -> str | None:
    """Why the browser tests cannot run here, or None if they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        return f"Playwright is not installed ({exc}); pip install playwright"
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)"
    return None


def skip_or_fail(reason: str) -> None:
    """Skip with the reason, or fail with it under ``REQUIRE_BROWSER=1``."""
    missing("REQUIRE_BROWSER", f"browser tests: {reason}")


def require_browser() -> None:
    """Apply the skip policy if Playwright or Chromium is missing."""
    reason = browser_unavailable_reason()
    if reason:
        skip_or_fail(reason)


def chromium(playwright, **launch_options):
    """Launch the local Chromium headless with the flags this machine needs."""
    options = {"executable_path": CHROMIUM, "headless": True, "args": list(CHROMIUM_ARGS),
               "timeout": 30_000}
    options.update(launch_options)
    return playwright.chromium.launch(**options)


@contextlib.contextmanager
def browser_session(**launch_options):
    """Playwright + Chromium for a block, under the skip policy.

    A Chromium that is present but does not start counts as unavailable too
    (skip, or fail under ``REQUIRE_BROWSER=1``), with the launch error as reason.
    """
    require_browser()
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        try:
            browser = chromium(pw, **launch_options)
        except PlaywrightError as exc:
            skip_or_fail(f"Chromium at {CHROMIUM} did not start: {str(exc).splitlines()[0]}")
        try:
            yield browser
        finally:
            browser.close()
