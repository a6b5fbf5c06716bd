"""Screening a plain PostgreSQL dump before ``psql`` sees a byte of it.

``psql`` runs more than SQL: a backslash outside a quoted string starts a
meta-command (``\\!`` runs a shell command, ``\\o |cmd`` pipes, ``\\copy`` reads
files), and ``COPY … TO/FROM PROGRAM`` runs a program on the database server.
The screen lexes the dump the way psql does (quotes, ``E''`` strings,
``"identifiers"``, dollar quotes, nested comments, ``COPY … FROM stdin`` data
blocks whose lines may start with a backslash) and lets through only what
``pg_dump --no-owner --no-privileges`` writes for this application: ``SET``,
``SELECT pg_catalog.set_config/setval``, ``CREATE``/``ALTER`` of tables,
sequences, indexes, views, schemas and types, ``COMMENT ON``, ``COPY … FROM
stdin`` and pg_dump's own ``\\restrict KEY`` / ``\\unrestrict KEY`` lines.
Anything else refuses the archive with a one-line reason.
"""

from __future__ import annotations

import re

from guest_backup.errors import EngineError

MAX_STATEMENT_CHARS = 4 * 1024 * 1024
_SPECIAL = re.compile(r"""--|/\*|['"$\\;]""")
_DOLLAR = re.compile(r"\$([A-Za-z_\x80-\uffff][A-Za-z_0-9\x80-\uffff]*)?\$")
_RESTRICT = re.compile(r"\\(?:un)?restrict [A-Za-z0-9]+")
_COPY_FROM_STDIN = re.compile(
    r'COPY (?:[A-Z0-9_]+|"I")(?:\.(?:[A-Z0-9_]+|"I"))? (?:\((?:[^()]*)\) )?FROM STDIN')
#: pg_dump's SELECTs: set_config/setval with literal arguments only
_SELECT = re.compile(r"SELECT PG_CATALOG\.(?:SET_CONFIG|SETVAL) ?\((?: |,|'S'|-?\d+|TRUE|FALSE)*\)")
_SCS_ON = re.compile(r"SET STANDARD_CONFORMING_STRINGS (?:=|TO) ON")
_ALLOWED = re.compile(
    r"(SET (?!ROLE\b|SESSION\b|LOCAL\b)"
    r"|CREATE (?:UNLOGGED )?TABLE |CREATE SEQUENCE |CREATE (?:UNIQUE )?INDEX |CREATE VIEW "
    r"|CREATE MATERIALIZED VIEW |CREATE SCHEMA |CREATE TYPE |CREATE DOMAIN "
    r"|ALTER (?:TABLE|SEQUENCE|INDEX|VIEW|MATERIALIZED VIEW|SCHEMA|TYPE|DOMAIN) "
    r"|COMMENT ON )")
_IDENT_CHAR = re.compile(r"[A-Za-z0-9_$\x80-\uffff]")


class DumpRefused(EngineError):
    """The dump holds something pg_dump does not write: nothing of it is loaded."""


class PgDumpScreen:
    """Feed the dump in chunks (:meth:`feed`), then :meth:`finish`; raises
    :class:`DumpRefused` at the first thing that is not pg_dump's."""

    def __init__(self) -> None:
        self._partial = b""
        self._copy = False        # inside a COPY ... FROM stdin data block
        self._quote: str | None = None  # "'", '"' or a dollar tag
        self._escapes = False     # the open ' string is an E'' string
        self._comment = 0         # depth of /* */ comments
        self._code: list[str] = []  # the statement outside quotes (quotes as placeholders)
        self._raw = 0             # characters in the pending statement
        self.statements = 0

    def feed(self, chunk: bytes) -> None:
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if self._copy:
                if line == b"\\." or line == b"\\.\r":
                    self._copy = False
                continue
            self._line(line)

    def finish(self) -> None:
        if self._partial:
            if self._copy:
                raise DumpRefused("the dump ends inside a COPY data block")
            self._line(self._partial)
            self._partial = b""
        if self._copy:
            raise DumpRefused("the dump ends inside a COPY data block")
        if self._quote or self._comment or "".join(self._code).strip():
            raise DumpRefused("the dump ends in the middle of a statement")

    def _line(self, raw: bytes) -> None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DumpRefused("the dump is not UTF-8 text") from None
        i, n = 0, len(text)
        stripped = text.strip()
        if (stripped.startswith("\\") and not self._quote and not self._comment
                and not "".join(self._code).strip()):
            if _RESTRICT.fullmatch(stripped):  # pg_dump's own \restrict / \unrestrict
                return
            raise DumpRefused(f"the dump holds a psql meta-command ({stripped[:2]}…), which "
                              f"pg_dump does not write")
        self._raw += n + 1
        if self._raw > MAX_STATEMENT_CHARS:
            raise DumpRefused("the dump holds an implausibly long statement")
        while i < n:
            if self._comment:
                end, start = text.find("*/", i), text.find("/*", i)
                if end < 0 and start < 0:
                    break
                if start >= 0 and (end < 0 or start < end):
                    self._comment += 1
                    i = start + 2
                else:
                    self._comment -= 1
                    i = end + 2
                continue
            if self._quote is not None:
                i = self._in_quote(text, i)
                continue
            m = _SPECIAL.search(text, i)
            if m is None:
                self._code.append(text[i:])
                break
            self._code.append(text[i:m.start()])
            i, token = m.start(), m.group()
            if token == "--":
                break
            if token == "/*":
                self._comment, i = 1, i + 2
            elif token == "'":
                self._escapes = i > 0 and text[i - 1] in "eE" and not (
                    i > 1 and _IDENT_CHAR.match(text[i - 2]))
                self._quote, i = "'", i + 1
                self._code.append("'S'")
            elif token == '"':
                self._quote, i = '"', i + 1
                self._code.append('"I"')
            elif token == "$":
                d = _DOLLAR.match(text, i)
                if d and not (i > 0 and _IDENT_CHAR.match(text[i - 1])):
                    self._quote, i = d.group(), d.end()
                    self._code.append("$B$")
                else:
                    self._code.append("$")
                    i += 1
            elif token == "\\":
                raise DumpRefused("the dump holds a psql meta-command inside a line, which "
                                  "pg_dump does not write")
            else:  # ";": the statement is complete
                self._statement()
                i += 1
                if self._copy:
                    if text[i:].strip():
                        raise DumpRefused("COPY data must start on the line after its COPY")
                    return
        self._code.append(" ")

    def _in_quote(self, text: str, i: int) -> int:
        q = self._quote
        if q == "'":
            while True:
                j = text.find("'", i)
                if j < 0:
                    return len(text)
                if self._escapes:
                    backslashes = len(text[i:j]) - len(text[i:j].rstrip("\\"))
                    if backslashes % 2:
                        i = j + 1
                        continue
                if text.startswith("''", j):
                    i = j + 2
                    continue
                self._quote = None
                return j + 1
        if q == '"':
            while True:
                j = text.find('"', i)
                if j < 0:
                    return len(text)
                if text.startswith('""', j):
                    i = j + 2
                    continue
                self._quote = None
                return j + 1
        j = text.find(q, i)  # a dollar quote ends at the same tag
        if j < 0:
            return len(text)
        self._quote = None
        return j + len(q)

    def _statement(self) -> None:
        code = re.sub(r"\s+", " ", "".join(self._code)).strip().upper()
        self._code, self._raw = [], 0
        if not code:
            return
        self.statements += 1
        if code.startswith("COPY "):
            if not _COPY_FROM_STDIN.fullmatch(code):
                raise DumpRefused("the dump holds a COPY that is not COPY … FROM stdin "
                                  "(e.g. TO/FROM PROGRAM or a file), which pg_dump does not write")
            self._copy = True
            return
        if code.startswith("SELECT "):
            allowed = _SELECT.fullmatch(code)
        elif code.startswith("SET STANDARD_CONFORMING_STRINGS"):
            allowed = _SCS_ON.fullmatch(code)  # the lexing above assumes it stays on
        else:
            allowed = _ALLOWED.match(code + " ") and "PROGRAM" not in code.split()
        if not allowed:
            raise DumpRefused(f"the dump holds a statement pg_dump does not write for this "
                              f"application ({' '.join(code.split()[:3])[:40]} …)")
