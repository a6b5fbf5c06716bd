"""The installed distribution works anywhere: build the wheel, install it into
virtualenvs outside the checkout and run it from a folder that holds no checkout.

1. ``pip install WHEEL`` (no extras): ``setup``, then ``backup`` with encryption off.
2. ``pip install 'WHEEL[age,s3,redis]'``: ``setup``, ``backup``, ``verify``, then
   ``serve`` answering ``/``, the login page, ``/admin/backup/`` (logged in) and
   ``/?lang=cs`` in Czech; the console script and ``python -m guest_registration``;
   the exports' compiled render (``guest_formats._copyrender``) is installed.

The instance folder is left to its default (HOME points into the temporary
folder), so the run also shows it lands outside the virtualenv.
Run: python3 .ci/wheel_smoke.py (from the checkout; exits non-zero on the first failure).
"""

from __future__ import annotations

import http.cookiejar
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
ADMIN, PASSWORD = "smoke@example.com", "smoke-test-password-1"


def run(cmd: list[str], cwd: Path, env: dict, timeout: int = 600) -> str:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        sys.exit(f"FAILED ({done.returncode}): {' '.join(map(str, cmd))}\n{done.stdout}\n"
                 f"{done.stderr}")
    return done.stdout


def venv(where: Path, wheel: Path, extras: str, env: dict) -> Path:
    run([sys.executable, "-m", "venv", str(where)], where.parent, env)
    pip = [str(where / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    run(pip + [f"{wheel}{extras}"], where.parent, env)
    return where / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(opener, url: str, data: dict | None = None) -> tuple[int, str]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    with opener.open(url, data=body, timeout=30) as response:
        return response.status, response.read().decode()


def wait_for(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.3)
    sys.exit(f"FAILED: the server did not answer {url} within {seconds} s")


def check_pages(base: str) -> None:
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    status, page = get(opener, base + "/")
    assert status == 200, status
    status, login = get(opener, base + "/login")
    assert status == 200 and 'name="password"' in login, status
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', login).group(1)
    get(opener, base + "/login", {"email": ADMIN, "password": PASSWORD, "csrf_token": token})
    status, backup = get(opener, base + "/admin/backup/")
    assert status == 200 and "system_backup_" in backup, (status, backup[:300])
    status, czech = get(urllib.request.build_opener(), base + "/?lang=cs")
    assert status == 200 and 'lang="cs"' in czech, czech[:300]
    print("pages OK: /, /login, /admin/backup/ (logged in), /?lang=cs", flush=True)


def serve(bin_: Path, site: Path, env: dict) -> None:
    port = free_port()
    server = subprocess.Popen([str(bin_ / "guest-registration"), "serve", "--port", str(port),
                               "--workers", "1", "--threads", "4"], cwd=site, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/")
        check_pages(f"http://127.0.0.1:{port}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="gr-wheel-"))
    try:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("DATABASE_URL", "INSTANCE_PATH", "VIRTUAL_ENV", "PYTHON"))}
        env["HOME"] = str(tmp / "home")
        env.pop("XDG_DATA_HOME", None)
        dist = tmp / "dist"
        source = tmp / "source"  # a copy: building leaves build/ and *.egg-info behind
        shutil.copytree(CHECKOUT, source, ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "*.egg-info", "__pycache__", "instance", "tests", "*.so"))
        run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dist),
             str(source)], tmp, env)
        wheel = next(dist.glob("guest_registration-*.whl"))
        site = tmp / "site"  # no checkout here: the wheel must bring everything
        site.mkdir()
        bare = venv(tmp / "bare", wheel, "", env)
        bare_env = dict(env, HOME=str(tmp / "home-bare"))
        run([str(bare / "guest-registration"), "setup"], site, bare_env)
        print(run([str(bare / "guest-registration"), "backup"], site, bare_env).strip()
              .splitlines()[-1], "(no extras, encryption off)", flush=True)
        full = venv(tmp / "full", wheel, "[age,s3,redis]", env)
        run([str(full / "python"), "-m", "guest_registration", "setup", "--admin-email", ADMIN,
             "--admin-password", PASSWORD], site, env)
        archive = run([str(full / "guest-registration"), "backup"], site, env).strip() \
            .splitlines()[-1]
        instance = Path(env["HOME"]) / ".local" / "share" / "guest-registration"
        assert Path(archive).is_relative_to(instance), (archive, instance)
        print(run([str(full / "guest-registration"), "verify", archive], site, env).strip())
        # the exports' render in C came with the wheel (gcc is on CI's machine)
        print(run([str(full / "python"), "-c", "import guest_formats._copyrender as m; "
                   "print('exports rendered in C:', m.__file__)"], site, env).strip())
        serve(full, site, env)
        print("wheel smoke test: OK", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
