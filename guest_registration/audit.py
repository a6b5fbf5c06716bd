"""The audit log's one writer: every export, preview, backup, verify, restore,
download, delete and document-photo view goes through here.

Guest data leaving the system must be accountable, so a long action is logged
as ``running`` before its first byte (:func:`start`) and updated when it ends
(:func:`finish`: ``ok``, ``failed``, or ``aborted`` when the client went away);
a short one is logged once it is over (:func:`record`). Each entry is written
on a short transaction of its own, never inside the caller's transaction.

``bind`` is an Engine (a pooled connection for the entry) or a Connection with
no transaction open: an export writes its entries on its own connection, before
and after its snapshot, so it never needs a second one from the pool.
"""

from __future__ import annotations

import getpass
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:  # SQLAlchemy comes with the first entry, not with ``backup --help``
    from sqlalchemy.engine import Connection, Engine


def _audit():
    """The outcomes and the audit table, from the models on the first entry: the
    models bring Flask-Security's mixins, which a command that writes no entry
    (``backup --help``) should not import."""
    from .models import AUDIT_OUTCOMES, AuditEntry

    return AUDIT_OUTCOMES, AuditEntry.__table__


VIAS = ("api", "admin", "cli", "worker")
MESSAGE_CHARS = 500


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _clean(fields: dict[str, Any]) -> dict[str, Any]:
    if fields.get("message"):
        fields["message"] = str(fields["message"])[:MESSAGE_CHARS]
    if fields.get("target"):
        fields["target"] = str(fields["target"])[:255]
    return fields


def cli_actor() -> str:
    """Who runs a command: ``cli:<os user>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:
        return "cli"


@contextmanager
def _transaction(bind: Engine | Connection) -> Iterator[Connection]:
    from sqlalchemy.engine import Connection

    if isinstance(bind, Connection):
        with bind.begin():
            yield bind
    else:
        with bind.begin() as conn:
            yield conn


def start(engine: Engine | Connection, action: str, *, actor: str | None, via: str,
          **fields: Any) -> int:
    """Log the start of an action as ``running``; returns the entry id."""
    if via not in VIAS:
        raise ValueError(f"via must be one of {VIAS}, not {via!r}")
    from sqlalchemy import insert

    _, table = _audit()
    with _transaction(engine) as conn:
        return conn.execute(
            insert(table).values(action=action, outcome="running", created_at=_now(),
                                 actor=actor, via=via, **_clean(fields))
            .returning(table.c.id)
        ).scalar_one()


def finish(engine: Engine | Connection, entry_id: int, outcome: str, *,
           only_running: bool = False, **fields: Any) -> bool:
    """Record how an action ended (``ok``, ``failed``, ``aborted``); returns whether
    the entry changed. With ``only_running`` only an entry still ``running`` is
    changed, in one conditional UPDATE: whoever finds an action's process dead
    (a page poll) must not rewrite an entry the action finished itself (a backup
    audited ``ok``, then killed while pruning), and of many who find it at once
    only one finishes it."""
    from sqlalchemy import update

    outcomes, table = _audit()
    if outcome not in outcomes or outcome == "running":
        raise ValueError(outcome)
    query = update(table).where(table.c.id == entry_id)
    if only_running:
        query = query.where(table.c.outcome == "running")
    with _transaction(engine) as conn:
        return conn.execute(query.values(outcome=outcome, finished_at=_now(),
                                         **_clean(fields))).rowcount > 0


def record(engine: Engine | Connection, action: str, outcome: str, *, actor: str | None,
           via: str, **fields: Any) -> int:
    """Log an action that is already over (a verify, a refused restore, a download):
    one row, written with its outcome, never seen as ``running``."""
    if via not in VIAS:
        raise ValueError(f"via must be one of {VIAS}, not {via!r}")
    from sqlalchemy import insert

    outcomes, table = _audit()
    if outcome not in outcomes or outcome == "running":
        raise ValueError(outcome)
    now = _now()
    with _transaction(engine) as conn:
        return conn.execute(
            insert(table).values(action=action, outcome=outcome, created_at=now,
                                 finished_at=now, actor=actor, via=via, **_clean(fields))
            .returning(table.c.id)
        ).scalar_one()


def latest_by_target(engine: Engine, actions: tuple[str, ...],
                     outcomes: tuple[str, ...] = ("ok", "failed"),
                     latest_outcome: str | None = None) -> list[dict]:
    """The newest entry of each target among ``actions`` that ended with one of
    ``outcomes`` (entries naming no target left out), newest first, as plain dicts;
    with ``latest_outcome``, only the targets whose newest entry ended so. One
    grouped query however long the log is."""
    from sqlalchemy import func, select

    _, table = _audit()
    newest = (select(func.max(table.c.id))
              .where(table.c.action.in_(actions), table.c.outcome.in_(outcomes),
                     table.c.target.is_not(None))
              .group_by(table.c.target))
    query = select(table).where(table.c.id.in_(newest)).order_by(table.c.id.desc())
    if latest_outcome is not None:
        query = query.where(table.c.outcome == latest_outcome)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def recent(engine: Engine, limit: int = 20, **where: Any) -> list[dict]:
    """The latest entries, newest first, as plain dicts (``where``: column = value)."""
    from sqlalchemy import select

    _, table = _audit()
    query = select(table).order_by(table.c.id.desc()).limit(limit)
    for column, value in where.items():
        query = query.where(table.c[column] == value)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]
