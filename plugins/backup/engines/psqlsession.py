"""Statements on a psql that is still inside a restore's transaction, before its
COMMIT: what a finisher needs Python for (matching the erasure ledger by keyed
hash) runs on the very transaction that loaded the dump, so nothing is committed
until it is done, and nothing is if it fails.

psql reads our script on its stdin and writes to a pipe that :class:`PsqlOutput`
drains all along the load (keeping only the lines the restore looks for). Once
the dump and the finishing SQL are written, :meth:`PsqlSession.open` prints a
marker with a random nonce; from it on, each statement is written followed by
``\\echo <nonce> :ROW_COUNT``, and its result is the lines psql printed before
that echo. A SELECT runs as ``COPY (…) TO STDOUT`` (text format: tabs, ``\\N``,
backslash escapes), read back by the statement's column types. The nonce is
drawn after the archive was made, so no row of it can end a result early.

The session supports what :mod:`guest_backup.ops.reapply` calls on a
SQLAlchemy connection: ``execute(statement)`` with ``.all()``, ``.scalars()``,
``.scalar_one_or_none()`` and ``.rowcount``.
"""

from __future__ import annotations

import collections
import queue
import re
import secrets
import threading
from datetime import date, datetime
from typing import IO, Iterator

from guest_backup.errors import EngineError

_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_ESCAPE = re.compile(r"\\(.)")
_BOOLEANS = {"t": True, "f": False}


def psql_text(statement) -> str:
    """A SQLAlchemy statement as PostgreSQL text for psql, its values written in
    (``literal_binds``) by a dialect without a driver's paramstyle: psycopg2's
    doubles every ``%`` (an audit message's ``50%`` would arrive as ``50%%``)."""
    from sqlalchemy.dialects.postgresql.base import PGDialect

    return str(statement.compile(dialect=PGDialect(paramstyle="named"),
                                 compile_kwargs={"literal_binds": True}))


class PsqlEnded(Exception):
    """psql ended (an error of its own: its exit code and stderr say which) while a
    statement of ours waited for its result."""


class PsqlOutput:
    """psql's stdout, read by a thread during the whole restore. Before the session,
    line by line: every line is dropped except those ``keep`` matches (a load
    prints a line per ``set_config``/``setval``, which nobody needs). From the
    session's first line on, in chunks that :meth:`line` splits (a re-apply that
    matches by keyed hash reads every guest); what nobody read when psql ends (the
    COMMIT's marker, after the session) is part of :meth:`printed`."""

    def __init__(self, stdout: IO[bytes], keep) -> None:
        self.kept: list[bytes] = []
        self._keep, self._chunks = keep, queue.SimpleQueue()
        self._start: bytes | None = None
        #: whether psql printed the session's first line (ran all that came before)
        self.started = False
        self._lines: collections.deque = collections.deque()
        self._partial = b""
        self._thread = threading.Thread(target=self._drain, args=(stdout,), daemon=True,
                                        name="psql-output")
        self._thread.start()

    def _drain(self, stdout: IO[bytes]) -> None:
        try:
            while line := stdout.readline():
                if self._keep(line):
                    self.kept.append(line)
                if self._start is not None and line.rstrip(b"\n") == self._start:
                    self.started = True
                    break
            while chunk := stdout.read1(1 << 16):
                self._chunks.put(chunk)
        finally:
            self._chunks.put(None)

    def expect(self, start: bytes) -> None:
        """The session's lines are those after the one that is exactly ``start``."""
        self._start = start

    def wait(self) -> None:
        """Until psql's stdout is closed: :attr:`kept` and :attr:`started` are final."""
        self._thread.join()

    def line(self) -> bytes:
        """The session's next line (without its newline)."""
        while not self._lines:
            chunk = self._chunks.get()
            if chunk is None:
                self._chunks.put(None)  # whoever asks next learns it too
                raise PsqlEnded()
            parts = (self._partial + chunk).split(b"\n")
            self._partial = parts.pop()
            self._lines.extend(parts)
        return self._lines.popleft()

    def printed(self) -> bytes:
        """The kept lines and the whole lines the session left unread (the COMMIT's
        marker), once psql's stdout is closed; not a line psql was cut off in."""
        self._thread.join()
        rest = [self._partial]
        while (chunk := self._chunks.get()) is not None:
            rest.append(chunk)
        self._chunks.put(None)
        whole = b"".join(rest).split(b"\n")[:-1]
        return b"".join([*self.kept, *(line + b"\n" for line in [*self._lines, *whole])])


class PsqlSession:
    """Statements on psql's open transaction (see the module)."""

    def __init__(self, stdin: IO[bytes], output: PsqlOutput) -> None:
        self._stdin, self._output = stdin, output
        self._nonce = f"gr-result-{secrets.token_hex(16)}"
        #: what the statements are for ("re-applying the erasure ledger"): the
        #: restore's reason says it when psql stops at one of them
        self.doing: str | None = None

    @classmethod
    def open(cls, stdin: IO[bytes], output: PsqlOutput) -> "PsqlSession":
        session = cls(stdin, output)
        start = f"gr-session-{secrets.token_hex(16)}"
        output.expect(start.encode())
        # the rows' dates as ISO whatever the server's default (psycopg2 does the same)
        session._write(f"SET LOCAL DateStyle = 'ISO, YMD';\n\\echo {start}\n")
        return session

    def _write(self, text: str) -> None:
        try:
            self._stdin.write(text.encode())
            self._stdin.flush()
        except BrokenPipeError:
            raise PsqlEnded() from None

    def execute(self, statement) -> "Result":
        """Run ``statement`` (SQLAlchemy Core, or PostgreSQL text for statements that
        return no rows) and wait for its result."""
        text = statement if isinstance(statement, str) else psql_text(statement)
        select = not isinstance(statement, str) and getattr(statement, "is_select", False)
        self._write((f"COPY ({text}) TO STDOUT;" if select else f"{text.rstrip().rstrip(';')};")
                    + f"\n\\echo {self._nonce} :ROW_COUNT\n")
        lines, end = [], self._nonce.encode() + b" "
        while not (line := self._output.line()).startswith(end):
            lines.append(line)
        if not select:
            return Result([], int(line[len(end):].strip() or 0), None)
        return Result(lines, len(lines), statement.selected_columns)


class Result:
    """A statement's result: rows read from COPY's text lines by column type."""

    def __init__(self, lines: list[bytes], rowcount: int, columns) -> None:
        self.rowcount, self._lines, self._columns = rowcount, lines, columns

    def all(self) -> list:
        if self._columns is None:
            return []
        columns = list(self._columns)
        make = collections.namedtuple("Row", [c.key for c in columns])._make
        readers = [_reader(c.type) for c in columns]
        rows = []
        try:
            for line in self._lines:
                fields = line.decode("utf-8").split("\t")
                if len(fields) != len(readers):
                    raise ValueError("not the statement's columns")
                rows.append(make([None if f == "\\N" else read(_unescape(f) if "\\" in f else f)
                                  for read, f in zip(readers, fields)]))
        except (ValueError, KeyError):  # UnicodeDecodeError too; KeyError: not t/f
            raise EngineError("the restored database holds a value the erasure re-apply "
                              "cannot read; nothing was restored") from None
        return rows

    def scalars(self) -> Iterator:
        return iter([row[0] for row in self.all()])

    def scalar_one_or_none(self):
        rows = self.all()
        if len(rows) > 1:
            raise EngineError("more than one row where one was expected")
        return rows[0][0] if rows else None


def _unescape(field: str) -> str:
    return _ESCAPE.sub(lambda m: _ESCAPES.get(m.group(1), m.group(1)), field)


def _reader(type_):
    import sqlalchemy as sa

    if isinstance(type_, sa.Boolean):
        return _BOOLEANS.__getitem__
    if isinstance(type_, sa.Integer):
        return int
    if isinstance(type_, sa.DateTime):
        return datetime.fromisoformat
    if isinstance(type_, sa.Date):
        return date.fromisoformat
    return _text


def _text(field: str) -> str:
    return field
