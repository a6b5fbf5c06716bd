"""The complete statements a plain PostgreSQL dump of this app's schema may hold,
for :mod:`guest_backup.engines.pgscreen` (which reads the dump line by line and
hands each statement here): pg_dump's header SETs, set_config/setval, ``COPY
name (cols) FROM stdin``, and table, sequence, index, enum, constraint, default
and comment definitions calling a few harmless functions."""

from __future__ import annotations

import re
from itertools import accumulate, takewhile

_TOKEN = re.compile(r"""\s*(?:(?P<s>'(?:[^']|'')*')|(?P<q>"(?:[^"]|"")*")
    |(?P<w>[A-Za-z_][A-Za-z0-9_]*)|(?P<n>[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)
    |(?P<o>::|[-+*/<>=~!@#%^&|`?(),.\[\]]))""", re.X)

#: pg_dump's header: the only SET statements a dump may hold (pg_dump 12 to 17)
_SETS = frozenset(f"SET {s}" for s in (
    "statement_timeout = 0", "lock_timeout = 0", "idle_in_transaction_session_timeout = 0",
    "transaction_timeout = 0", "client_encoding = 'UTF8'", "standard_conforming_strings = on",
    "check_function_bodies = false", "xmloption = content", "client_min_messages = warning",
    "row_security = off", "default_tablespace = ''", "default_table_access_method = heap",
    "default_with_oids = false"))

_N = r'(?:[A-Z_][A-Z0-9_]*|"(?:[^"]|"")*")'    # a name, as the shape shows it
#: a table, sequence or type of the dump: in ``public``, as pg_dump writes this app's
#: (its search_path is empty). Another schema is refused: a ``pg_temp.guest`` hid
#: the loaded table from everything run after the dump in the same session (the
#: erasures re-applied, the audit's sequence), and only ``public`` is restored.
_QN = rf'(?:PUBLIC|"public") \. {_N}'
_INT = r"(?:- )?[0-9]+"
_LIT = r"'(?:[^']|'')*'"
_SELECTS = re.compile(
    rf"SELECT PG_CATALOG \. SET_CONFIG \( 'search_path' , '' , FALSE \)"
    rf"|SELECT PG_CATALOG \. SETVAL \( {_LIT} , {_INT} , (?:TRUE|FALSE) \)")
_COPY = re.compile(rf"COPY {_QN} (?:\( {_N}(?: , {_N})* \) )?FROM STDIN")
_DDL = re.compile(
    rf"CREATE TABLE {_QN} \( .*\)"
    rf"|CREATE SEQUENCE {_QN}(?: AS {_N}| START WITH {_INT}| INCREMENT BY {_INT}| NO MINVALUE"
    rf"| NO MAXVALUE| MINVALUE {_INT}| MAXVALUE {_INT}| CACHE [0-9]+| NO CYCLE| CYCLE)*"
    rf"|CREATE (?:UNIQUE )?INDEX {_N} ON (?:ONLY )?{_QN} USING {_N} \( .*"
    rf"|CREATE TYPE {_QN} AS ENUM \( (?:{_LIT}(?: , {_LIT})* )?\)"
    rf"|ALTER SEQUENCE {_QN} OWNED BY {_QN} \. {_N}"
    rf"|ALTER TABLE (?:ONLY )?{_QN} (?:ALTER COLUMN {_N} SET DEFAULT .+"
    rf"|ADD CONSTRAINT {_N} (?:PRIMARY KEY|UNIQUE|FOREIGN KEY|CHECK) .+"
    rf"|ALTER COLUMN {_N} ADD GENERATED (?:ALWAYS|BY DEFAULT) AS IDENTITY \( .+ \))"
    rf"|COMMENT ON (?:TABLE|COLUMN|SEQUENCE|INDEX|TYPE|CONSTRAINT {_N} ON) {_N}"
    rf"(?: \. {_N}){{0,2}} IS {_LIT}", re.S)

#: words after which "(" is syntax, not a function call
_PAREN_WORDS = frozenset(
    "CHECK KEY UNIQUE DISTINCT INCLUDE WITH ANY ALL SOME IN AND OR NOT WHERE DEFAULT "
    "IDENTITY AS ENUM WHEN THEN ELSE CASE CAST COALESCE NULLIF GREATEST LEAST BETWEEN "
    "ROW".split())
#: type names whose "(n)" is a type modifier
_TYPMODS = frozenset("varying varchar character char bpchar numeric decimal timestamp "
                     "timestamptz time timetz bit varbit interval float".split())
#: the built-in functions a column default, check or index of this schema may call
_FUNCTIONS = frozenset(
    "now nextval lower upper length char_length btrim timezone gen_random_uuid "
    "clock_timestamp statement_timestamp transaction_timestamp date_trunc array_length "
    "cardinality current_timestamp localtimestamp current_time localtime".split())
_INDEX_METHODS = frozenset("btree hash gin gist brin spgist".split())
#: what may stand before "(" in PostgreSQL's own rendering of the loaded defaults,
#: checks and index expressions (``pgload.calls_check``: the same rule, read back)
ALLOWED_CALLS = _FUNCTIONS | _TYPMODS | {w.lower() for w in _PAREN_WORDS}


def statement_problem(statement: str) -> tuple[str | None, str]:
    """What makes a complete statement one that pg_dump does not write for this
    schema (None: nothing), and its verb (``COPY``: its data follows)."""
    tokens = _tokens(statement)
    if not tokens:
        return ("an empty statement" if tokens == [] else
                "a statement the screen cannot read"), ""
    shape = " ".join(t.upper() if k == "w" else t for k, t in tokens)
    verb = tokens[0][1].upper()
    if verb == "SET" and " ".join(t for _, t in tokens) not in _SETS:
        name = _safe(tokens[1][1].strip('"')) if len(tokens) > 1 else ""
        return f"a SET {name} other than pg_dump's own", verb
    if verb == "SELECT" and not _SELECTS.fullmatch(shape):
        return "a SELECT other than pg_dump's set_config and setval", verb
    if verb == "COPY":
        if not _COPY.fullmatch(shape):
            return ("a COPY that is not COPY public.… FROM stdin (e.g. TO PROGRAM, a file "
                    "or another schema)"), verb
    elif verb not in ("SET", "SELECT"):
        if not _DDL.fullmatch(shape) or not _table_closes(tokens, shape):
            return (f"a statement not in pg_dump's dump of this schema "
                    f"({_head(tokens, shape)} …)"), verb
        return _calls_problem(tokens), verb
    return None, verb


def _calls_problem(tokens: list[tuple[str, str]]) -> str | None:
    """A ``name(`` in a definition that is not syntax, a table name, a type
    modifier or one of the few harmless functions this schema's defaults use; or a
    name selected from an expression, ``('/etc/passwd'::text).pg_read_file``, which
    PostgreSQL reads as a call of that function (pg_dump writes ``(…).field`` only
    for composite columns, which this schema has none of)."""
    for k in range(1, len(tokens)):
        kind, prev = tokens[k - 1]
        if tokens[k][1] == "." and (kind in ("s", "n") or prev in (")", "]")):
            name = tokens[k + 1][1] if k + 1 < len(tokens) else ""
            return f"a name selected from an expression ((…).{_safe(name)})"
        if tokens[k][1] != "(" or kind not in ("w", "q"):
            continue
        name = prev.lower() if kind == "w" else prev[1:-1].replace('""', '"')
        qualified = k >= 3 and tokens[k - 2][1] == "."
        schema = tokens[k - 3][1].lower() if qualified else None
        at = k - (4 if qualified else 2)
        before = tokens[at][1].upper() if at >= 0 else ""
        if ((kind == "w" and prev.upper() in _PAREN_WORDS and not qualified)
                or before in ("TABLE", "REFERENCES")
                or (before == "USING" and name in _INDEX_METHODS)):
            continue
        if schema in (None, "pg_catalog") and (
                name in _FUNCTIONS or (name in _TYPMODS and _typmod(tokens, k))):
            continue
        return f"a call of {_safe(name)}(…)"
    if tokens[0][1].upper() == "ALTER" and any(
            t == "," and d == 0 for (_, t), d in zip(tokens, _depths(tokens))):
        return "an ALTER TABLE with several actions"
    return None


def _tokens(statement: str) -> list[tuple[str, str]] | None:
    """The statement's tokens as (kind, text): s string, q quoted name, w word,
    n number, o operator; None if something is left that is none of them."""
    out, pos, end = [], 0, len(statement.rstrip())
    while pos < end:
        if (m := _TOKEN.match(statement, pos)) is None:
            return None
        out.append((m.lastgroup, m.group(m.lastgroup)))
        pos = m.end()
    return out


def _depths(tokens: list[tuple[str, str]]) -> list[int]:
    """The parenthesis depth after each token."""
    return list(accumulate((t == "(") - (t == ")") for _, t in tokens))


def _table_closes(tokens: list[tuple[str, str]], shape: str) -> bool:
    """A CREATE TABLE's column list closes at its end (no ``AS``, ``INHERITS`` …)."""
    if not shape.startswith("CREATE TABLE "):
        return True
    depths = _depths(tokens)
    return depths.index(0, depths.index(1)) == len(tokens) - 1


def _typmod(tokens: list[tuple[str, str]], k: int) -> bool:
    """Whether the parentheses at ``k`` hold only numbers (a type modifier)."""
    rest = [t for kind, t in tokens[k + 1:] if kind != "n" and t != ","]
    return bool(rest) and rest[0] == ")"


def _head(tokens: list[tuple[str, str]], shape: str) -> str:
    """The statement's leading keywords, for a message (``CREATE TABLE AS`` too)."""
    if re.match(rf"CREATE (?:\w+ )*TABLE {_QN} AS ", shape):
        return "CREATE TABLE AS"
    lead = takewhile(lambda i: tokens[i][0] == "w" and tokens[i + 1:i + 2] != [("o", ".")],
                     range(min(3, len(tokens))))
    return " ".join(tokens[i][1].upper() for i in lead) or "a statement"


def _safe(text: str) -> str:
    """Attacker-written text for a message: plain words only."""
    return text[:60] if re.fullmatch(r"[A-Za-z0-9_ .]*", text) else "a quoted name"


__all__ = ["statement_problem"]
