"""A PostgreSQL cluster on this machine, driven as its owner: ``psql`` through the
unix socket, ``pg_ctl``; the archiving settings PITR needs; the archiver's state
(``pg_stat_archiver`` and the ``.ready`` files waiting in ``pg_wal/archive_status``).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from guest_backup.archive.manifest import format_time
from guest_backup.physical import PitrError
from guest_backup.physical.owner import Owner

_SEP = "\x1f"
#: the archiver's state; times as epoch seconds (no DateStyle or TimeZone to parse)
ARCHIVER_SQL = ("SELECT archived_count, last_archived_wal, extract(epoch FROM last_archived_time), "
                "failed_count, last_failed_wal, extract(epoch FROM last_failed_time) "
                "FROM pg_stat_archiver")
SETTINGS = ("archive_mode", "archive_command", "archive_timeout", "wal_level")


def find_bindir(version: str | None, given: str = "") -> str:
    """The server binaries: ``given``, Debian's folder of the cluster's major
    version, or the folder of ``pg_ctl`` on PATH ("" when none is found)."""
    if given:
        return given
    if version and Path(f"/usr/lib/postgresql/{version}/bin/pg_ctl").exists():
        return f"/usr/lib/postgresql/{version}/bin"
    found = shutil.which("pg_ctl")
    return str(Path(found).parent) if found else ""


def epoch_time(value) -> datetime | None:
    return datetime.fromtimestamp(float(value), timezone.utc) if value not in (None, "") else None


@dataclass
class Archiver:
    """``pg_stat_archiver`` and the segments waiting in ``archive_status``."""

    archived_count: int
    last_archived_wal: str | None
    last_archived_time: datetime | None
    failed_count: int
    last_failed_wal: str | None
    last_failed_time: datetime | None
    #: segments waiting (.ready files) and the oldest one's time; None: not readable
    ready: int | None = None
    oldest_ready: datetime | None = None

    @classmethod
    def from_row(cls, row, ready: tuple[int, datetime | None] | None) -> "Archiver":
        count, wal, at, failed, failed_wal, failed_at = row
        waiting, oldest = ready if ready is not None else (None, None)
        return cls(int(count or 0), wal or None, epoch_time(at), int(failed or 0),
                   failed_wal or None, epoch_time(failed_at), waiting, oldest)

    def as_dict(self) -> dict:
        data = dict(self.__dict__)
        for key in ("last_archived_time", "last_failed_time", "oldest_ready"):
            data[key] = format_time(data[key])
        return {**data, "failing": self.failing}

    @property
    def failing(self) -> bool:
        """The last attempt failed (a failure after the last success)."""
        return self.last_failed_time is not None and (
            self.last_archived_time is None or self.last_failed_time > self.last_archived_time)


@dataclass
class Cluster:
    """One cluster: its data directory, port and socket folder, run as ``owner``."""

    data: Path
    port: int
    socket: str
    owner: Owner
    bindir: str

    @classmethod
    def at(cls, data: Path, port: int, socket: str, bindir: str = "") -> "Cluster":
        owner = Owner.of_path(data)
        return cls(Path(data), port, socket, owner, find_bindir(cls.version_of(data), bindir))

    @staticmethod
    def version_of(data: Path) -> str | None:
        try:
            return (Path(data) / "PG_VERSION").read_text().strip()
        except OSError:
            return None

    def tool(self, name: str) -> str:
        if not self.bindir:
            raise PitrError("the PostgreSQL server binaries (pg_ctl) are not found: set "
                            "PITR_PG_BINDIR")
        return str(Path(self.bindir) / name)

    def psql(self, sql: str, db: str = "postgres", timeout: float = 120) -> list[list[str]]:
        """The rows of one statement, run by the owner through the socket."""
        argv = [self.tool("psql"), "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-F", _SEP,
                "-h", self.socket, "-p", str(self.port), "-d", db, "-c", sql]
        proc = self.owner.run(argv, timeout=timeout,
                              env={"PGCONNECT_TIMEOUT": "10",
                                   "PGAPPNAME": "guest-registration-pitr"})
        if proc.returncode != 0:
            raise PitrError(f"the cluster on port {self.port} did not answer: "
                            f"{_first_line(proc.stderr)}")
        return [line.split(_SEP) for line in proc.stdout.splitlines() if line]

    def running(self) -> bool:
        proc = self.owner.run([self.tool("pg_ctl"), "status", "-D", str(self.data)], timeout=30)
        return proc.returncode == 0

    def start(self, log: Path, timeout: int = 600) -> None:
        proc = self.owner.run([self.tool("pg_ctl"), "start", "-D", str(self.data), "-l", str(log),
                               "-w", "-t", str(timeout)], timeout=timeout + 30)
        if proc.returncode != 0:
            raise PitrError(f"the cluster in {self.data} did not start: {log_failure(log)}")

    def stop(self, mode: str = "fast", timeout: int = 120) -> None:
        proc = self.owner.run([self.tool("pg_ctl"), "stop", "-D", str(self.data), "-m", mode,
                               "-w", "-t", str(timeout)], timeout=timeout + 30)
        if proc.returncode != 0 and self.running():
            raise PitrError(f"the cluster in {self.data} did not stop: "
                            f"{_first_line(proc.stderr)}")

    def wait_promoted(self, log: Path, timeout: float = 3600) -> None:
        """Wait until recovery is over and the cluster takes writes (pg_ctl returns
        as soon as it accepts read-only connections)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.psql("SELECT pg_is_in_recovery()")[0][0] == "f":
                    return
            except PitrError:
                if not self.running():
                    raise PitrError(f"recovery failed: {log_failure(log)}") from None
            time.sleep(0.3)
        raise PitrError(f"recovery did not finish within {int(timeout)} s (see {log})")

    def settings(self) -> dict[str, tuple[str, bool]]:
        """The archiving settings in force: name → (value, a change waits for a restart)."""
        names = ", ".join(f"'{n}'" for n in SETTINGS)
        rows = self.psql(f"SELECT name, setting, pending_restart FROM pg_settings "
                         f"WHERE name IN ({names})")
        found = {name: (value, pending == "t") for name, value, pending in rows}
        if found.get("archive_command", ("",))[0] == "(disabled)":  # archive_mode is off
            rows = self.psql("SELECT setting FROM pg_file_settings WHERE name = "
                             "'archive_command' AND error IS NULL ORDER BY seqno DESC LIMIT 1")
            found["archive_command"] = (rows[0][0] if rows else "", False)
        return found

    def ready_files(self) -> tuple[int, datetime | None] | None:
        """How many WAL segments wait to be archived, and since when (None: the
        folder cannot be read by this process)."""
        folder = self.data / "pg_wal" / "archive_status"
        try:
            times = [entry.stat().st_mtime for entry in os.scandir(folder)
                     if entry.name.endswith(".ready")]
        except OSError:
            return None
        oldest = min(times) if times else None
        return len(times), (datetime.fromtimestamp(oldest, timezone.utc) if oldest else None)


def sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _first_line(text: str, limit: int = 200) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "no message")
    line = line.removeprefix("psql: error: ").removeprefix("pg_ctl: ")
    return line if len(line) <= limit else line[:limit - 1] + "…"


#: what PostgreSQL's FATAL lines mean for someone recovering
_KNOWN = {
    "recovery ended before configured recovery target was reached":
        "the archive ends before the target time (no transaction after it was archived): "
        "recover to latest, or to an earlier time",
    "could not bind": "the port is in use",
    "lock file": "another server uses this port or folder",
}


def log_failure(log: Path) -> str:
    """The server log's first FATAL or PANIC line, explained when it is a known one."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return f"see {log}"
    for line in lines:
        for level in ("FATAL:", "PANIC:"):
            if level in line:
                message = line.split(level, 1)[1].strip()
                known = next((text for key, text in _KNOWN.items() if key in message), None)
                return known or _first_line(message)
    return f"see {log}"
