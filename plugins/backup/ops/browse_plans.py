"""The page's previews kept until the restore: a plan of
:func:`~guest_backup.ops.selection.plan_selection` written to the session's
folder (``<instance>/browse/<session>.<token>.plan.json``, 0600) under a random
token the preview's form carries, so that the restore applies exactly the plan
that was shown (whichever worker process serves the click; today's rows are
checked against it by :func:`~guest_backup.ops.selection_apply.apply_plan`). A
plan is used once; every plan of a session goes with the session
(``browse_load.drop_scratch``)."""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import asdict
from pathlib import Path

from sqlalchemy.engine import Engine

from guest_backup.errors import BackupError
from guest_backup.ops.browse import BrowseSession
from guest_backup.ops.browse_registry import browse_folder
from guest_backup.ops.page_texts import PREVIEW_GONE, Text
from guest_backup.ops.selection import Plan, Selection, Step

TOKEN = re.compile(r"^[0-9a-f]{32}$")


def _path(session: BrowseSession, token: str) -> Path:
    return browse_folder(session.ctx.instance_path) / f"{session.id}.{token}.plan.json"


def save_plan(session: BrowseSession, plan: Plan) -> str:
    """Keep ``plan`` for the restore; its token."""
    token = secrets.token_hex(16)
    data = {"selection": asdict(plan.selection), "steps": [asdict(s) for s in plan.steps],
            "ledger_seq": plan.ledger_seq}
    fd = os.open(_path(session, token), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out)
    return token


def load_plan(session: BrowseSession, token: str) -> Plan | None:
    """The plan kept under ``token`` (None when unknown or already used)."""
    if not isinstance(token, str) or not TOKEN.match(token):
        return None
    try:
        data = json.loads(_path(session, token).read_text())
        selection = Selection(**{k: tuple(v) for k, v in data["selection"].items()})
        steps = [Step(**s) for s in data["steps"]]
    except (OSError, ValueError, TypeError, KeyError, AttributeError, BackupError):
        return None  # unreadable or not a plan: "preview again"
    seq = data.get("ledger_seq")
    return Plan(selection, steps, source=session.engine,
                ledger_seq=seq if isinstance(seq, int) and not isinstance(seq, bool) else None)


def apply_saved(session: BrowseSession, live_engine: Engine, token: str, *, actor,
                via: str) -> tuple[Plan, float]:
    """Apply the kept plan (once) in one transaction, audited, through
    :func:`~guest_backup.ops.selection_apply.restore_selection`."""
    from guest_backup.ops.selection_apply import restore_selection

    plan = load_plan(session, token)
    if plan is None:
        raise BackupError(Text(PREVIEW_GONE))
    _path(session, token).unlink(missing_ok=True)  # once, whatever happens
    result = restore_selection(session.ctx, live_engine, session.engine, plan.selection,
                               archive=session.archive, actor=actor, via=via, plan=plan)
    session.touch()
    return plan, result.seconds
