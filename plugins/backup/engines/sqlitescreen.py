"""Screening an SQLite dump (what Python's ``iterdump`` writes, nothing else) and the
authorizer that guards loading it: no extension, no file function, no ATTACH."""

from __future__ import annotations

import re
import sqlite3
from typing import IO, Iterator

from guest_backup.engines import CHUNK, DumpRefused
from guest_backup.errors import EngineError


#: What Python's ``iterdump`` writes for this app; anything else refuses the dump.
#: No CREATE VIEW: the app has none (no migration of the host or its plugins makes
#: one), and a view is stored code: one put where a table was (``trip`` renamed,
#: a view ``trip`` reading ``guest``) ran as the live app on every later page and
#: showed the guests' document numbers on the public trip list.
_STATEMENT = re.compile(
    r"""\s*(?:BEGIN\ TRANSACTION|COMMIT
    |CREATE\ (?:TABLE|INDEX|UNIQUE\ INDEX)\b
    |INSERT\ INTO\ (?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_]*)\ VALUES\(
    |DELETE\ FROM\ "?sqlite_sequence"?
    |ANALYZE\ "?sqlite_master"?
    |PRAGMA\ foreign_keys\ ?=\ ?(?:ON|OFF))""", re.I | re.X)
#: the schema table: iterdump writes to it (with ``PRAGMA writable_schema=ON``) only
#: for virtual tables, which this app has none of; a row written into it is stored
#: code (a trigger) that no CREATE statement shows
_SCHEMA_TABLES = {"sqlite_master", "sqlite_schema", "sqlite_temp_master", "sqlite_temp_schema"}
_INSERT_INTO = re.compile(r'\s*INSERT\s+INTO\s+(?:"((?:[^"]|"")+)"|([A-Za-z_][A-Za-z0-9_]*))',
                          re.I)
#: what may be in the schema after a load (and after its upgrade): tables and their
#: indexes; a trigger or a view is stored code that would run as the app later
SCHEMA_OBJECTS = ("table", "index")
_LITERALS = re.compile(r"'(?:[^']|'')*'|X'[0-9A-Fa-f]*'|NULL", re.I)
_NUMBERS_ONLY = re.compile(r"[\s0-9.eE+\-,();]*")
_DENIED_FUNCTIONS = {"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"}


#: the longest statement a dump may hold (one row's INSERT: far more than this app's)
MAX_STATEMENT_CHARS = 4 * 1024 * 1024
#: plain text up to the next quote, bracket, backtick or comment start
_PLAIN = re.compile(r"[^'\"\[`/-]*+(?:(?:/(?!\*)|-(?!-))[^'\"\[`/-]*+)*+")
#: where each quoted state ends: (its closing text, what inside it stands for one)
_CLOSE = {"'": ("'", "''"), '"': ('"', '""'), "`": ("`", "``"), "[": ("]", None),
          "/*": ("*/", None)}


class _Statements:
    """Lines in, complete statements out, in time linear in the dump.

    A statement on one line (nearly all of iterdump's) is recognised by
    :func:`sqlite3.complete_statement` on that line alone. Across lines, the
    lexical state at each line's end (inside a quote, an identifier, a comment, or
    not) is carried forward instead of asking ``complete_statement`` about the
    whole text so far on every line, which took time quadratic in a statement's
    lines (a 160 KB string over many lines: 22 s). ``complete_statement`` then
    confirms the end once; a disagreement (a trigger body) refuses the dump."""

    def __init__(self) -> None:
        self.pending: list[str] = []
        self.size = 0
        self.inside: str | None = None  # the quote or comment a line ended in
        self.last = ""  # the statement's last character outside quotes and comments
        self.ends = 0  # the ';' outside quotes and comments scanned so far

    def add(self, line: str) -> str | None:
        """The statement ``line`` completes, if it does."""
        if not self.pending and line.rstrip().endswith(";") and sqlite3.complete_statement(line):
            return line
        self.size += len(line)
        if self.size > MAX_STATEMENT_CHARS:
            raise DumpRefused(f"the SQL dump holds a statement longer than "
                              f"{MAX_STATEMENT_CHARS // (1024 * 1024)} MiB; nothing was restored")
        self.pending.append(line)
        self._scan(line)
        if self.inside is not None or self.last != ";":
            return None
        statement = "".join(self.pending)
        if not sqlite3.complete_statement(statement):
            raise DumpRefused("the SQL dump holds a statement an SQLite dump does not have "
                              "(a body of statements); nothing was restored")
        self.pending, self.size, self.last = [], 0, ""
        return statement

    def _scan(self, line: str) -> None:
        pos, end = 0, len(line)
        while pos < end:
            if self.inside is None:
                stop = _PLAIN.match(line, pos).end()
                self.ends += line.count(";", pos, stop)
                if line[pos:stop].strip():
                    self.last = line[pos:stop].rstrip()[-1]
                if stop >= end or line.startswith("--", stop):
                    return  # a line comment runs to the line's end
                self.inside = "/*" if line.startswith("/*", stop) else line[stop]
                self.last, pos = self.inside, stop + len(self.inside)
                continue
            close, doubled = _CLOSE[self.inside]
            found = line.find(close, pos)
            if found < 0:
                return
            if doubled is not None and line.startswith(doubled, found):
                pos = found + len(doubled)
                continue
            self.inside, pos = None, found + len(close)

    def finish(self) -> bool:
        """Whether a statement was left unfinished."""
        return bool("".join(self.pending).strip())


def _semicolons(text: str) -> int:
    """How many ``;`` end a statement in ``text`` (outside quotes and comments)."""
    scan = _Statements()
    for line in text.splitlines(keepends=True):
        scan._scan(line)
    return scan.ends


class SQLiteDumpScreen:
    """Checks an SQLite dump statement by statement: only iterdump's statements,
    and INSERTs of literal values only (no function calls, no subqueries)."""

    def __init__(self) -> None:
        self._partial = b""
        self._statements = _Statements()
        self.committed = False

    def check(self, statement: str) -> None:
        m = _STATEMENT.match(statement)
        if m and statement.count(";") > 1 and _semicolons(statement) > 1:  # one per line
            raise DumpRefused("the SQL dump holds several statements in one (a CREATE "
                              "TABLE …; CREATE TRIGGER … line, say); nothing was restored")
        if not m:
            words = " ".join(statement.split()[:2])[:30]
            raise DumpRefused(f"the SQL dump holds a statement an SQLite dump does not have "
                              f"({words} …); nothing was restored")
        if m.group().strip().upper().startswith("INSERT"):
            quoted, bare = _INSERT_INTO.match(statement).groups()
            if (bare or quoted.replace('""', '"')).lower() in _SCHEMA_TABLES:
                raise DumpRefused("the SQL dump writes into SQLite's schema table (stored "
                                  "code no CREATE statement shows); nothing was restored")
            values = statement[m.end():].rstrip().rstrip(";")
            if not _NUMBERS_ONLY.fullmatch(_LITERALS.sub("", values)):
                raise DumpRefused("the SQL dump inserts something other than plain values; "
                                  "nothing was restored")
        self.committed = statement.strip().upper().startswith("COMMIT")

    def feed(self, chunk: bytes) -> None:
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            statement = self._statements.add(line.decode("utf-8", "replace") + "\n")
            if statement is not None:
                self.check(statement)

    def finish(self) -> None:
        if self._partial.strip() or self._statements.finish():
            raise EngineError("the SQL dump ends in the middle of a statement")
        if not self.committed:
            raise EngineError("the SQL dump is incomplete (no COMMIT)")


#: SQLite's tokens, enough to tell the word CHECK from a name or a text holding it
_TOKEN = re.compile(r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|`(?:[^`]|``)*`|\[[^\]]*\]"""
                    r"""|/\*.*?(?:\*/|\Z)|--[^\n]*|\w+|\S""", re.S)


#: what a CHECK may not call even on columns an erasure leaves alone: SQLite
#: evaluates every CHECK on every UPDATE, and these answer differently over time
_VOLATILE = {"random", "randomblob", "changes", "total_changes", "last_insert_rowid", "date",
             "time", "datetime", "julianday", "strftime", "unixepoch", "timediff",
             "current_timestamp", "current_date", "current_time"}


def _groups(sql: str, word: str) -> list[tuple[str, set[str]]]:
    """Each ``word (…)`` of a CREATE statement (``CHECK``; ``AS``: a generated
    column's expression): its name (the word after CONSTRAINT, else ``(unnamed)``)
    and the identifiers in it, lower-case and unquoted (no PRAGMA gives them)."""
    tokens = [t for t in _TOKEN.findall(sql) if not t.startswith(("--", "/*"))]
    found = []
    for i, t in enumerate(tokens):
        if t.upper() != word or i + 1 >= len(tokens) or tokens[i + 1] != "(":
            continue
        depth, names = 0, set()
        for j in range(i + 1, len(tokens)):
            depth += {"(": 1, ")": -1}.get(tokens[j], 0)
            if tokens[j][0] in "\"`[" or tokens[j][0].isalpha() or tokens[j][0] == "_":
                names.add(tokens[j].strip("\"`[]").replace('""', '"').lower())
            if depth == 0:
                break
        found.append((tokens[i - 1] if i > 1 and tokens[i - 2].upper() == "CONSTRAINT"
                      else "(unnamed)", names))
    return found


def check_names(create_table: str) -> list[str]:
    """The names of the CHECK constraints in a CREATE TABLE (``(unnamed)``)."""
    return [name for name, _ in _groups(create_table, "CHECK")]


def update_blockers(con: sqlite3.Connection, table: str, columns, nulled=(),
                    only=None) -> list[str]:
    """What on ``table`` could refuse, for some rows only, an erasure that writes
    ``columns`` (sets ``nulled`` to NULL; ``only``: it may insert rows, whose
    table may have just these columns, every one written): ``guest_backup.ops.
    finishing``. What involves none of them sees the same values before and after
    and is left, but for a CHECK calling what changes with time (:data:`_VOLATILE`)."""
    row = con.execute("SELECT type, sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()
    if row is None or row[0] != "table":
        return [f"a {row[0]} named {table}"] if row is not None else []
    quoted, sql = table.replace('"', '""'), row[1] or ""
    xinfo = con.execute(f'PRAGMA table_xinfo("{quoted}")').fetchall()  # cid, name, type,
    written = {c.lower() for c in (only or columns)}  # notnull, default, pk, hidden
    found = [f"CHECK constraint {name} on {table}" for name, ids in _groups(sql, "CHECK")
             if ids & (written | _VOLATILE) or only]
    found += [f"column {r[1]} on {table}" for r in xinfo if only and r[1] not in only]
    found += [f"NOT NULL column {r[1]} on {table}" for r in xinfo if r[3] and r[1] in nulled]
    strict = "STRICT" in [t.upper() for t in _TOKEN.findall(sql[sql.rfind(")"):])]
    found += [f"column {r[1]} of type {r[2]} on {table}" for r in xinfo if strict
              and not only and r[1].lower() in written - {"id", "seq"} and r[2].upper() not in ("TEXT", "ANY")]
    pk = [r[1] for r in xinfo if r[5]]
    if pk and pk != ["id"] and (only or written & {c.lower() for c in pk}):
        found.append(f"a primary key beyond id on {table}")
    if any(ids & written for _, ids in _groups(sql, "AS")) or only:
        found += [f"generated column {r[1]} on {table}" for r in xinfo if r[6] in (2, 3)]
    for _, name, unique, origin, partial in con.execute(f'PRAGMA index_list("{quoted}")'):
        index = con.execute("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).fetchone()
        text = (index[0] or "") if index else ""  # an index of a UNIQUE has none
        keys = con.execute(f'PRAGMA index_xinfo("{name.replace(chr(34), chr(34) * 2)}")')
        keys = [r for r in keys if r[5]]  # seqno, cid, name, desc, coll, key
        ids = {t.strip('"`[]').lower() for t in _TOKEN.findall(text[text.find("("):])} | {
            r[2].lower() for r in keys if r[2]}
        expression = any(r[1] == -2 for r in keys)
        if origin != "pk" and (unique or partial or expression) and (only or ids & written):
            kind = "unique index" if unique else "index on an expression or with a condition"
            found.append(f"{kind} {name} on {table}")
    return found + [f"foreign key ({fk[3]}) on {table}" for fk in con.execute(
        f'PRAGMA foreign_key_list("{quoted}")') if only or fk[3].lower() in written]


def _authorizer(action: int, arg1, arg2, database, source) -> int:
    """Deny what reaches beyond the new database file."""
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _DENIED_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    # not writable_schema: without it, no statement can write sqlite_master directly
    # (CREATE statements write it too, so writes to it cannot be denied here)
    if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() != "foreign_keys":
        return sqlite3.SQLITE_DENY
    if database not in (None, "main", "temp"):
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def _sql_statements(stream: IO[bytes]) -> Iterator[str]:
    """Split a dump into complete statements without reading it all."""
    statements = _Statements()
    for raw in _lines(stream):
        statement = statements.add(raw.decode("utf-8"))
        if statement is not None:
            yield statement
    if statements.finish():
        raise EngineError("the SQL dump ends in the middle of a statement; nothing was restored")


def _lines(stream: IO[bytes]) -> Iterator[bytes]:
    partial = b""
    while chunk := stream.read(CHUNK):
        lines = (partial + chunk).split(b"\n")
        partial = lines.pop()
        for line in lines:
            yield line + b"\n"
    if partial:
        yield partial
