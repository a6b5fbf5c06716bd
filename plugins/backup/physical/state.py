"""Plain pieces the PITR operations share: recovery targets as people type them,
the last ``info`` seen (kept in a file for processes that may not run pgBackRest
themselves: the web server runs as the app's user), the state as shown, and a
recovered cluster with what its checks found."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from guest_backup.archive.manifest import format_time
from guest_backup.physical import PitrError
from guest_backup.physical.cluster import Archiver, Cluster
from guest_backup.physical.config import PitrConfig
from guest_backup.physical.info import BackupSet, RepoInfo

SNAPSHOT_NAME = "pitr-info.json"


def parse_target(text: str) -> datetime | None:
    """``latest`` (None) or a moment: ``2026-12-04 17:39:00+01``; without an offset it is
    this machine's local time, refused when that time is ambiguous or does not exist
    (a daylight saving change: guessing would recover to the wrong hour). Always
    returned in UTC; a moment UTC cannot hold (year 1 with an offset) is not one."""
    value = (text or "").strip()
    if value.lower() in ("latest", "now"):
        return None
    wrong = PitrError(f"{text!r} is not a moment: give e.g. \"2026-12-04 17:39:00+01\" or "
                      f"latest")
    try:
        when = datetime.fromisoformat(value.replace("T", " ").replace("Z", "+00:00"))
        if when.tzinfo is not None:
            return when.astimezone(timezone.utc)
        first, second = (when.replace(fold=fold).astimezone(timezone.utc) for fold in (0, 1))
    except (ValueError, OverflowError, OSError):
        raise wrong from None
    if first != second:
        how = ("happens twice" if first.astimezone().replace(tzinfo=None) == when
               else "does not exist")
        offsets = " or ".join(f'"{when:%Y-%m-%d %H:%M:%S}{_offset(moment)}"'
                              for moment in (first, second))
        raise PitrError(f"{text!r} {how} in this machine's time zone (a daylight saving "
                        f"change): give the UTC offset meant, {offsets}")
    return first


def _offset(moment: datetime) -> str:
    """The local UTC offset at ``moment``, as ``+02:00``."""
    text = moment.astimezone().strftime("%z")
    return f"{text[:3]}:{text[3:5]}"


def pg_time(when: datetime) -> str:
    """A moment as PostgreSQL's recovery_target_time reads it (UTC, microseconds)."""
    return when.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f+00")


def save_snapshot(folder: str | os.PathLike, data: dict[str, Any]) -> None:
    """Keep ``data`` (with the time it was read) for other processes; quietly
    nothing when the folder is not writable by this process. The file is the
    folder owner's (the app's user, also when root writes it), mode 0600 like
    everything in the instance folder."""
    path = Path(folder) / SNAPSHOT_NAME
    data = {**data, "read_at": datetime.now(timezone.utc).timestamp()}
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # 0600
    except OSError:
        return
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(data, out)
        owner = path.parent.stat()
        if os.geteuid() == 0 and owner.st_uid != 0:
            os.chown(tmp, owner.st_uid, owner.st_gid)
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)


def load_snapshot(folder: str | os.PathLike) -> tuple[dict[str, Any], datetime] | None:
    try:
        data = json.loads((Path(folder) / SNAPSHOT_NAME).read_text())
        return data, datetime.fromtimestamp(float(data["read_at"]), timezone.utc)
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass
class PitrStatus:
    """What the page, ``pitr info`` and health show."""

    config: PitrConfig | None
    repo: RepoInfo | None = None
    archiver: Archiver | None = None
    read_at: datetime | None = None
    live: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def window(self) -> tuple[datetime, datetime] | None:
        until = self.archiver.last_archived_time if self.archiver else None
        return self.repo.window(until) if self.repo else None

    def as_dict(self) -> dict:
        until = self.archiver.last_archived_time if self.archiver else None
        return {"configured": self.config is not None or bool(self.errors), "live": self.live,
                "read_at": format_time(self.read_at), "errors": list(self.errors),
                "repository": self.config.repository if self.config else None,
                "archiver": self.archiver.as_dict() if self.archiver else None,
                **(self.repo.as_dict(until) if self.repo else {"backups": [], "window": None})}


@dataclass
class Recovered:
    """A cluster recovered and checked."""

    cluster: Cluster
    backup: BackupSet
    target: datetime | None
    database_url: str
    counts: dict[str, int] = field(default_factory=dict)
    revisions: list[str] = field(default_factory=list)
    erasures: int | None = None
    notes: list[str] = field(default_factory=list)
    #: the running cluster's audit trail was carried into it (``pitr restore``)
    audit_carried: bool = False
    #: a drill's scratch cluster that could not be removed: what to do (None: removed)
    scratch_left: str | None = None


def retarget(url: str, port: int) -> str:
    """The app's database URL on the recovered cluster's port."""
    u = make_url(url)
    if u.get_backend_name() != "postgresql":
        raise PitrError("point-in-time recovery needs the app's database on PostgreSQL")
    u = u.update_query_dict({"port": str(port)}) if "port" in u.query else u.set(port=port)
    return u.render_as_string(hide_password=False)


def target_text(target: datetime | None) -> str:
    return f"recovered to {target:%Y-%m-%d %H:%M:%S} UTC" if target else "recovered to latest"


def counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {table}" for table, n in counts.items())

