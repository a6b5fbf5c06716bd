"""Browsing an archive: a verified archive loaded into a scratch database (the
restore path itself: seal, signature, decryption, dump screen, schema upgrade,
erasure ledger re-applied), searchable and comparable with the live database,
and the source of a selective restore (``guest_backup.ops.selection``).

A scratch database lives beside the live one: on PostgreSQL a new database
``guest_browse_<id>`` on the same server, on SQLite a file in
``<instance>/browse/``. Sessions are shared by every process through the
registry (``browse_registry``): an archive already open with the same trust,
loaded by the same schema history, is reused; one unused for
``BACKUP_BROWSE_IDLE_MINUTES`` is dropped by :func:`reap`.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import time
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy.engine import Engine

from guest_backup.archive.manifest import now_text
from guest_backup.errors import BackupError
from guest_backup.ops.audit import quietly
from guest_backup.ops.browse_load import PREFIX, load_into, sweep_strays
from guest_backup.ops.browse_registry import (FILE, FOLDER, Registry, pid_alive, shown_as,
                                              source_of)
from guest_backup.ops.browse_session import (BrowseSession, current_heads, current_trust, drop,
                                             engines, idle_limit, session_of)
from guest_backup.ops.context import BackupContext
from guest_backup.ops.page_texts import TOO_MANY_OPEN, Text
from guest_backup.ops.create import safe_message

log = logging.getLogger(__name__)

MAX_SESSIONS = 3  # scratch copies open at once (each is a whole database)
WAIT_SECONDS = 1800  # how long open_archive waits for another process opening the archive
SESSION_ID = re.compile(r"^[0-9a-f]{16}$")


def sessions(ctx: BackupContext) -> list[BrowseSession]:
    """Every session of the registry (any state), newest first."""
    found = [session_of(ctx, e) for e in Registry(ctx.instance_path).read().values()]
    return sorted((s for s in found if s is not None), key=lambda s: s.opened_at,
                  reverse=True)


def get_session(ctx: BackupContext, session_id: str) -> BrowseSession | None:
    """The session ``session_id`` if it is registered (any state) and was opened under
    the keys trusted now and the code's schema, else None (:func:`reap` drops it)."""
    if not isinstance(session_id, str) or not SESSION_ID.match(session_id):
        return None
    entry = Registry(ctx.instance_path).read().get(session_id)
    if entry is not None and _stale(ctx, entry):
        entry = None
    if entry is None:
        if (stale := engines.pop(session_id, None)) is not None:  # closed elsewhere
            stale.dispose()
        return None
    return session_of(ctx, entry)


def find_session(ctx: BackupContext, archive: str, identity=None, trusted_keys=()):
    """The open (or opening) session of ``archive`` with the same trust and schema, if any."""
    source, now = source_of(archive, identity, trusted_keys, ctx.settings.backup_folder), \
        (current_trust(ctx), current_heads(ctx))
    return next((s for s in sessions(ctx) if s.source == source and (s.trust, s.heads) == now
                 and s.state != "failed"), None)


def _stale(ctx: BackupContext, entry: dict, now: tuple | None = None) -> str | None:
    """Why a session may not be used any more (opened under other keys than the
    trusted ones, or loaded by another schema history than the code's), or None."""
    trust, heads = now or (current_trust(ctx), current_heads(ctx))
    if entry.get("trust") != trust:
        return "as the trusted keys changed"
    if entry.get("heads") != heads:
        return "as the code's schema changed (an upgrade)"
    return None


def reap(ctx: BackupContext, live_engine: Engine | None = None, via: str = "cli") -> list[str]:
    """Drop sessions idle for longer than BACKUP_BROWSE_IDLE_MINUTES, failed ones
    as old, openings whose process died, and sessions opened under other trusted
    keys than now's (a key taken out of BACKUP_TRUSTED_KEYS) or loaded by another
    schema history (an upgrade since); their ids. Scratch files of no registered
    session (left by a process killed before this version) go too."""
    if not (Path(ctx.instance_path) / FOLDER / FILE).is_file():
        return []  # nothing was ever opened here (and no folder is made for it)
    limit, now = idle_limit(ctx), datetime.now(timezone.utc)
    basis = (current_trust(ctx), current_heads(ctx))
    dropped: list[tuple[BrowseSession, str]] = []
    registry = Registry(ctx.instance_path)
    with registry.edit() as entries:
        sweep_strays(registry.folder, set(entries))
        for key, entry in list(entries.items()):
            if (session := session_of(ctx, entry)) is None:
                log.warning("browse: a broken entry of the registry was removed")
                entries.pop(key)
                continue
            idle = now - session.used_at > limit and session.state != "opening"
            orphan = session.state == "opening" and not pid_alive(session.pid)
            stale = _stale(ctx, entry, basis)
            if idle or orphan or stale:
                entries.pop(key)
                dropped.append((session, f"after {limit.seconds // 60} idle minutes"
                                if idle or orphan else stale))
    for session, why in dropped:
        drop(session)
        if live_engine is not None:
            quietly("a browse session", ctx.audit.record, live_engine, "browse", "ok",
                    actor=None, via=via, target=session.archive,
                    message=f"scratch copy dropped {why}")
    return [s.id for s, _ in dropped]


def open_archive(ctx: BackupContext, live_engine: Engine, archive: str, *, actor, via: str,
                 identity=None, trusted_keys=()) -> BrowseSession:
    """``archive`` (a stored archive's name, a path or a storage URL) loaded into a
    scratch database, or the session that already holds it (waiting while another
    process opens it). Audited as ``browse``."""
    session, mine = begin_open(ctx, live_engine, archive, actor=actor, via=via,
                               identity=identity, trusted_keys=trusted_keys)
    if session.state == "open":
        session.touch()
        return session
    if not mine:
        return _wait_for(ctx, session.id)
    return finish_open(ctx, live_engine, session, archive, actor=actor, via=via,
                       identity=identity, trusted_keys=trusted_keys)


def begin_open(ctx: BackupContext, live_engine: Engine, archive: str, *, actor,
               via: str = "cli", identity=None, trusted_keys=()) -> tuple[BrowseSession, bool]:
    """The archive's session as it is now (open, or being opened), or a new
    ``opening`` one; True when the caller must now :func:`finish_open` it (the page
    does that in a thread). Only the same archive with the same trust (and schema) is
    reused."""
    reap(ctx, live_engine, via)
    source = source_of(archive, identity, trusted_keys, ctx.settings.backup_folder)
    return _claim(ctx, archive, source, live_engine.dialect.name, actor)


def finish_open(ctx: BackupContext, live_engine: Engine, session: BrowseSession, archive: str,
                *, actor, via: str, identity=None, trusted_keys=()) -> BrowseSession:
    """Load the claimed session's archive; on failure the session is left as
    ``failed`` with the reason (dropped later like an idle one)."""
    try:
        load_into(ctx, session, archive, identity, trusted_keys, live_engine)
    except BaseException as exc:
        message = safe_message(exc, "opening of the archive")
        drop(session)
        _save(ctx, session, state="failed", error=message)
        quietly("a browse session", ctx.audit.record, live_engine, "browse", "failed",
                actor=actor, via=via, target=session.archive, message=message)
        if isinstance(exc, BackupError) or not isinstance(exc, Exception):
            raise
        raise BackupError(message) from None
    if not _save(ctx, session, state="open"):
        drop(session)  # closed while it was loading: its copy goes too
        raise BackupError("the archive was closed while it was being opened")
    quietly("a browse session", ctx.audit.record, live_engine, "browse", "ok", actor=actor,
            via=via, target=session.archive,
            message=f"opened in a scratch database: load {session.open_seconds:.1f} s, search "
                    f"indexes {session.index_seconds:.1f} s, {session.erasures} erasures "
                    f"re-applied" + (f"; {session.schema}" if session.schema else ""))
    return session


def _claim(ctx: BackupContext, archive: str, source: str, dialect: str,
           actor) -> tuple[BrowseSession, bool]:
    """The session of ``source``: an open (or opening) one, else a new ``opening``
    entry (then True: this call loads it). A failed or orphaned one is replaced."""
    trust, heads = current_trust(ctx), current_heads(ctx)
    with Registry(ctx.instance_path).edit() as entries:
        for key, entry in list(entries.items()):
            if entry.get("source") != source or _stale(ctx, entry, (trust, heads)):
                continue
            if (current := session_of(ctx, entry)) is None:
                entries.pop(key)
                continue
            if current.state == "open" or (current.state == "opening"
                                           and pid_alive(current.pid)):
                return current, False
            entries.pop(key)
            drop(current)
        if sum(1 for e in entries.values() if e.get("state") != "failed") >= MAX_SESSIONS:
            raise BackupError(Text(TOO_MANY_OPEN, count=MAX_SESSIONS))
        sid = secrets.token_hex(8)
        database = (PREFIX + sid if dialect != "sqlite"
                    else str(Registry(ctx.instance_path).folder / f"{sid}.db"))
        stamp = now_text()
        name = shown_as(archive, ctx.settings.backup_folder)
        entries[sid] = {"id": sid, "archive": name, "source": source, "dialect": dialect,
                        "database": database, "opened_at": stamp, "used_at": stamp,
                        "state": "opening", "actor": actor, "pid": os.getpid(),
                        "trust": trust, "heads": heads}
        return session_of(ctx, entries[sid]), True


def _wait_for(ctx: BackupContext, session_id: str) -> BrowseSession:
    """Another process is opening the archive: its outcome."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        session = get_session(ctx, session_id)
        if session is None or session.state == "failed":
            raise BackupError((session.error if session else None)
                              or "the archive could not be opened")
        if session.state == "open":
            session.touch()
            return session
        time.sleep(1)
    raise BackupError("the archive is still being opened by another process")


def _save(ctx: BackupContext, session: BrowseSession, **changes) -> bool:
    """The session's entry brought up to date; False when it is gone (closed while
    it was opening): it is not made again, half, to hold a copy nobody tracks."""
    for key, value in changes.items():
        setattr(session, key, value)
    with Registry(ctx.instance_path).edit() as entries:
        if session.id not in entries:
            return False
        entries[session.id] = {**entries[session.id], **changes,
                               "open_seconds": session.open_seconds,
                               "index_seconds": session.index_seconds,
                               "erasures": session.erasures, "schema": session.schema,
                               "used_at": now_text()}
        return True


__all__ = ["BrowseSession", "begin_open", "find_session", "finish_open", "get_session",
           "open_archive", "reap", "sessions"]
