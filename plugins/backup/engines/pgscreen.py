"""Screening a plain PostgreSQL dump before ``psql`` sees a byte of it: an
allow-list of what ``pg_dump --no-owner --no-privileges`` writes for this app's
schema (its header SETs, set_config/setval, table, sequence, index, enum,
constraint, default and comment definitions calling a few harmless functions,
``COPY name (cols) FROM stdin``, ``\\restrict`` first and ``\\unrestrict`` last),
written so that psql cannot read it differently (UTF-8, ASCII outside quotes,
no ``/* */``, ``$$``, ``E''``, backslash, ``:var`` or ``;`` but at the end of a line).
This module reads the dump line by line (quotes, comments, COPY data); each
complete statement is judged by :mod:`guest_backup.engines.pgscreen_statements`."""

from __future__ import annotations

import codecs
import re

from guest_backup.engines import DumpRefused
from guest_backup.engines.pgscreen_statements import statement_problem

MAX_STATEMENT_CHARS = 4 * 1024 * 1024

#: outside quotes: what needs a look (everything else is printable ASCII or a tab)
_SPECIAL = re.compile(r"""['"();:]|--|[^\t\x20-\x7e]|[\\$]|/\*""")
_PREFIXED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_&")
_PRINTABLE = re.compile(r"[\t\x20-\x7e]*\r?")
_RESTRICT = re.compile(r"\\(restrict|unrestrict) ([A-Za-z0-9]{1,256})")
_END_AT, _END = re.compile(rb"\\\.\r?\n"), re.compile(rb"\n\\\.\r?\n")
_SCHEMA_COMMENT = re.compile(r"COMMENT ON SCHEMA public IS '(?:[^'\n]|'')*'")
_WHAT = {"\\": "a psql meta-command (a backslash outside a string)", "/*": "a /* */ comment",
         "$": "a dollar quote or a '$' outside a string", ":": "a psql variable (':name')"}




class PgDumpScreen:
    """Feed the dump in chunks (:meth:`feed`), then :meth:`finish`; raises
    :class:`DumpRefused` at the first thing that is not pg_dump's. Streams: it
    holds one statement (or a few bytes of a COPY data line) at a time."""

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._partial = b""       # the incomplete last line (in COPY data: at most 5 bytes)
        self._held = True         # False: _partial is a placeholder, its bytes were given out
        self._copy = False        # inside a COPY ... FROM stdin data block
        self._quote: str | None = None  # "'" or '"' while one spans lines
        self._depth = 0           # parentheses open in the pending statement
        self._stmt: list[str] = []  # the pending statement (comments left out)
        self._chars = 0
        self._restrict: str | None = None  # pg_dump's \restrict key
        self._ended = False       # \unrestrict seen: nothing may follow
        self.lineno = self.statements = 0

    def feed(self, chunk: bytes) -> bytes:
        """Screen the next piece of the dump; returns what psql may be given now:
        the lines screened so far, without pg_dump's ``\\restrict`` and
        ``\\unrestrict`` lines (a restore restricts psql with a key of its own)."""
        if b"\0" in chunk:
            raise DumpRefused("the dump holds a NUL byte, which pg_dump does not write")
        if not chunk.isascii() or self._utf8.getstate()[0]:  # ASCII needs no decoding
            try:
                self._utf8.decode(chunk)
            except UnicodeDecodeError:
                raise DumpRefused("the dump is not UTF-8 text") from None
        buf = self._partial + chunk if self._partial else chunk
        emit = 0 if self._held else len(self._partial)  # what came before was given out
        out, pos = [], 0
        while pos < len(buf):
            if self._copy:
                end = _copy_end(buf, pos)
                self.lineno += buf.count(b"\n", pos, len(buf) if end is None else end)
                if end is None:
                    return self._hold_copy_tail(buf, pos, emit, out)
                self._copy, pos = False, end
                continue
            nl = buf.find(b"\n", pos)
            if nl < 0:
                break
            if self._line(buf[pos:nl].decode("utf-8")):  # pg_dump's own: left out
                out.append(buf[emit:pos])
                emit = nl + 1
            pos = nl + 1
        out.append(buf[emit:pos])
        self._partial, self._held = buf[pos:], True
        if len(self._partial) > MAX_STATEMENT_CHARS:
            raise DumpRefused(f"line {self.lineno + 1} of the dump is implausibly long")
        return b"".join(out)

    def _hold_copy_tail(self, buf: bytes, pos: int, emit: int, out: list) -> bytes:
        """Give out all COPY data but a last line that may still become ``\\.``."""
        tail = buf.rfind(b"\n", pos) + 1 or pos
        if len(buf) - tail <= 4:
            out.append(buf[emit:tail])
            self._partial, self._held = buf[tail:], True
        else:
            out.append(buf[emit:])
            self._partial, self._held = b"#####", False  # never a \. line
        return b"".join(out)

    def finish(self) -> bytes:
        """The dump ended: refuses an unfinished one; returns its last bytes for psql."""
        if self._copy:
            raise DumpRefused("the dump ends inside a COPY data block")
        try:
            self._utf8.decode(b"", final=True)
        except UnicodeDecodeError:
            raise DumpRefused("the dump ends in the middle of a UTF-8 character") from None
        rest, self._partial = self._partial, b""
        if rest and self._line(rest.decode("utf-8")):
            rest = b""
        if self._copy:
            raise DumpRefused("the dump ends inside a COPY data block")
        if self._quote or "".join(self._stmt).strip():
            raise DumpRefused("the dump ends in the middle of a statement")
        if self._restrict is not None and not self._ended:
            raise DumpRefused("the dump is incomplete: it has pg_dump's \\restrict line but "
                              "not the closing \\unrestrict line")
        return rest

    def _refuse(self, what: str) -> DumpRefused:
        return DumpRefused(f"line {self.lineno} of the dump holds {what}, which pg_dump does "
                           f"not write for this application")

    def _line(self, text: str) -> bool:
        """One line outside COPY data; True for pg_dump's own ``\\restrict`` and
        ``\\unrestrict`` lines, which psql is not given."""
        self.lineno += 1
        if self._ended:
            if text.strip():
                raise self._refuse("text after pg_dump's closing \\unrestrict line")
            return False
        if text.startswith("\\") and self._quote is None and not "".join(self._stmt).strip():
            m = _RESTRICT.fullmatch(text)
            if m is None:
                raise self._refuse(f"a psql meta-command ({text[:2]!r}…)")
            if m.group(1) == "unrestrict" and m.group(2) != self._restrict:
                raise self._refuse("a psql meta-command (\\unrestrict) that does not close "
                                   "pg_dump's \\restrict")
            if m.group(1) == "restrict" and (self._restrict is not None or self.statements):
                raise self._refuse("a psql meta-command (\\restrict) that is not pg_dump's first")
            self._ended = m.group(1) == "unrestrict"
            self._restrict = m.group(2)
            return True
        self._chars += len(text) + 1
        if self._chars > MAX_STATEMENT_CHARS:
            raise DumpRefused(f"line {self.lineno} of the dump ends an implausibly long statement")
        return self._scan(text)

    def _scan(self, text: str) -> bool:
        """Track quotes and parentheses in one line; at the ``;`` ending the line,
        check the statement (True: a statement psql is not given)."""
        i, cut = 0 if self._quote is None else self._close_quote(text, 0), len(text)
        while i >= 0:
            m = _SPECIAL.search(text, i)
            if m is None:
                break
            token, j = m.group(), m.start()
            i = j + len(token)
            if token in ("'", '"'):
                if j and text[j - 1] in _PREFIXED and (token == "'" or text[j - 1] == "&"):
                    raise self._refuse("a prefixed string or identifier (E'', U&'', B'', X'')")
                self._quote = token
                i = self._close_quote(text, i)
            elif token in "()":
                self._depth += 1 if token == "(" else -1
                if self._depth < 0:
                    raise self._refuse("an unbalanced ')'")
            elif token == ":" and text.startswith(":", i):
                i += 1  # a :: cast; a single ":" would be a psql variable
            elif token == "--":
                if not _PRINTABLE.fullmatch(text, i):
                    raise self._refuse("a comment with non-ASCII or control characters")
                cut = j
                break
            elif token == ";":
                return self._end_statement(text, j)
            elif not (token == "\r" and i == len(text)):
                raise self._refuse(_WHAT.get(token) or f"a non-ASCII or control character "
                                                       f"(U+{ord(token):04X})")
        self._stmt.append(text[:cut] + "\n")
        return False

    def _close_quote(self, text: str, i: int) -> int:
        """The index after the open quote's end on this line, or -1 (it goes on)."""
        while (j := text.find(self._quote, i)) >= 0:
            if not text.startswith(self._quote, j + 1):  # '' or "" is the character itself
                self._quote = None
                return j + 1
            i = j + 2
        return -1

    def _end_statement(self, text: str, j: int) -> bool:
        """Check the statement; True for pg_dump's one-line ``COMMENT ON SCHEMA public``
        (after a --replace), which psql is not given: the restore role may not."""
        if self._depth:
            raise self._refuse("a ';' inside parentheses")
        if text[j + 1:].strip(" \t\r"):
            raise self._refuse("text after the ';' that ends a statement")
        one_line, statement = not "".join(self._stmt).strip(), "".join(self._stmt) + text[:j]
        self._stmt, self._chars = [], 0
        self.statements += 1
        if one_line and _SCHEMA_COMMENT.fullmatch(statement.strip()):
            return True
        self._check(statement)
        return False

    def _check(self, statement: str) -> None:
        """Whether a complete statement is one pg_dump writes for this schema."""
        problem, verb = statement_problem(statement)
        if problem is not None:
            raise self._refuse(problem)
        if verb == "COPY":
            self._copy = True


def _copy_end(buf: bytes, pos: int) -> int | None:
    """The index after the line ``\\.`` (or ``\\.\\r``, as psql) ending the COPY data
    from ``pos`` (a line start) on, or None when it is not in ``buf`` yet."""
    m = _END_AT.match(buf, pos) or _END.search(buf, pos)
    return m.end() if m else None


