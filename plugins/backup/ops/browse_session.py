"""One browse session (an archive open in a scratch database) as the registry
holds it, and this process's engine on its copy: :mod:`guest_backup.ops.browse`
opens, finds, reaps and closes them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import NullPool

from guest_backup.archive.manifest import format_time, now_text
from guest_backup.ops.audit import quietly
from guest_backup.ops.browse_load import drop_scratch
from guest_backup.ops.browse_registry import Registry, parse_time
from guest_backup.ops.context import BackupContext

engines: dict[str, Engine] = {}  # this process's engine of each session


@dataclass
class BrowseSession:
    """One archive open in a scratch database."""

    id: str
    archive: str
    dialect: str
    database: str               # PostgreSQL: the database's name; SQLite: the file
    opened_at: datetime
    used_at: datetime
    state: str = "opening"      # opening | open | failed
    actor: str | None = None
    error: str | None = None
    open_seconds: float | None = None   # verify + load + upgrade + erasures
    index_seconds: float | None = None  # the search indexes added afterwards
    erasures: int = 0
    schema: str | None = None
    pid: int | None = None
    source: str | None = None   # what it holds, with which trust (source_of)
    trust: str | None = None    # the keys trusted when it was opened (current_trust)
    heads: str | None = None    # the code's schema history it was loaded at (current_heads)
    ctx: BackupContext | None = field(default=None, repr=False, compare=False)

    @property
    def url(self) -> str:
        """The scratch database's URL (with the live database's credentials)."""
        if self.dialect == "sqlite":
            return f"sqlite:///{self.database}"
        live = make_url(self.ctx.settings.database_url)
        return live.set(database=self.database).render_as_string(hide_password=False)

    @property
    def engine(self) -> Engine:
        """This process's engine on the scratch database (made once)."""
        engine = engines.get(self.id)
        if engine is None:
            engine = engines[self.id] = create_engine(self.url, pool_pre_ping=True,
                                                       pool_size=2, max_overflow=2) \
                if self.dialect != "sqlite" else create_engine(self.url, poolclass=NullPool)
        return engine

    def touch(self) -> None:
        """Used now: the idle clock starts again."""
        self.used_at = datetime.now(timezone.utc)
        with Registry(self.ctx.instance_path).edit() as entries:
            if self.id in entries:
                entries[self.id]["used_at"] = now_text()

    def close(self, live_engine: Engine | None = None, *, actor=None, via: str = "cli",
              reason: str = "closed") -> None:
        """Drop the scratch database and forget the session."""
        with Registry(self.ctx.instance_path).edit() as entries:
            entries.pop(self.id, None)
        drop(self)
        if live_engine is not None:
            quietly("a browse session", self.ctx.audit.record, live_engine, "browse", "ok",
                    actor=actor, via=via, target=self.archive, message=f"{reason}: scratch "
                    f"copy dropped")

    def to_dict(self) -> dict:
        return {"id": self.id, "archive": self.archive, "state": self.state,
                "opened_at": format_time(self.opened_at),
                "open_seconds": self.open_seconds, "index_seconds": self.index_seconds,
                "erasures": self.erasures, "schema": self.schema, "error": self.error}


def current_trust(ctx: BackupContext) -> str:
    """The keys this installation trusts now (its own and BACKUP_TRUSTED_KEYS) as one
    digest. A session opened under other keys is dropped, not used: with a leaked
    key taken out of BACKUP_TRUSTED_KEYS, a copy opened before still restored its
    archive's rows into the live database."""
    keys = "\n".join(sorted(ctx.settings.trusted()))
    return hashlib.sha256(keys.encode()).hexdigest()[:32]


def current_heads(ctx: BackupContext) -> str | None:
    """The code's schema history (what a loaded archive is upgraded to) as one digest:
    every revision file of every folder, with its size and time, so it changes with
    the heads (read without Alembic: it is asked on every page of a session). A
    session loaded under another one is dropped, not used: opened before an upgrade,
    its copy had skipped the new release's migrations (a data migration's values),
    and restore-select wrote its rows so into the upgraded database."""
    if ctx.migrations is None:
        return None
    from guest_backup.ops.schema import history_fingerprint

    found = history_fingerprint(ctx.migrations())
    return hashlib.sha256(json.dumps(found).encode()).hexdigest()[:32]


def idle_limit(ctx: BackupContext) -> timedelta:
    return timedelta(minutes=max(1, int(ctx.config.get("BACKUP_BROWSE_IDLE_MINUTES") or 30)))


def session_of(ctx: BackupContext, entry: dict) -> BrowseSession | None:
    """The session an entry of the registry holds; None for one that is not whole
    (edited by hand, say), which :func:`reap` removes."""
    if not isinstance(entry, dict) or not all(
            isinstance(entry.get(k), str) for k in ("id", "archive", "dialect", "database")):
        return None
    return BrowseSession(
        id=entry["id"], archive=entry["archive"], dialect=entry["dialect"],
        database=entry["database"], opened_at=parse_time(entry.get("opened_at")),
        used_at=parse_time(entry.get("used_at")), state=entry.get("state", "opening"),
        actor=entry.get("actor"), error=entry.get("error"),
        open_seconds=entry.get("open_seconds"), index_seconds=entry.get("index_seconds"),
        erasures=entry.get("erasures", 0), schema=entry.get("schema"), pid=entry.get("pid"),
        source=entry.get("source"), trust=entry.get("trust"), heads=entry.get("heads"),
        ctx=ctx)


def drop(session: BrowseSession) -> None:
    """The scratch database gone, and this process's engine on it; never raises."""
    drop_scratch(session, engines.pop(session.id, None))


__all__ = ["BrowseSession", "current_heads", "current_trust", "drop", "engines", "idle_limit",
           "session_of"]
