"""The export-format contract and the per-app registry of formats.

An :class:`ExportFormat` turns rows into bytes. Rows come as sequences of plain
values in the order of ``fields`` (``None``, ``bool``, ``int``, ``float``,
``str``; dates and times already rendered as text by the data layer), so a
format never touches the database and never needs Flask.

A writer must *stream*: consume the row iterator lazily and yield bytes chunks,
never building the whole output in memory.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

from .registry import DuplicateNameError, unique_items

if TYPE_CHECKING:  # pragma: no cover
    import pluggy

Row = Sequence[Any]
Writer = Callable[[Iterable[Row], Sequence[str]], Iterator[bytes]]


class DuplicateFormatError(DuplicateNameError):
    """Two plugins registered an export format with the same name."""


class UnknownFormatError(LookupError):
    """A format name that no plugin provides."""

    def __init__(self, name: str, available: Sequence[str]):
        self.name = name
        self.available = list(available)
        super().__init__(
            f"unknown format {name!r}; available: {', '.join(self.available) or 'none'}"
        )


@dataclass(frozen=True)
class ExportFormat:
    """One export format.

    :param name: short unique id, used as ``format=`` (lowercase letters, digits, ``_-``)
    :param label: human-readable name for pickers
    :param media_type: HTTP ``Content-Type`` of the output
    :param extension: file-name extension without the dot
    :param write: ``write(rows, fields) -> iterator of bytes``
    :param fast_paths: optional engine-specific writers, keyed by SQLAlchemy
        dialect name (e.g. ``"postgresql"``), called as
        ``fast(dbapi_connection, sql, params, fields, fetch_rows)`` with the
        export's SELECT (timestamps already rendered as text by the database); it
        yields bytes and must produce exactly the bytes ``write`` produces.
    """

    name: str
    label: str
    media_type: str
    extension: str
    write: Writer
    fast_paths: Mapping[str, Any] = field(default_factory=dict)
    as_attachment: bool = True

    def __post_init__(self) -> None:
        import re

        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,31}", self.name or ""):
            raise ValueError(
                f"export format name {self.name!r} must be 1-32 lowercase letters, digits, '_' or '-'"
            )
        if not re.fullmatch(r"[A-Za-z0-9]{1,10}", self.extension or ""):
            raise ValueError(f"export format extension {self.extension!r} is not a plain extension")


class FormatRegistry:
    """The formats of one app, in call order, keyed by name."""

    def __init__(self, formats: Iterable[ExportFormat] = ()) -> None:
        self._formats: dict[str, ExportFormat] = {f.name: f for f in formats}

    @classmethod
    def from_plugins(cls, pm: "pluggy.PluginManager") -> "FormatRegistry":
        """Every format the plugins return; a name two plugins claim is a start-up error."""
        return cls(unique_items(pm, "register_export_formats", kind="export format",
                                key=lambda f: f.name, expect=ExportFormat,
                                error=DuplicateFormatError).values())

    def get(self, name: str) -> ExportFormat:
        try:
            return self._formats[name]
        except KeyError:
            raise UnknownFormatError(name, self.names()) from None

    def names(self) -> list[str]:
        return list(self._formats)

    def __iter__(self) -> Iterator[ExportFormat]:
        return iter(self._formats.values())

    def __len__(self) -> int:
        return len(self._formats)

    def __contains__(self, name: object) -> bool:
        return name in self._formats


class _CopyCancelled(Exception):
    """The consumer of a COPY stream went away."""


#: what the COPY thread hands over after the last chunk
_DONE = object()


class _Handoff:
    """The bounded queue from the COPY thread to the consumer; once ``cancelled``
    is set, the thread's next hand-over raises :class:`_CopyCancelled`."""

    def __init__(self, size: int) -> None:
        self.queue: "queue.Queue[object]" = queue.Queue(maxsize=size)
        self.cancelled = threading.Event()

    def put(self, item: object) -> None:
        while not self.cancelled.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _CopyCancelled()

    def drain_until_done(self, worker: threading.Thread) -> None:
        """Take whatever the thread still hands over until it ends (it never blocks)."""
        while worker.is_alive():
            try:
                self.queue.get(timeout=0.1)
            except queue.Empty:
                pass
        worker.join()


class _Sink:
    """What ``copy_expert`` writes into: rows collected into chunks of about
    ``chunk_bytes``, each ``transform``-ed and handed over."""

    def __init__(self, handoff: _Handoff, transform: Callable[[list[bytes]], bytes],
                 chunk_bytes: int) -> None:
        self.handoff, self.transform, self.chunk_bytes = handoff, transform, chunk_bytes
        self.parts: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> None:
        self.parts.append(data)
        self.size += len(data)
        if self.size >= self.chunk_bytes:
            self.flush()

    def flush(self) -> None:
        if self.parts:
            self.handoff.put(self.transform(self.parts))
            self.parts = []
            self.size = 0


def _copy_sql(dbapi_connection: Any, select_sql: str, params: Mapping[str, Any],
              options: str) -> str:
    with dbapi_connection.cursor() as cur:
        sql = cur.mogrify(select_sql, params).decode("utf-8")  # client_encoding is UTF8
    return f"COPY ({sql}) TO STDOUT" + (f" WITH ({options})" if options else "")


def _copy_worker(dbapi_connection: Any, copy_sql: str, sink: _Sink) -> None:
    """The COPY thread: the rows into ``sink``, then the end (or the error) handed over."""
    handoff = sink.handoff
    try:
        with dbapi_connection.cursor() as cur:
            cur.copy_expert(copy_sql, sink)
        sink.flush()
        handoff.put(_DONE)
    except BaseException as exc:  # handed to the consumer, raised there
        if not handoff.cancelled.is_set():
            try:
                handoff.put(exc)
            except _CopyCancelled:
                pass


def pg_copy_chunks(dbapi_connection: Any, select_sql: str, params: Mapping[str, Any], *,
                   options: str = "", transform: Callable[[list[bytes]], bytes] = b"".join,
                   chunk_bytes: int = 256 * 1024, queue_chunks: int = 4) -> Iterator[bytes]:
    """Stream ``COPY (select_sql) TO STDOUT [WITH (options)]`` from PostgreSQL as
    chunks of about ``chunk_bytes``: the helper for PostgreSQL fast paths.

    psycopg2's ``copy_expert`` blocks until the COPY ends, so it runs in a worker
    thread that hands complete rows over through a bounded queue (at most
    ``queue_chunks`` chunks wait: memory stays flat). ``transform`` turns each
    batch of rows (each with its ``\\n`` terminator) into the chunk's bytes, so a
    format can fix rows up with whole-chunk operations. Closing the generator
    early cancels the query on the server.
    """
    copy_sql = _copy_sql(dbapi_connection, select_sql, params, options)
    handoff = _Handoff(queue_chunks)
    worker = threading.Thread(target=_copy_worker, name="pg-copy", daemon=True,
                              args=(dbapi_connection, copy_sql,
                                    _Sink(handoff, transform, chunk_bytes)))
    worker.start()
    try:
        while True:
            item = handoff.queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        if worker.is_alive():
            handoff.cancelled.set()
            try:
                dbapi_connection.cancel()  # stop the COPY on the server
            except Exception:
                pass
            handoff.drain_until_done(worker)
