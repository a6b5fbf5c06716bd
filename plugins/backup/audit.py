"""The audit log: every export and backup, who, when, what, how it ended.

Guest data leaving the system must be accountable, so an export is logged as
``running`` before its first byte and updated when it ends (``ok``, ``failed``
or ``aborted`` when the client went away). Entries are written on their own
short transactions, never inside the export's snapshot.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import BigInteger, DateTime, Integer, String, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped, mapped_column

from guest_registration.extensions import db
from guest_registration.models import utcnow

OUTCOMES = ("running", "ok", "failed", "aborted")


class AuditEntry(db.Model):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at = mapped_column(DateTime, nullable=False, server_default=utcnow(), index=True)
    finished_at = mapped_column(DateTime, nullable=True)
    actor = mapped_column(String(255), nullable=True)  # user e-mail, or "cli:<os user>"
    via = mapped_column(String(16), nullable=True)  # api, admin, cli
    action = mapped_column(String(32), nullable=False)  # export, backup, restore, delete, ...
    year = mapped_column(Integer, nullable=True)
    month = mapped_column(Integer, nullable=True)
    format = mapped_column(String(32), nullable=True)
    target = mapped_column(String(255), nullable=True)  # archive name, output file
    rows = mapped_column(BigInteger, nullable=True)
    bytes = mapped_column(BigInteger, nullable=True)
    outcome = mapped_column(String(16), nullable=False, server_default="running")
    message = mapped_column(String(500), nullable=True)


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def start(engine: Engine, action: str, **fields) -> int:
    """Log the start of an action; returns the entry id."""
    table = AuditEntry.__table__
    with engine.begin() as conn:
        result = conn.execute(
            insert(table).values(action=action, outcome="running", created_at=_now(), **fields)
            .returning(table.c.id)
        )
        return result.scalar_one()


def finish(engine: Engine, entry_id: int, outcome: str, **fields) -> None:
    """Record how an action ended (``ok``, ``failed``, ``aborted``)."""
    if outcome not in OUTCOMES:
        raise ValueError(outcome)
    if "message" in fields and fields["message"]:
        fields["message"] = str(fields["message"])[:500]
    with engine.begin() as conn:
        conn.execute(update(AuditEntry.__table__).where(AuditEntry.__table__.c.id == entry_id)
                     .values(outcome=outcome, finished_at=_now(), **fields))


def recent(engine: Engine, limit: int = 20) -> list[dict]:
    """The latest entries, newest first, as plain dicts."""
    table = AuditEntry.__table__
    with engine.connect() as conn:
        rows = conn.execute(select(table).order_by(table.c.id.desc()).limit(limit)).mappings()
        return [dict(r) for r in rows]
