"""The audit trail as the operations see it.

The host owns the audit table and its writer (``start``/``finish``/``record``/
``recent``/``latest_by_target``, each taking an Engine or Connection first); the wiring hands that
writer to :class:`~guest_backup.ops.context.BackupContext` as ``audit``, so no
operation imports the host. :func:`quietly` is the one owner of "an audit entry
must never break the operation it describes".
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Protocol

log = logging.getLogger(__name__)


class AuditLog(Protocol):
    """What the operations need of the audit writer."""

    def start(self, bind: Any, action: str, *, actor: str | None, via: str,
              **fields: Any) -> int: ...

    def finish(self, bind: Any, entry_id: int, outcome: str, *, only_running: bool = False,
               **fields: Any) -> bool: ...

    def record(self, bind: Any, action: str, outcome: str, *, actor: str | None, via: str,
               **fields: Any) -> int: ...

    def recent(self, bind: Any, limit: int = 20, **where: Any) -> list[dict]: ...

    def latest_by_target(self, bind: Any, actions: tuple[str, ...],
                         outcomes: tuple[str, ...] = ("ok", "failed"),
                         latest_outcome: str | None = None) -> list[dict]: ...


def quietly(what: str, write: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call an audit writer; a failure is one warning in the log (naming ``what``),
    never an exception: the operation's own outcome is what the caller reports."""
    try:
        return write(*args, **kwargs)
    except Exception as exc:
        log.warning("could not record %s in the audit log (%s)", what, type(exc).__name__)
        return None
