"""The export-format contract and the per-app registry of formats.

An :class:`ExportFormat` turns rows into bytes. Rows come as sequences of plain
values in the order of ``fields`` (``None``, ``bool``, ``int``, ``float``,
``str``; dates and times already rendered as text by the data layer), so a
format never touches the database and never needs Flask.

A writer must *stream*: consume the row iterator lazily and yield bytes chunks,
never building the whole output in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

Row = Sequence[Any]
Writer = Callable[[Iterable[Row], Sequence[str]], Iterator[bytes]]


class DuplicateFormatError(RuntimeError):
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
        dialect name (e.g. ``"postgresql"``); see ``plugins.backup.guest_export``.
        A fast path must produce exactly the bytes ``write`` produces.
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
    """The formats of one app, in registration order, keyed by name."""

    def __init__(self) -> None:
        self._formats: dict[str, ExportFormat] = {}
        self._owners: dict[str, str] = {}

    def add(self, fmt: ExportFormat, owner: str) -> None:
        if not isinstance(fmt, ExportFormat):
            raise TypeError(f"plugin {owner!r} returned {fmt!r}, not an ExportFormat")
        if fmt.name in self._formats:
            raise DuplicateFormatError(
                f"export format {fmt.name!r} is registered by both plugin "
                f"{self._owners[fmt.name]!r} and plugin {owner!r}"
            )
        self._formats[fmt.name] = fmt
        self._owners[fmt.name] = owner

    def get(self, name: str) -> ExportFormat:
        try:
            return self._formats[name]
        except KeyError:
            raise UnknownFormatError(name, self.names()) from None

    def owner(self, name: str) -> str:
        return self._owners[name]

    def names(self) -> list[str]:
        return list(self._formats)

    def __iter__(self) -> Iterator[ExportFormat]:
        return iter(self._formats.values())

    def __len__(self) -> int:
        return len(self._formats)

    def __contains__(self, name: object) -> bool:
        return name in self._formats


def pg_text_batches(dbapi_connection: Any, sql: str, params: Mapping[str, Any],
                    fetch_rows: int) -> Iterator[list[bytes]]:
    """Run ``sql`` (one text column) through a psycopg2 server-side cursor and
    yield batches of raw UTF-8 values: the helper for PostgreSQL fast paths.

    The values arrive as ``bytes`` (no decode/encode round trip), ``fetch_rows``
    at a time, so memory stays flat however many rows there are.
    """
    import uuid

    import psycopg2.extensions

    cursor = dbapi_connection.cursor(name=f"export_{uuid.uuid4().hex}")
    psycopg2.extensions.register_type(psycopg2.extensions.BYTES, cursor)
    try:
        cursor.itersize = fetch_rows
        cursor.execute(sql, params)
        while True:
            batch = cursor.fetchmany(fetch_rows)
            if not batch:
                return
            yield [row[0] for row in batch]
    finally:
        if not dbapi_connection.closed:
            try:
                cursor.close()
            except Exception:  # the connection may already be broken; it is discarded anyway
                pass
