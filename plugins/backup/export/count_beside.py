"""An export's ``X-Export-Rows`` count on a second connection, in the export's own
snapshot, while the export's connection already runs the rows' query.

The count has to come before the body (it is a header), and on the export's one
connection it came before the rows' query too: at 500,000 rows it was 40 ms of a
0.8 s export with the other core idle. Here the export's connection exports its
snapshot (``pg_export_snapshot()``, as the backup's row counts do), a connection
of a small pool of its own imports it and counts in a thread, and the export
meanwhile makes its first chunk.

That pool never waits: when none of its connections is free, or the second
connection cannot be had or cannot join the snapshot, :func:`count_beside`
returns None and the export counts on its own connection first, as before. So an
export still never waits for a second connection (see the runbook's "one pooled
connection per export")."""

from __future__ import annotations

import os
import threading
import weakref
from typing import Callable

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

#: exports counted beside at once per process; more count on their own connection
SIDE_POOL_SIZE = 2

_lock = threading.Lock()
#: the app's engine → (the process that made it, the counting engine)
_sides: "weakref.WeakKeyDictionary[Engine, tuple[int, Engine]]" = weakref.WeakKeyDictionary()


def _dispose_side(engine: Engine) -> None:
    """The app's engine was disposed: so is its counting engine (a forked child's
    copy without closing the parent's connections)."""
    with _lock:
        entry = _sides.pop(engine, None)
    if entry is not None:
        entry[1].dispose(close=entry[0] == os.getpid())


def _side_engine(engine: Engine) -> Engine:
    with _lock:
        pid, side = _sides.get(engine, (None, None))
        if pid != os.getpid():
            if side is not None:  # made before a fork: the parent's connections
                side.dispose(close=False)
            else:
                event.listen(engine, "engine_disposed", _dispose_side)
            side = sa.create_engine(engine.url, pool_size=SIDE_POOL_SIZE, max_overflow=0,
                                    pool_timeout=0, connect_args={"connect_timeout": 5})
            _sides[engine] = (os.getpid(), side)
        return side


def count_beside(engine: Engine, join: Callable[[Connection], None],
                 query) -> Callable[[], int] | None:
    """Start counting ``query`` on a second connection joined to the export's
    snapshot by ``join`` (a database engine's ``share_snapshot``); returns a
    function waiting for the count (raising what counting raised), or None when no
    second connection joined at once."""
    try:
        side = _side_engine(engine).connect()
    except sa.exc.SQLAlchemyError:  # none free (the pool never waits), or none to be had
        return None
    try:
        join(side)
    except sa.exc.SQLAlchemyError:
        side.close()
        return None
    result: dict[str, object] = {}

    def run() -> None:
        try:
            with side:  # given back rolled back
                result["rows"] = side.execute(query).scalar_one()
        except BaseException as exc:  # raised in the waiting thread
            result["error"] = exc

    thread = threading.Thread(target=run, name="export-count", daemon=True)
    thread.start()

    def wait() -> int:
        thread.join()
        if "error" in result:
            raise result["error"]  # type: ignore[misc]
        return result["rows"]  # type: ignore[return-value]
    return wait
