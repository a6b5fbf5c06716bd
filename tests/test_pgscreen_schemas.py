"""A signed dump (its signer's key stolen) may name only ``public``'s tables, and
only logged ones. Before: ``CREATE TABLE pg_temp.guest`` passed the screen and hid
the loaded tables from what the restore runs after the dump in the same session
(the erased guest came back, "0 erasures re-applied"; the audit's id sequence was
left behind, so the restore's own entry and the next backup failed), and
``CREATE UNLOGGED TABLE`` made every restored table one a crash empties."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from guest_backup.engines.pgscreen_statements import statement_problem
from guest_registration.extensions import db
from tests.helpers import make_backup
from tests.test_erasure import add_people, guest
from tests.test_pgscreen import ANCHOR, forge_signed

REFUSED = [
    "CREATE TABLE pg_temp.guest (\n    id integer NOT NULL\n)",
    'CREATE TABLE "pg_temp".audit_log (\n    id integer\n)',
    "CREATE TABLE other.guest (\n    id integer\n)",
    "CREATE TABLE guest (\n    id integer\n)",
    "CREATE UNLOGGED TABLE public.guest (\n    id integer\n)",
    "COPY pg_temp.guest (id) FROM stdin",
    "ALTER SEQUENCE public.guest_id_seq OWNED BY pg_temp.guest.id",
    "CREATE INDEX ix ON pg_temp.guest USING btree (id)",
    "ALTER TABLE ONLY pg_temp.guest ADD CONSTRAINT guest_pkey PRIMARY KEY (id)",
]
ACCEPTED = [
    "CREATE TABLE public.guest (\n    id integer NOT NULL\n)",
    'CREATE TABLE "public"."guest" (\n    id integer NOT NULL\n)',
    "COPY public.guest (id) FROM stdin",
    "ALTER SEQUENCE public.guest_id_seq OWNED BY public.guest.id",
    "CREATE INDEX ix ON public.guest USING btree (id)",
]


@pytest.mark.parametrize("statement", REFUSED)
def test_another_schema_or_an_unlogged_table_is_refused(statement):
    problem, _ = statement_problem(statement)
    assert problem is not None and ("not in pg_dump's dump" in problem
                                    or "another schema" in problem), problem


@pytest.mark.parametrize("statement", ACCEPTED)
def test_public_tables_pass(statement):
    assert statement_problem(statement) == (None, statement.split()[0].upper())


def _shadows(dump: bytes) -> bytes:
    """The dump's own guest and registration tables again, in pg_temp."""
    out = b""
    for table in (b"guest", b"registration", b"audit_log"):
        found = re.search(rb"CREATE TABLE public\." + table + rb" \(.*?\n\);\n", dump, re.S)
        out += found.group(0).replace(b"public.", b"pg_temp.", 1) + b"\n"
    return out


@pytest.mark.parametrize("backend", ["postgresql"])
def test_shadow_tables_cannot_bring_an_erased_guest_back(app, runner, tmp_path):
    ids = add_people(app)
    archive = make_backup(runner)
    assert runner.invoke(args=["erase", "--guest", str(ids["jana"]), "--yes"]).exit_code == 0
    forged = forge_signed(app, archive, tmp_path / "forged" / archive.name,
                          lambda d: d.replace(ANCHOR, ANCHOR + _shadows(d), 1))
    restored = runner.invoke(args=["restore", str(forged), "--replace", "--yes"])
    assert restored.exit_code != 0, restored.output
    assert "not in pg_dump's dump of this schema" in restored.output
    assert guest(app, ids["jana"])["first_name"] == "[erased]"  # the live data as it was


@pytest.mark.parametrize("backend", ["postgresql"])
def test_unlogged_tables_are_refused(app, runner, tmp_path):
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    archive = make_backup(runner)
    forged = forge_signed(app, archive, tmp_path / "forged" / archive.name,
                          lambda d: d.replace(b"CREATE TABLE public.",
                                              b"CREATE UNLOGGED TABLE public."))
    restored = runner.invoke(args=["restore", str(forged), "--replace", "--yes"])
    assert restored.exit_code != 0 and "CREATE UNLOGGED TABLE" in restored.output
    with app.app_context():
        kinds = db.session.execute(sa.text(
            "SELECT DISTINCT relpersistence FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE nspname = 'public' AND relkind = 'r'")).all()
    assert kinds == [("p",)]
