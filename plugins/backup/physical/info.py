"""``pgbackrest info --output=json`` as plain values: the backup sets (type, sizes,
duration, WAL range) and the recoverable window."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from guest_backup.archive.manifest import format_time


#: pgBackRest's times are whole seconds: a backup is consistent within the second after
MARGIN = timedelta(seconds=1)


def _utc(epoch: Any) -> datetime | None:
    return datetime.fromtimestamp(int(epoch), timezone.utc) if epoch is not None else None


@dataclass
class BackupSet:
    """One backup in the repository."""

    label: str
    type: str
    start: datetime
    stop: datetime
    #: the cluster's size, and the bytes this backup added to the repository
    size: int
    repo_size: int
    repo_delta: int
    wal_start: str
    wal_stop: str
    prior: str | None = None
    error: bool = False

    @property
    def duration(self) -> timedelta:
        return self.stop - self.start

    @classmethod
    def from_json(cls, entry: dict) -> "BackupSet":
        info, repo = entry.get("info") or {}, (entry.get("info") or {}).get("repository") or {}
        archive = entry.get("archive") or {}
        return cls(label=entry["label"], type=entry["type"],
                   start=_utc(entry["timestamp"]["start"]), stop=_utc(entry["timestamp"]["stop"]),
                   size=int(info.get("size") or 0), repo_size=int(repo.get("size") or 0),
                   repo_delta=int(repo.get("delta") or 0),
                   wal_start=archive.get("start") or "", wal_stop=archive.get("stop") or "",
                   prior=entry.get("prior"), error=bool(entry.get("error")))

    def as_dict(self) -> dict:
        data = asdict(self)
        data.update(start=format_time(self.start), stop=format_time(self.stop),
                    duration_seconds=int(self.duration.total_seconds()))
        return data


@dataclass
class RepoInfo:
    """One stanza of the repository."""

    stanza: str
    status_code: int
    status: str
    cipher: str
    backups: list[BackupSet] = field(default_factory=list)
    wal_min: str | None = None
    wal_max: str | None = None

    @classmethod
    def from_json(cls, entry: dict) -> "RepoInfo":
        archives = [a for a in entry.get("archive") or [] if a.get("min")]
        status = entry.get("status") or {}
        return cls(stanza=entry.get("name", ""), status_code=int(status.get("code", 99)),
                   status=status.get("message", ""), cipher=entry.get("cipher", "none"),
                   backups=sorted((BackupSet.from_json(b) for b in entry.get("backup") or []),
                                  key=lambda b: b.stop),
                   wal_min=min((a["min"] for a in archives), default=None),
                   wal_max=max((a["max"] for a in archives), default=None))

    @property
    def usable(self) -> list[BackupSet]:
        return [b for b in self.backups if not b.error]

    @property
    def newest_full(self) -> BackupSet | None:
        return next((b for b in reversed(self.usable) if b.type == "full"), None)

    def for_target(self, target: datetime | None) -> BackupSet | None:
        """The newest backup consistent before ``target`` (None: the newest of all)."""
        fitting = [b for b in self.usable if target is None or b.stop + MARGIN <= target]
        return fitting[-1] if fitting else None

    def window(self, archived_until: datetime | None) -> tuple[datetime, datetime] | None:
        """From the end of the oldest backup to the newest archived WAL (or the
        newest backup's end, when the archiver's time is not known)."""
        if not self.usable:
            return None
        start, end = self.usable[0].stop + MARGIN, self.usable[-1].stop + MARGIN
        if archived_until is not None and archived_until > end:
            end = archived_until
        return start, end

    def as_dict(self, archived_until: datetime | None = None) -> dict:
        window = self.window(archived_until)
        return {"stanza": self.stanza, "repo_status": self.status, "status_code": self.status_code,
                "cipher": self.cipher, "wal_min": self.wal_min, "wal_max": self.wal_max,
                "backups": [b.as_dict() for b in self.backups],
                "window": ({"from": format_time(window[0]), "to": format_time(window[1])}
                           if window else None)}
