"""An export's body: the format's chunks, made lazily on the export's one
connection; closing it at any point (finished, failed, client gone, or never
started) releases the connection and records the outcome exactly once."""

from __future__ import annotations

from typing import Callable, Iterator

from sqlalchemy.engine import Connection, Engine

from guest_registration import audit

from guest_backup.ops.metrics import record_export

#: what :meth:`ExportBody._pull` gives after the last chunk
_END = object()


class ExportBody:
    """The export body: iterates the format's chunks; closing it at any point
    (finished, failed, client gone, or never started) releases the connection
    and records the outcome exactly once."""

    def __init__(self, produce, conn: Connection, engine: Engine, entry: int,
                 rows: int | None, on_error: Callable[[BaseException], None] | None,
                 on_close: Callable[[], None] | None = None) -> None:
        self._produce, self._conn, self._engine = produce, conn, engine
        self._entry, self.rows, self._on_error = entry, rows, on_error
        self._on_close = on_close
        self._chunks: Iterator[bytes] | None = None
        self._first: object = None  # a chunk made ahead by prime()
        self._done = False
        self.label: tuple[str, str] | None = None  # (action, format), for the metrics
        self.sent = 0

    def __iter__(self) -> "ExportBody":
        return self

    def prime(self) -> None:
        """Make the first chunk now (the rows' query starts); raises what that raised,
        the body then finished as failed."""
        self._first = self._pull()

    def _pull(self) -> object:
        """The next chunk, or ``_END``."""
        try:
            if self._chunks is None:
                self._chunks = iter(self._produce())
            return next(self._chunks)
        except StopIteration:
            return _END
        except BaseException as exc:
            self._finish("failed", type(exc).__name__)
            if self._on_error:
                self._on_error(exc)
            raise

    def __next__(self) -> bytes:
        if self._done:
            raise StopIteration
        chunk, self._first = (self._pull() if self._first is None else self._first), None
        if chunk is _END:
            self._finish("ok", None, self.rows)
            raise StopIteration
        self.sent += len(chunk)
        return chunk

    def close(self, outcome: str = "aborted",
              message: str | None = "the export was closed before its end",
              rows: int | None = None) -> None:
        """Release everything; a WSGI server calls this when the client is gone."""
        if not self._done:
            self._finish(outcome, message, rows)

    def _finish(self, outcome: str, message: str | None, rows: int | None = None) -> None:
        if self._done:
            return
        self._done = True
        record_export(self.label, outcome, rows)  # never raises
        try:
            close = getattr(self._chunks, "close", None)
            if close:
                close()
        finally:
            try:
                release(self._conn, self._engine, self._entry, outcome, rows=rows,
                         bytes=self.sent, message=message)
            finally:
                if self._on_close:
                    self._on_close()


def release(conn: Connection, engine: Engine, entry: int, outcome: str, **fields) -> None:
    """End the snapshot, record the outcome on the same connection, and give the
    connection back. A broken connection (the database went away) is closed first
    and the outcome is then written on a fresh one: never two held at once."""
    try:
        conn.rollback()
        audit.finish(conn, entry, outcome, **fields)
    except Exception:
        conn.close()
        audit.finish(engine, entry, outcome, **fields)
    else:
        conn.close()
