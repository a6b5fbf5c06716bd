"""Database engines: one object per SQLAlchemy dialect, everything the export
and the system backup do differently per engine.

The built-in PostgreSQL and SQLite engines are contributed through the backup
plugin's own ``register_database_engines`` hook, exactly as a third-party plugin
would contribute one (see :mod:`guest_backup.hookspecs`). An engine never puts
a password on a command line and never lets a tool's raw error text escape:
:class:`~guest_backup.errors.EngineError` carries a message safe for users,
the detail goes to the log with the password masked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO, Callable, ContextManager, Protocol

from sqlalchemy.engine import Connection, URL, make_url
from sqlalchemy.sql import ColumnElement

#: size of the pieces streamed between a tool, the archive and the database
CHUNK = 1024 * 1024


@dataclass
class ToolInfo:
    """The external tool an engine uses, as ``status`` and the manifest report it."""

    name: str
    version: str | None
    path: str | None
    ok: bool
    detail: str


@dataclass
class EngineSettings:
    """Plain settings, so engines work without Flask."""

    database_url: str
    pg_dump: str = "pg_dump"
    psql: str = "psql"


class DatabaseEngine(Protocol):
    """How the export and the system backup handle one database engine."""

    #: the SQLAlchemy dialect name, e.g. ``"postgresql"``
    dialect: str

    def begin_snapshot(self, conn: Connection) -> None:
        """Start the read-only transaction whose snapshot a backup (dump and row
        counts) or an export (count and rows) reads from, start to end."""

    def server_version(self, conn: Connection) -> str:
        """The server's version, e.g. ``"15.4"``."""

    def timestamp_text(self, column: ColumnElement) -> ColumnElement:
        """``column`` rendered by the database as ``YYYY-MM-DD HH:MM:SS`` text."""

    def tool(self, settings: EngineSettings, conn: Connection | None) -> ToolInfo:
        """The dump tool and whether it can dump this server (``conn`` may be None)."""

    def dump(self, settings: EngineSettings, conn: Connection,
             write: Callable[[bytes], None]) -> None:
        """Stream a plain-SQL dump consistent with the snapshot of ``conn``."""

    def is_complete(self, tail: bytes) -> bool:
        """Whether a dump ending in ``tail`` (its last 256 bytes) is complete."""

    def screen(self) -> "DumpScreen":
        """A fresh screen for one dump: what ``verify`` and ``restore`` run over it."""

    def scratch(self, url: str) -> "ContextManager[str]":
        """A new empty database beside ``url`` for a restore drill (its URL),
        removed when the block ends, whatever happens."""

    def prepare_target(self, url: str) -> bool:
        """Whether the target holds no tables; create it if missing and possible
        (raise EngineError with a one-line reason otherwise)."""

    def restore(self, settings: EngineSettings, url: str, stream: IO[bytes], *,
                replace: bool = False) -> None:
        """Load a dump (screened as it goes) in one transaction; with ``replace``
        swap out the old contents in that same step. On any failure the target
        is exactly as it was."""


class DumpScreen(Protocol):
    """Refuses (raises EngineError) a dump holding anything its engine's dump tool
    does not write: fed the dump in chunks, then told it ended."""

    def feed(self, chunk: bytes) -> None: ...

    def finish(self) -> None: ...


def mask(text_: str, url: str | URL) -> str:
    """``text_`` with the URL's password (if any) replaced by ``***``."""
    password = make_url(str(url)).password if not isinstance(url, URL) else url.password
    return text_.replace(password, "***") if password else text_
