"""The PostgreSQL dump screen, round two (issue 20): an allow-list of what
``pg_dump --no-owner --no-privileges`` writes for this application's schema
instead of a second psql lexer.

First the screen alone (a hand-written dump in pg_dump's shape, then the real
pg_dump of demo data), then the known bypasses of the old, lexing screen as
archives signed with a TRUSTED key (a stolen key, an insider): ``verify``,
``restore`` and ``restore-test`` refuse each with a one-line reason, and
nothing they would have run did run (no marker file, no program)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import time
import uuid
import zipfile
from pathlib import Path

import pytest
import sqlalchemy as sa

from guest_backup.engines.pgscreen import DumpRefused, PgDumpScreen
from guest_backup.wiring import backup_context
from tests.helpers import make_backup, restore_target, table_contents

KEY = "Fq0ZxTDr8mVvN1lKk3s9bE2HcUu7yWgQ4oPaRtJdXzIiLeYnMhCf5SBj6GwO"
HEADER = f"""--
-- PostgreSQL database dump
--

\\restrict {KEY}

-- Dumped from database version 15.20
-- Dumped by pg_dump version 15.20

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: trip; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.trip (
    id integer NOT NULL,
    title character varying(200) NOT NULL,
    max_guests integer DEFAULT 10 NOT NULL,
    created_at timestamp without time zone DEFAULT (now() AT TIME ZONE 'utc'::text) NOT NULL,
    CONSTRAINT ck_trip_max_guests CHECK ((max_guests >= 1))
);

CREATE SEQUENCE public.trip_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.trip_id_seq OWNED BY public.trip.id;

ALTER TABLE ONLY public.trip ALTER COLUMN id SET DEFAULT nextval('public.trip_id_seq'::regclass);

COPY public.trip (id, title, max_guests, created_at) FROM stdin;
1\tO'Brien; DROP TABLE guest; --\t4\t2025-04-21 00:00:00
2\tŽluťoučký kůň 😀 \\\\! touch /tmp/x\t6\t2025-10-13 00:00:00
3\t\\\\.\t2\t2025-10-13 00:00:00
\\.

SELECT pg_catalog.setval('public.trip_id_seq', 3, true);

ALTER TABLE ONLY public.trip
    ADD CONSTRAINT trip_pkey PRIMARY KEY (id);

CREATE INDEX ix_trip_created_at ON public.trip USING btree (created_at);

"""
TRAILER = f"""
--
-- PostgreSQL database dump complete
--

\\unrestrict {KEY}

"""
ANCHOR = b"SELECT pg_catalog.set_config('search_path', '', false);\n"


def dump(body: str = "", *, header: str = HEADER, trailer: str = TRAILER) -> bytes:
    return (header + body + trailer).encode()


def screen(data: bytes, chunk: int = 1 << 20) -> bytes:
    """What the screen passes on, fed ``chunk`` bytes at a time (raises DumpRefused)."""
    s = PgDumpScreen()
    out = [s.feed(data[i:i + chunk]) for i in range(0, len(data), chunk)]
    return b"".join(out) + s.finish()


def refused(data: bytes, chunk: int = 1 << 20) -> str:
    with pytest.raises(DumpRefused) as info:
        screen(data, chunk)
    message = str(info.value)
    assert "\n" not in message
    return message


def without_restrict(data: bytes) -> bytes:
    return re.sub(rb"(?m)^\\(?:un)?restrict [A-Za-z0-9]+\n", b"", data)


def as_screened(data: bytes) -> bytes:
    """A real dump as the screen hands it to psql: without pg_dump's ``\\restrict``
    lines, and without its one-line ``COMMENT ON SCHEMA public``, which it writes
    once a --replace restore recreated the schema (an earlier test's, in the
    session's database: the comparison failed depending on the tests' order)."""
    return re.sub(rb"(?m)^COMMENT ON SCHEMA public IS '(?:[^'\n]|'')*';\n", b"",
                  without_restrict(data))


# --------------------------------------------------------------------------- the known bypasses

def unrestrict(data: bytes) -> str:
    """The hidden line that lifts pg_dump's own ``\\restrict``: its key is in the dump."""
    m = re.search(rb"^\\restrict ([A-Za-z0-9]+)$", data, re.M)
    return f"\\unrestrict {m.group(1).decode()}\n" if m else ""


def paren_semicolon(data: bytes, flag: Path) -> str:
    """1. A ';' inside parentheses: the old screen took the next lines for COPY
    data, psql (counting parentheses) ran them."""
    return ("CREATE TABLE public.evil (a integer CHECK ((1 = 1); COPY public.trip (id) "
            f"FROM stdin;\n{unrestrict(data)}\\! touch {flag}\n\\.\n")


def emoji_identifier(data: bytes, flag: Path) -> str:
    """2. An identifier character above U+FFFF made the old screen read ``E'\\'``
    as an escape string; to psql ``😀E`` is a name and ``'\\'`` a whole string."""
    return (f"CREATE TABLE public.evil (a integer DEFAULT \U0001F600E'\\' \n"
            f"{unrestrict(data)}\\! touch {flag}\n';\n")


def scs_set_config(data: bytes, flag: Path) -> str:
    """3a. standard_conforming_strings off through set_config: a backslash now
    escapes the quote for psql, not for the old screen."""
    return ("SELECT pg_catalog.set_config('standard_conforming_strings', 'off', false);\n"
            f"COMMENT ON TABLE public.trip IS '\\''\n{unrestrict(data)}\\! touch {flag} #\n';\n")


def scs_quoted_set(data: bytes, flag: Path) -> str:
    """3b. The same through a quoted ``SET "standard_conforming_strings"``."""
    return ('SET "standard_conforming_strings" = off;\n'
            f"COMMENT ON TABLE public.trip IS '\\''\n{unrestrict(data)}\\! touch {flag} #\n';\n")


def sjis(data: bytes, flag: Path) -> str:
    """4. client_encoding SJIS: the last byte of 'ā' (0x81) is an SJIS lead byte
    that swallows the quote the old screen relied on."""
    return ("SET client_encoding = 'SJIS';\n"
            f"COMMENT ON TABLE public.trip IS '\u0101' '\n{unrestrict(data)}\\! touch {flag}\n';\n")


def ctas_lo_export(data: bytes, flag: Path) -> str:
    """Load time: CREATE TABLE … AS calling lo_from_bytea, then lo_export (a file
    written as the postgres OS user)."""
    return ("CREATE TABLE public.lo1 AS SELECT pg_catalog.lo_from_bytea(0, '\\x41'::bytea) AS o;\n"
            f"CREATE TABLE public.lo2 AS SELECT pg_catalog.lo_export(o, '{flag}') AS r "
            f"FROM public.lo1;\n")


def matview_lo_export(data: bytes, flag: Path) -> str:
    """Load time: the same through materialized views."""
    return ("CREATE MATERIALIZED VIEW public.lo1 AS SELECT pg_catalog.lo_from_bytea(0, "
            "'\\x41'::bytea) AS o;\n"
            f"CREATE MATERIALIZED VIEW public.lo2 AS SELECT pg_catalog.lo_export(o, '{flag}') AS r "
            f"FROM public.lo1;\n")


def emoji_domain(data: bytes, flag: Path) -> str:
    """Load time: a domain named ``😀E`` makes ``😀E'\\'`` a typed literal to the
    server and the start of an E'' string to the old screen, which then missed
    the COPY … TO PROGRAM after it."""
    return ("CREATE DOMAIN public.\U0001F600E AS text;\n"
            "CREATE TABLE public.evil (a text DEFAULT public.\U0001F600E'\\');\n"
            f"COPY (SELECT 1) TO PROGRAM $$touch {flag}$$;\n"
            "SELECT ''';\n")


def field_call_read_file(data: bytes, flag: Path) -> str:
    """Load time, later: ``(x).f`` is ``f(x)`` with no ``f(`` for the screen to see;
    a default reading a server file into every row inserted afterwards (by the
    restore's carried audit entries, after RESET ROLE, then by the app)."""
    return "CREATE TABLE public.evil (a text DEFAULT ('/etc/passwd'::text).pg_read_file);\n"


BYPASSES = {
    "field-call-read-file": (field_call_read_file,
                             "a name selected from an expression ((…).pg_read_file)"),
    "paren-semicolon": (paren_semicolon, "a ';' inside parentheses"),
    "emoji-identifier": (emoji_identifier, "non-ASCII or control character (U+1F600)"),
    "scs-set-config": (scs_set_config, "a SELECT other than pg_dump's set_config and setval"),
    "scs-quoted-set": (scs_quoted_set, "a SET standard_conforming_strings other than pg_dump's"),
    "sjis": (sjis, "a SET client_encoding other than pg_dump's own"),
    "ctas-lo-export": (ctas_lo_export, "(CREATE TABLE AS …)"),
    "matview-lo-export": (matview_lo_export, "(CREATE MATERIALIZED VIEW …)"),
    "emoji-domain": (emoji_domain, "non-ASCII or control character (U+1F600)"),
}


def with_bypass(data: bytes, kind: str, flag: Path) -> bytes:
    """``data`` (pg_dump's shape) with the bypass right after pg_dump's search_path line."""
    assert ANCHOR in data
    return data.replace(ANCHOR, ANCHOR + BYPASSES[kind][0](data, flag).encode(), 1)


def marker() -> Path:
    return Path("/tmp") / f"gr-pwned-{uuid.uuid4().hex}"


# --------------------------------------------------------------------------- the screen alone

@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 64, 4096, 1 << 20])
def test_pg_dumps_shape_passes_whatever_the_chunks(chunk):
    data = dump()
    assert screen(data, chunk) == without_restrict(data)


@pytest.mark.parametrize("kind", sorted(BYPASSES))
@pytest.mark.parametrize("chunk", [3, 1 << 20])
def test_the_known_bypasses_are_refused(kind, chunk):
    flag = marker()
    message = refused(with_bypass(dump(), kind, flag), chunk)
    assert BYPASSES[kind][1] in message and "line 16 of the dump" in message
    assert not flag.exists()


REFUSED = {
    # settings that change how psql or the server read what follows, or who runs it
    "scs-off": ("SET standard_conforming_strings = off;\n", "SET standard_conforming_strings"),
    "scs-to": ("SET standard_conforming_strings TO on;\n", "SET standard_conforming_strings"),
    "scs-local": ("SET LOCAL standard_conforming_strings = off;\n", "SET LOCAL"),
    "encoding-sjis": ("SET client_encoding TO 'SJIS';\n", "SET client_encoding"),
    "encoding-latin1": ("SET client_encoding = 'LATIN1';\n", "SET client_encoding"),
    "names": ("SET NAMES 'SJIS';\n", "SET NAMES"),
    "role": ("SET ROLE postgres;\n", "SET ROLE"),
    "role-quoted": ('SET "role" = postgres;\n', "SET role"),
    "session-role": ("SET SESSION ROLE postgres;\n", "SET SESSION"),
    "session-authorization": ("SET SESSION AUTHORIZATION postgres;\n", "SET SESSION"),
    "reset-role": ("RESET ROLE;\n", "(RESET ROLE …)"),
    "reset-all": ("RESET ALL;\n", "(RESET ALL …)"),
    "reset-session-authorization": ("RESET SESSION AUTHORIZATION;\n", "(RESET SESSION"),
    "set-config-role": ("SELECT pg_catalog.set_config('role', 'postgres', false);\n",
                        "a SELECT other than"),
    "set-config-unqualified": ("SELECT set_config('search_path', '', false);\n",
                               "a SELECT other than"),
    "search-path": ("SET search_path = evil, pg_catalog;\n", "SET search_path"),
    # psql meta-commands and what psql would read differently
    "shell": ("\\! touch /tmp/x\n", "psql meta-command"),
    "shell-indented": ("  \\! touch /tmp/x\n", "psql meta-command"),
    "meta-mid-line": ("SET lock_timeout = 0; \\! touch /tmp/x\n", "text after the ';'"),
    "meta-in-statement": ("CREATE TABLE public.t (a integer \\! touch /tmp/x\n);\n",
                          "psql meta-command"),
    "copy-meta": ("\\copy public.trip FROM '/etc/passwd'\n", "psql meta-command"),
    "psql-variable": ("CREATE TABLE public.t (a integer DEFAULT :evil);\n", "psql variable"),
    "psql-variable-quoted": ("CREATE TABLE public.t (a text DEFAULT :'evil');\n",
                             "psql variable"),
    "escape-string": ("COMMENT ON TABLE public.trip IS E'\\\\';\n", "prefixed string"),
    "unicode-string": ("COMMENT ON TABLE public.trip IS U&'d\\0061t';\n", "prefixed string"),
    "unicode-identifier": ('CREATE TABLE public.U&"t" (a integer);\n', "prefixed string"),
    "bit-string": ("CREATE TABLE public.t (a bit(3) DEFAULT B'101');\n", "prefixed string"),
    "dollar-quote": ("COMMENT ON TABLE public.trip IS $$x$$;\n", "dollar quote"),
    "block-comment": ("CREATE TABLE public.t /* x */ (a integer);\n", "/* */ comment"),
    "two-statements": ("SET lock_timeout = 0; SET lock_timeout = 0;\n", "text after the ';'"),
    "semicolon-in-parens": ("CREATE TABLE public.t (a integer CHECK ((1 = 1); \n));\n",
                            "a ';' inside parentheses"),
    "carriage-return-in-comment": ("-- note\r\\! touch /tmp/x\nSET lock_timeout = 0;\n",
                                   "comment with non-ASCII or control"),
    "non-ascii-comment": ("-- ž\n", "comment with non-ASCII"),
    "non-ascii-name": ("CREATE TABLE public.žluť (a integer);\n", "U+017E"),
    "form-feed": ("SET lock_timeout\f= 0;\n", "U+000C"),
    "unbalanced": ("CREATE TABLE public.t (a integer));\n", "unbalanced"),
    "empty-statement": (";\n", "empty statement"),
    "curly": ("CREATE TABLE public.t (a integer DEFAULT {1});\n", "cannot read"),
    # statements pg_dump does not write for this schema
    "ctas": ("CREATE TABLE public.t AS SELECT 1 AS a;\n", "CREATE TABLE AS"),
    "ctas-columns": ("CREATE TABLE public.t (a) AS SELECT 1;\n", "CREATE TABLE"),
    "ctas-parens": ("CREATE TABLE public.t AS (SELECT 1 AS a);\n", "CREATE TABLE AS"),
    "select-into": ("SELECT 1 AS a INTO public.t;\n", "a SELECT other than"),
    "select": ("SELECT pg_catalog.pg_read_file('/etc/passwd');\n", "a SELECT other than"),
    "setval-call": ("SELECT pg_catalog.setval(pg_catalog.lo_export(1, '/tmp/x'), 1, true);\n",
                    "a SELECT other than"),
    "matview": ("CREATE MATERIALIZED VIEW public.m AS SELECT 1;\n", "CREATE MATERIALIZED VIEW"),
    "view": ("CREATE VIEW public.v AS SELECT 1;\n", "(CREATE VIEW …)"),
    "do": ("DO LANGUAGE plpgsql 'BEGIN NULL; END';\n", "(DO LANGUAGE PLPGSQL …)"),
    "call": ("CALL public.p();\n", "(CALL …)"),
    "function": ("CREATE FUNCTION public.f() RETURNS integer LANGUAGE sql AS 'SELECT 1';\n",
                 "(CREATE FUNCTION …)"),
    "or-replace-function": ("CREATE OR REPLACE FUNCTION public.f() RETURNS integer "
                            "LANGUAGE sql AS 'SELECT 1';\n", "(CREATE OR REPLACE …)"),
    "procedure": ("CREATE PROCEDURE public.p() LANGUAGE sql AS 'SELECT 1';\n",
                  "(CREATE PROCEDURE …)"),
    "trigger": ("CREATE TRIGGER t BEFORE INSERT ON public.trip FOR EACH ROW EXECUTE FUNCTION "
                "public.f();\n", "(CREATE TRIGGER T …)"),
    "rule": ("CREATE RULE r AS ON INSERT TO public.trip DO ALSO NOTIFY x;\n", "(CREATE RULE R …)"),
    "event-trigger": ("CREATE EVENT TRIGGER e ON ddl_command_start EXECUTE FUNCTION f();\n",
                      "(CREATE EVENT TRIGGER …)"),
    "extension": ("CREATE EXTENSION dblink;\n", "(CREATE EXTENSION DBLINK …)"),
    "language": ("CREATE LANGUAGE plpython3u;\n", "(CREATE LANGUAGE PLPYTHON3U …)"),
    "operator": ("CREATE OPERATOR public.=== (FUNCTION = f, LEFTARG = int, RIGHTARG = int);\n",
                 "(CREATE OPERATOR …)"),
    "cast": ("CREATE CAST (text AS integer) WITH FUNCTION f(text);\n", "(CREATE CAST …)"),
    "domain": ("CREATE DOMAIN public.d AS text CHECK (VALUE <> '');\n", "(CREATE DOMAIN …)"),
    "policy": ("CREATE POLICY p ON public.trip USING (true);\n", "(CREATE POLICY P …)"),
    "schema": ("CREATE SCHEMA evil;\n", "(CREATE SCHEMA EVIL …)"),
    "grant": ("GRANT pg_execute_server_program TO guest_restore;\n", "(GRANT PG_EXECUTE"),
    "alter-role": ("ALTER ROLE guest_restore SUPERUSER;\n", "(ALTER ROLE GUEST_RESTORE …)"),
    "commit": ("COMMIT;\n", "(COMMIT …)"),
    "begin": ("BEGIN;\n", "(BEGIN …)"),
    "insert": ("INSERT INTO public.trip (id) VALUES (9);\n", "(INSERT INTO …)"),
    "load": ("LOAD '/tmp/evil.so';\n", "(LOAD …)"),
    "alter-owner": ("ALTER TABLE public.trip OWNER TO postgres;\n", "(ALTER TABLE …)"),
    "alter-several": ("ALTER TABLE ONLY public.trip ALTER COLUMN id SET DEFAULT 1, "
                      "OWNER TO postgres;\n", "several actions"),
    "inherits": ("CREATE TABLE public.t (a integer) INHERITS (public.trip);\n", "(CREATE TABLE"),
    # COPY only as pg_dump writes it
    "copy-to-program": ("COPY (SELECT 1) TO PROGRAM 'touch /tmp/x';\n", "a COPY that is not"),
    "copy-from-program": ("COPY public.trip (id) FROM PROGRAM 'id';\n", "a COPY that is not"),
    "copy-from-file": ("COPY public.trip (id) FROM '/etc/passwd';\n", "a COPY that is not"),
    "copy-to-file": ("COPY public.trip (id) TO '/tmp/x';\n", "a COPY that is not"),
    "copy-options": ("COPY public.trip (id) FROM stdin WITH (FORMAT csv);\n1\n\\.\n",
                     "a COPY that is not"),
    "copy-data-same-line": ("COPY public.trip (id) FROM stdin; 1\n\\.\n", "text after the ';'"),
    # functions in definitions (they run as whoever inserts a row later)
    "default-set-config": ("CREATE TABLE public.t (a text DEFAULT pg_catalog.set_config('role', "
                           "'postgres', false));\n", "a call of set_config"),
    "default-lo-export": ("CREATE TABLE public.t (a integer DEFAULT lo_export(1, '/tmp/x'));\n",
                          "a call of lo_export"),
    "check-query-to-xml": ("CREATE TABLE public.t (a integer CHECK (query_to_xml('COPY (SELECT 1) "
                           "TO PROGRAM ''id''', true, true, '') IS NOT NULL));\n",
                           "a call of query_to_xml"),
    "quoted-function": ('CREATE TABLE public.t (a integer DEFAULT "lo_export"(1, \'/x\'));\n',
                        "a call of lo_export"),
    "qualified-keyword": ("CREATE TABLE public.t (a integer CHECK (pg_catalog.check(1)));\n",
                          "a call of check"),
    "set-default-read-file": ("ALTER TABLE ONLY public.trip ALTER COLUMN title SET DEFAULT "
                              "pg_read_file('/etc/passwd');\n", "a call of pg_read_file"),
    "index-expression": ("CREATE INDEX i ON public.trip USING btree (pg_catalog.pg_sleep(1));\n",
                         "a call of pg_sleep"),
    "typmod-not-numbers": ("CREATE TABLE public.t (a numeric(pg_catalog.pg_sleep(1)));\n",
                           "a call of numeric"),
    # (x).f is f(x): a call without "f(" (the default runs as whoever inserts later)
    "field-call-default": ("ALTER TABLE ONLY public.trip ALTER COLUMN title SET DEFAULT "
                           "('/etc/passwd'::text).pg_read_file;\n",
                           "a name selected from an expression ((…).pg_read_file)"),
    "field-call-check": ("CREATE TABLE public.t (a integer CHECK ((a).pg_sleep IS NULL));\n",
                         "((…).pg_sleep)"),
    "field-call-number": ("ALTER TABLE ONLY public.trip ADD CONSTRAINT c CHECK "
                          "((0.1::double precision).pg_sleep IS NULL);\n", "((…).pg_sleep)"),
    "field-call-subscript": ("CREATE TABLE public.t (a integer[] CHECK (a[1].pg_sleep IS "
                             "NULL));\n", "((…).pg_sleep)"),
    "field-call-index": ("CREATE INDEX i ON public.trip USING btree (((title)::text).length);\n",
                         "((…).length)"),
    "constraint-function": ("ALTER TABLE ONLY public.trip ADD CONSTRAINT c CHECK "
                            "(pg_catalog.lo_import('/etc/passwd') > 0);\n", "a call of lo_import"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_what_pg_dump_never_writes_is_refused(name):
    body, expected = REFUSED[name]
    message = refused(dump(body))
    assert expected in message, message
    assert message.startswith("line ") or "the dump" in message


@pytest.mark.parametrize("body", [
    'CREATE TABLE public."user" (\n    id integer NOT NULL,\n    email character varying(255),\n'
    "    balance numeric(10,2) DEFAULT 0.00,\n    seen timestamp(3) without time zone,\n"
    "    status character varying(16) DEFAULT 'pending'::character varying NOT NULL,\n"
    "    CONSTRAINT ck CHECK (((status)::text = ANY ((ARRAY['pending'::character varying, "
    "'approved'::character varying])::text[])))\n);\n",
    "CREATE UNIQUE INDEX ix_lower ON public.trip USING btree (lower((title)::text)) "
    "WHERE (max_guests > 1);\n",
    "CREATE TYPE public.kind AS ENUM (\n    'adult',\n    'child'\n);\n",
    "COMMENT ON COLUMN public.trip.title IS 'Název; s \\ \"uvozovkami\" a ''apostrofem''';\n",
    "COMMENT ON TABLE public.trip IS 'line one\nline two; \\! not a command';\n",
    'CREATE TABLE public."Žluťoučký kůň 😀" (\n    "a;b" integer\n);\n',
    "ALTER TABLE public.trip ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY (\n"
    "    SEQUENCE NAME public.trip_id2_seq\n    START WITH 1\n    INCREMENT BY 1\n"
    "    NO MINVALUE\n    NO MAXVALUE\n    CACHE 1\n);\n",
    "ALTER TABLE ONLY public.trip\n    ADD CONSTRAINT trip_fk FOREIGN KEY (id) "
    'REFERENCES public."user"(id) ON DELETE CASCADE;\n',
    "SET default_with_oids = false;\nSET transaction_timeout = 0;\n",
    "COPY public.trip (id, title, max_guests, created_at) FROM stdin;\r\n1\tx\t2\t\\N\r\n\\.\r\n",
], ids=["table", "index", "enum", "comment", "comment-lines", "quoted-names", "identity",
        "foreign-key", "old-and-new-sets", "crlf"])
def test_what_pg_dump_writes_passes(body):
    data = dump(body)
    assert screen(data, 5) == without_restrict(data)


def test_the_comment_on_a_recreated_public_schema_passes_but_is_not_loaded():
    """pg_dump writes ``COMMENT ON SCHEMA public IS '';`` for a database whose
    ``public`` was recreated (by a --replace restore): allowed, and left out of
    what psql gets (only the schema's owner may comment, not the restore role)."""
    line = "COMMENT ON SCHEMA public IS '';\n"
    data = dump(line)
    assert screen(data, 7) == without_restrict(data).replace(line.encode(), b"")
    assert "(COMMENT ON SCHEMA" in refused(dump("COMMENT ON SCHEMA evil IS '';\n"))
    assert "(COMMENT ON SCHEMA" in refused(dump("COMMENT ON SCHEMA public IS 'a\nb';\n"))
    assert "(COMMENT ON SCHEMA" in refused(dump("COMMENT ON SCHEMA public IS\n'';\n"))


@pytest.mark.parametrize("header,trailer,expected", [
    (HEADER, TRAILER.replace(KEY, KEY[::-1]), "does not close pg_dump's \\restrict"),
    (HEADER.replace(f"\\restrict {KEY}\n", ""), TRAILER, "does not close pg_dump's \\restrict"),
    (HEADER, TRAILER.replace(f"\\unrestrict {KEY}\n", ""), "not the closing \\unrestrict line"),
    (HEADER, TRAILER + "SET lock_timeout = 0;\n", "after pg_dump's closing \\unrestrict"),
    (HEADER, TRAILER + "-- a comment\n", "after pg_dump's closing \\unrestrict"),
    (HEADER, TRAILER + f"\\restrict {KEY}\n", "after pg_dump's closing \\unrestrict"),
    (HEADER + f"\\unrestrict {KEY}\n", TRAILER, "after pg_dump's closing \\unrestrict"),
    (HEADER + f"\\restrict {KEY}\n", TRAILER, "not pg_dump's first"),
    (HEADER, TRAILER.replace(f"\\unrestrict {KEY}", f"\\unrestrict {KEY} "), "meta-command"),
], ids=["other-key", "no-restrict", "no-unrestrict", "statement-after", "comment-after",
        "restrict-after", "unrestrict-early", "restrict-twice", "trailing-space"])
def test_restrict_is_the_first_and_unrestrict_the_last_line(header, trailer, expected):
    assert expected in refused(dump(header=header, trailer=trailer))


def test_a_dump_without_restrict_lines_passes():
    """pg_dump before 2025-08 wrote no \\restrict; the rules are the same without it."""
    data = dump(header=HEADER.replace(f"\\restrict {KEY}\n", ""),
                trailer=TRAILER.replace(f"\\unrestrict {KEY}\n", ""))
    assert screen(data) == data


@pytest.mark.parametrize("data,expected", [
    (dump() + b"\0", "NUL byte"),
    (dump("COMMENT ON TABLE public.trip IS '\0';\n"), "NUL byte"),
    (dump().replace("kůň".encode(), b"k\xf9\xf2"), "not UTF-8"),
    (dump().replace("kůň".encode(), "kůň".encode()[:-1]), "not UTF-8"),
    (dump()[:dump().index(b"\\.\n\nSELECT")], "inside a COPY data block"),
    (dump()[:dump().index(b"    CACHE 1;")], "middle of a statement"),
    (dump("COMMENT ON TABLE public.trip IS 'open\n"), "middle of a statement"),
], ids=["nul", "nul-in-string", "latin1", "cut-character", "ends-in-copy", "ends-in-statement",
        "open-string"])
def test_broken_dumps_are_refused(data, expected):
    for chunk in (1, 1 << 20):
        assert expected in refused(data, chunk)


def test_copy_data_streams_through():
    """A COPY data line is given on as it comes, never held whole: the screen
    keeps a few bytes of it at most, so a huge line cannot fill the memory."""
    s = PgDumpScreen()
    head = HEADER[:HEADER.index("COPY public.trip")] + "COPY public.trip (id, title) FROM stdin;\n"
    assert s.feed(head.encode()) == without_restrict(head.encode())
    piece = b"x" * 65536
    for _ in range(256):  # a 16 MiB line
        assert s.feed(piece) == piece
    assert s.feed(b"\n\\") == b"\n"  # "\" may still become the "\." line
    assert s.feed(b".\n") == b"\\.\n"
    rest = HEADER[HEADER.index("SELECT pg_catalog.setval"):] + TRAILER
    assert s.feed(rest.encode()) + s.finish() == without_restrict(rest.encode())


def test_the_screen_is_fast():
    """COPY data (most of a real dump) is screened at well over 50 MB/s."""
    row = "\t".join(["123456", "Nováková", "O'Brien; \\\\! x", "adult", "passport",
                     "AB1234567", "2025-06-01 01:02:03"]) + "\n"
    copy = HEADER.index("COPY public.trip")
    data = (HEADER[:copy] + "COPY public.trip (id, a, b, c, d, e, f) FROM stdin;\n"
            + row * 400_000 + "\\.\n" + TRAILER).encode()
    start = time.process_time()  # CPU seconds: steady on a busy machine
    screen(data)
    rate = len(data) / max(time.process_time() - start, 1e-6) / 1e6
    assert rate > 50, f"{rate:.0f} MB/s"


# --------------------------------------------------------------------------- real dumps

def libpq_url(url: str) -> str:
    return sa.engine.make_url(url).set(drivername="postgresql").render_as_string(
        hide_password=False)


@pytest.mark.parametrize("backend", ["postgresql"])
def test_the_real_pg_dump_of_demo_data_passes(app, runner, backend):
    """``manage.py setup`` + ``demo-data``, then pg_dump as the docs run it."""
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    with app.app_context():
        from guest_registration.extensions import db
        from guest_registration.models import Trip

        db.session.add(Trip(title="O'Brien; \\! touch /tmp/x -- 😀 E'\\' $$ \\.", max_guests=2))
        db.session.commit()
    data = subprocess.run(["pg_dump", "--no-owner", "--no-privileges", "--encoding=UTF8",
                           libpq_url(app.config["DATABASE_URL"])],
                          capture_output=True, check=True, timeout=120).stdout
    assert b"COPY public.guest " in data
    for chunk in (1, 7, 4096, 1 << 20):
        assert screen(data, chunk) == as_screened(data)


# --------------------------------------------------------------------------- signed archives

@pytest.fixture
def archive(app, runner) -> Path:
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    return make_backup(runner)


def forge_signed(app, source: Path, dest: Path, change, extra: dict | None = None) -> Path:
    """What an attacker holding a trusted signing key does: change ``database.sql``
    (and add the members ``extra``), recompute the manifest, sign it again (and the
    archive's seal, if it has one). ``dest`` keeps the archive's name, which the
    signature names."""
    with zipfile.ZipFile(source) as src:
        members = {i.filename: src.read(i) for i in src.infolist()}
    members["database.sql"] = change(members["database.sql"])
    members.update(extra or {})
    manifest = json.loads(members["manifest.json"])
    manifest["members"] = {name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                           for name, data in members.items()
                           if name not in ("manifest.json", "manifest.sig")}
    members["manifest.json"] = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    signer = backup_context(app).settings.signer()
    members["manifest.sig"] = signer.sign_manifest(members["manifest.json"])
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as out:
        for name, data in members.items():
            out.writestr(name, data)
    reseal(app, source, dest)
    return dest


def reseal(app, source: Path, dest: Path) -> None:
    """The ``.sig`` seal beside an archive, signed again for the forged bytes."""
    sidecar = source.with_name(source.name + ".sig")
    if not sidecar.exists():
        return
    from guest_backup.archive import signing

    claims = getattr(signing, "seal_claims", lambda _: None)(sidecar.read_bytes())
    if claims is None:
        return
    data = dest.read_bytes()
    claims.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    dest.with_name(dest.name + ".sig").write_bytes(
        backup_context(app).settings.signer().seal(claims))


def one_line_with(output: str, text: str) -> str:
    lines = [line for line in output.splitlines() if text in line]
    assert lines, output
    return lines[0]


@pytest.mark.parametrize("backend", ["postgresql"])
@pytest.mark.parametrize("kind", sorted(BYPASSES))
def test_signed_bypasses_are_refused_by_verify_restore_and_drill(request, app, runner, archive,
                                                                 backend, tmp_path, kind):
    flag = marker()
    expected = BYPASSES[kind][1]
    forged = forge_signed(app, archive, tmp_path / "forged" / archive.name,
                          lambda data: with_bypass(data, kind, flag))
    verified = runner.invoke(args=["verify", str(forged)])
    assert verified.exit_code == 1
    assert "database.sql: line " in one_line_with(verified.output, expected)
    target, uploads = restore_target(request, backend, tmp_path), tmp_path / "uploads-out"
    restored = runner.invoke(args=["restore", str(forged), "--database-url", target,
                                   "--uploads", str(uploads), "--yes"])
    assert restored.exit_code == 1 and "Traceback" not in restored.output
    assert one_line_with(restored.output, expected).startswith("Error: ")
    assert table_contents(target) == {} and not uploads.exists()
    # the drill restores the newest archive: the forged one, in the backup folder
    shutil.copy(forged, archive)
    if forged.with_name(forged.name + ".sig").exists():
        shutil.copy(forged.with_name(forged.name + ".sig"),
                    archive.with_name(archive.name + ".sig"))
    drill = runner.invoke(args=["restore-test"])
    assert drill.exit_code == 1 and "Traceback" not in drill.output
    assert one_line_with(drill.output, expected).startswith("Error: restore drill failed")
    assert not flag.exists()
