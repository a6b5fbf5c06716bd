"""Throwaway PostgreSQL clusters for the PITR tests: ``initdb`` as the ``postgres``
OS user (it refuses root) in a temporary folder it owns, its own free port, its
unix socket in that folder; stopped at once (``pg_ctl stop -m immediate``) and
removed afterwards, together with every cluster recovered inside the folder.

Without pgBackRest or the server binaries the tests are skipped with the reason,
unless ``REQUIRE_PGBACKREST=1`` (CI), where that is a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

from tests.helpers import missing, reset_moto
from tests.live_server import free_port

BINDIR = Path(os.environ.get("PITR_TEST_BINDIR", "/usr/lib/postgresql/15/bin"))
OWNER = "postgres"


def unavailable_reason() -> str | None:
    """Why real clusters cannot be made here (None: they can)."""
    if shutil.which("pgbackrest") is None:
        return "pgBackRest is not installed (apt-get install pgbackrest)"
    if not (BINDIR / "initdb").exists():
        return f"the PostgreSQL server binaries are not in {BINDIR} (PITR_TEST_BINDIR)"
    try:
        user = pwd.getpwnam(OWNER)
    except KeyError:
        return f"there is no {OWNER} OS user to own the test clusters"
    if os.geteuid() not in (0, user.pw_uid):
        return f"the PITR tests run initdb as {OWNER}: run them as root or as {OWNER}"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "runuser is missing (util-linux)"
    return None


def require() -> None:
    reason = unavailable_reason()
    if reason:
        missing("REQUIRE_PGBACKREST", reason)


def as_owner(*argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    user = pwd.getpwnam(OWNER)
    full = list(argv) if os.geteuid() == user.pw_uid else ["runuser", "-u", OWNER, "--", *argv]
    proc = subprocess.run(full, capture_output=True, text=True, cwd="/", timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv[:3])} failed: {proc.stderr.strip()[-2000:]}")
    return proc


class TestCluster:
    """One cluster in ``base`` (a folder of its own, searchable by everyone)."""

    __test__ = False  # not a test class

    def __init__(self, base: Path) -> None:
        self.base = base
        self.data = base / "data"
        self.sock = base / "sock"
        self.port = free_port()
        self.log = base / "log" / "server.log"

    @classmethod
    def create(cls, **settings: str) -> "TestCluster":
        base = Path(tempfile.mkdtemp(prefix="gr-pitr-"))
        os.chmod(base, 0o755)
        cluster = cls(base)
        cluster.init(**settings)
        return cluster

    def init(self, **settings: str) -> None:
        user = pwd.getpwnam(OWNER)
        for folder in (self.data, self.sock, self.log.parent):
            folder.mkdir(mode=0o700)
            os.chown(folder, user.pw_uid, user.pw_gid)
        as_owner(str(BINDIR / "initdb"), "-D", str(self.data), "-A", "trust", "-U", OWNER,
                 "--no-sync", "-E", "UTF8", "--locale=C")
        conf = {"port": str(self.port), "unix_socket_directories": f"'{self.sock}'",
                "listen_addresses": "''", "fsync": "off", "shared_buffers": "32MB",
                "max_connections": "40", **settings}
        with open(self.data / "postgresql.conf", "a") as out:
            out.write("".join(f"{k} = {v}\n" for k, v in conf.items()))

    def start(self) -> None:
        as_owner(str(BINDIR / "pg_ctl"), "start", "-D", str(self.data), "-l", str(self.log),
                 "-w", "-t", "60")

    def stop(self, mode: str = "fast") -> None:
        as_owner(str(BINDIR / "pg_ctl"), "stop", "-D", str(self.data), "-m", mode, "-w")

    def restart(self) -> None:
        self.stop()
        self.start()

    def kill(self) -> None:
        """The crash: every server process ends at once, nothing is flushed."""
        self.stop("immediate")

    def sql(self, query: str, db: str = "postgres", port: int | None = None) -> list[list[str]]:
        """Rows of ``query`` (one statement per call: each is its own transaction)."""
        out = as_owner(str(BINDIR / "psql"), "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
                       "-F", "|", "-h", str(self.sock), "-p", str(port or self.port), "-d", db,
                       "-c", query).stdout
        return [line.split("|") for line in out.splitlines() if line]

    def value(self, query: str, db: str = "postgres", port: int | None = None) -> str:
        return self.sql(query, db, port)[0][0]

    def now(self) -> str:
        """The server's time, as ``pitr restore --to`` takes it."""
        return self.value("SELECT to_char(now() AT TIME ZONE 'UTC', "
                          "'YYYY-MM-DD HH24:MI:SS.US') || '+00'")

    def pgbackrest_info(self, stanza: str = "guest-registration") -> dict:
        """pgBackRest's own ``info --output=json`` (the configuration `pitr setup` wrote)."""
        conf = self.base / "pgbackrest" / "pgbackrest.conf"
        out = as_owner("pgbackrest", f"--config={conf}", f"--stanza={stanza}", "--output=json",
                       "info").stdout
        return json.loads(out)[0]

    def url(self, db: str, port: int | None = None) -> str:
        return f"postgresql://{OWNER}@/{db}?host={self.sock}&port={port or self.port}"

    def wait_archived(self, timeout: float = 60) -> None:
        """Until no completed WAL segment waits to be archived."""
        deadline = time.monotonic() + timeout
        status = self.data / "pg_wal" / "archive_status"
        while any(p.suffix == ".ready" for p in status.iterdir()):
            if time.monotonic() > deadline:
                raise AssertionError("WAL segments were not archived in time")
            time.sleep(0.2)

    def stop_other(self, data: Path) -> None:
        """Stop a cluster recovered into ``data`` at once."""
        as_owner(str(BINDIR / "pg_ctl"), "stop", "-D", str(data), "-m", "immediate", "-w")

    def cleanup(self) -> None:
        """Stop every cluster in ``base`` (also recovered ones) and remove it all."""
        for pid_file in self.base.rglob("postmaster.pid"):
            as_owner(str(BINDIR / "pg_ctl"), "stop", "-D", str(pid_file.parent), "-m",
                     "immediate", "-w", check=False)
        shutil.rmtree(self.base, ignore_errors=True)


def add_registrations(cluster: TestCluster, count: int, tag: str, db: str = "guests") -> None:
    """``count`` registrations of one guest each, on trip 1 (created when missing)."""
    cluster.sql("INSERT INTO trip (id, title, max_guests, created_at) "
                "SELECT 1, 'Lake', 100000, now() WHERE NOT EXISTS (SELECT 1 FROM trip)", db)
    cluster.sql(
        "WITH r AS (INSERT INTO registration (trip_id, email, language, status, created_at) "
        f"SELECT 1, 'g' || g || '-{tag}@example.org', 'en', 'approved', "
        f"now() AT TIME ZONE 'UTC' FROM generate_series(1, {count}) g RETURNING id) "
        "INSERT INTO guest (registration_id, first_name, last_name, age_category, "
        "document_type, document_number, gdpr_consent, created_at) "
        f"SELECT id, 'Guest', '{tag}-' || id, 'adult', 'passport', 'P{tag}' || id, true, "
        "now() AT TIME ZONE 'UTC' FROM r", db)


def counts(cluster: TestCluster, port: int | None = None, db: str = "guests") -> dict[str, int]:
    return {t: int(cluster.value(f"SELECT count(*) FROM {t}", db, port))
            for t in ("trip", "registration", "guest")}


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A new certificate for 127.0.0.1 and its key in ``folder`` (cert.pem, key.pem)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@contextlib.contextmanager
def moto_over_tls(folder: Path) -> Iterator[str]:
    """moto's S3 server behind TLS with a new self-signed certificate (pgBackRest
    speaks S3 over TLS only); yields its https:// endpoint, reset and empty."""
    from moto.moto_server.werkzeug_app import (DomainDispatcherApplication, MotoRequestHandler,
                                               create_backend_app)
    from werkzeug.serving import make_server

    cert, key = self_signed(folder)

    class Handler(MotoRequestHandler):
        def finish(self):  # end TLS with close_notify: pgBackRest reads bodies to the end
            super().finish()
            try:
                self.connection.unwrap()
            except (OSError, ValueError):
                pass

    port = free_port()
    server = make_server("127.0.0.1", port, DomainDispatcherApplication(create_backend_app),
                         threaded=True, request_handler=Handler,
                         ssl_context=(str(cert), str(key)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        reset_moto()
        yield f"https://127.0.0.1:{port}"
    finally:
        server.shutdown()


class EtcCluster(TestCluster):
    """A cluster laid out as Debian's: its configuration in ``base/etc``, outside the
    data directory (``config_file`` given at start)."""

    __test__ = False

    def init(self, **settings: str) -> None:
        super().init(**settings)
        user = pwd.getpwnam(OWNER)
        etc = self.base / "etc"
        etc.mkdir(mode=0o755)
        for name in ("postgresql.conf", "pg_hba.conf", "pg_ident.conf"):
            shutil.move(self.data / name, etc / name)
        with open(etc / "postgresql.conf", "a") as out:
            out.write(f"data_directory = '{self.data}'\nhba_file = '{etc}/pg_hba.conf'\n"
                      f"ident_file = '{etc}/pg_ident.conf'\n")
        for path in (etc, *etc.iterdir()):
            os.chown(path, user.pw_uid, user.pw_gid)

    def start(self) -> None:
        as_owner(str(BINDIR / "pg_ctl"), "start", "-D", str(self.data), "-l", str(self.log),
                 "-o", f"-c config_file={self.base / 'etc' / 'postgresql.conf'}", "-w", "-t", "60")
