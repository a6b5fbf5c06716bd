"""Review of the dump screen (area: screen): what an archive signed with a trusted
key could still bring in its schema.

- SQLite: a VIEW in place of an app table (``trip`` renamed ``trip_real``, a view
  ``trip`` whose title reads every guest's document number): the restore
  accepted it and the public trip list showed the guests of later registrations.
  Now the screen refuses CREATE VIEW and the load (and its upgrade) may leave
  tables and indexes only.
- PostgreSQL and SQLite: a CHECK on ``guest`` that refuses the erasure of some
  rows only (every guest registered after the restore, or one guest the probe
  does not try): the restore accepted it and ``erase`` failed later. Now the
  tables an erasure writes may carry no CHECK, unique, exclusion, generated,
  row-level security, rule or trigger of their own: the restore is refused.
"""

from __future__ import annotations

import io

import pytest
import sqlalchemy as sa

from guest_backup.engines import DumpRefused, EngineSettings
from guest_backup.engines.sqlite import SQLiteEngine
from tests.helpers import create_pg_database, drop_pg_database, make_backup
from tests.test_pgscreen import forge_signed


def erasure_blockers(conn) -> list[str]:
    from guest_backup.ops.finishing import erasure_blockers as found

    return found(conn)

PREFIX = "fix_screen"


@pytest.fixture(scope="session")
def pg_database(pg_server):
    """This module's PostgreSQL database (named for the review)."""
    url = create_pg_database(pg_server, PREFIX)
    yield url
    drop_pg_database(pg_server, url)


def _scalar(url: str, query: str):
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(query)).scalar()
    finally:
        engine.dispose()


def _add_guest(app, number: str) -> int:
    from guest_registration.extensions import db
    from guest_registration.models import Guest, Registration

    with app.app_context():
        reg = db.session.execute(sa.select(Registration).limit(1)).scalar_one()
        guest = Guest(registration_id=reg.id, first_name="Later", last_name="Person",
                      age_category="adult", document_type="passport", document_number=number,
                      gdpr_consent=True)
        db.session.add(guest)
        db.session.commit()
        return guest.id


def _restore(app, runner, archive):
    return runner.invoke(args=["restore", str(archive), "--database-url",
                               app.config["DATABASE_URL"], "--replace", "--uploads",
                               app.config["UPLOAD_FOLDER"], "--yes"])


# ------------------------------------------------------------ SQLite: no view

def _trip_as_view(dump: bytes) -> bytes:
    """The review's archive: ``trip`` renamed, a view ``trip`` reading ``guest``."""
    text = dump.decode()
    for old, new in (('CREATE TABLE trip ', 'CREATE TABLE trip_real '),
                     ('CREATE TABLE "trip" ', 'CREATE TABLE "trip_real" '),
                     ('INSERT INTO "trip" VALUES', 'INSERT INTO "trip_real" VALUES'),
                     ("REFERENCES trip (id)", "REFERENCES trip_real (id)"),
                     ('ON trip (', 'ON trip_real ('), ('ON "trip" (', 'ON "trip_real" (')):
        text = text.replace(old, new)
    view = ("CREATE VIEW \"trip\" AS SELECT id, title || ' ' || COALESCE((SELECT "
            "group_concat(first_name || ' ' || last_name || ' ' || document_number, '; ') "
            "FROM guest), '') AS title, start_date, end_date, max_guests, created_at "
            "FROM trip_real;\n")
    return text.replace("COMMIT;", view + "COMMIT;").encode()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_view_in_place_of_an_app_table_is_refused(app, runner, client, backend, tmp_path):
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    url = app.config["DATABASE_URL"]
    archive = make_backup(runner)
    forged = forge_signed(app, archive, tmp_path / "forged" / archive.name, _trip_as_view)
    restored = _restore(app, runner, forged)
    assert restored.exit_code != 0, restored.output
    assert "CREATE VIEW" in restored.output and "nothing was restored" in restored.output
    assert _scalar(url, "SELECT type FROM sqlite_master WHERE name = 'trip'") == "table"
    _add_guest(app, "LEAK4242")
    assert "LEAK4242" not in client.get("/").get_data(as_text=True)


class _RenamingUpgrade:
    """A finisher that leaves a view where ``trip`` was: a route past the screen
    (an upgrade, a rename) that the check after the load still catches."""

    def apply(self, connection) -> None:
        connection.exec_driver_sql("ALTER TABLE trip RENAME TO trip_real")
        connection.exec_driver_sql("CREATE VIEW trip AS SELECT id, (SELECT group_concat("
                                   "document_number) FROM guest) AS title FROM trip_real")


def test_a_view_left_by_the_loads_upgrade_is_refused(tmp_path):
    target = tmp_path / "app.db"
    url = f"sqlite:///{target}"
    dump = (b"BEGIN TRANSACTION;\nCREATE TABLE trip (id INTEGER PRIMARY KEY, title TEXT);\n"
            b"CREATE TABLE guest (id INTEGER PRIMARY KEY, document_number TEXT);\n"
            b"INSERT INTO \"guest\" VALUES(1,'P123');\nCOMMIT;\n")
    with pytest.raises(DumpRefused, match="leaves a view in the database"):
        SQLiteEngine().restore(EngineSettings(url), url, io.BytesIO(dump), replace=True,
                               finish=_RenamingUpgrade())
    assert not target.exists()


def test_the_screen_refuses_create_view():
    from guest_backup.engines.sqlitescreen import SCHEMA_OBJECTS, SQLiteDumpScreen

    with pytest.raises(DumpRefused, match="CREATE VIEW"):
        SQLiteDumpScreen().check('CREATE VIEW "trip" AS SELECT 1;')
    assert "view" not in SCHEMA_OBJECTS


@pytest.mark.parametrize("backend", ["sqlite"])
def test_every_table_of_the_models_is_a_table_after_a_restore(app, runner, backend):
    from guest_registration.extensions import db

    assert runner.invoke(args=["demo-data"]).exit_code == 0
    restored = _restore(app, runner, make_backup(runner))
    assert restored.exit_code == 0, restored.output
    engine = sa.create_engine(app.config["DATABASE_URL"])
    with engine.connect() as conn:
        kinds = dict(conn.execute(sa.text("SELECT name, type FROM sqlite_master")).all())
    engine.dispose()
    assert {name: kinds.get(name) for name in db.metadata.tables} == {
        name: "table" for name in db.metadata.tables}


# ------------------------------------- the tables an erasure writes: nothing of their own

def _plant(backend: str, constraint: str):
    """A dump change adding ``constraint`` (``check`` or ``unique``) to ``guest``."""
    def change(dump: bytes) -> bytes:
        text = dump.decode()
        if backend == "postgresql":
            anchor = "--\n-- PostgreSQL database dump complete"
            extra = (f"ALTER TABLE ONLY public.guest\n    ADD CONSTRAINT ck_guest_keep CHECK "
                     f"((({constraint}) OR ((first_name)::text <> '[erased]'::text)));\n\n"
                     if not constraint.startswith("UNIQUE") else
                     "CREATE UNIQUE INDEX ux_guest_keep ON public.guest USING btree "
                     f"(document_number) {constraint[len('UNIQUE '):]};\n\n")
            return text.replace(anchor, extra + anchor, 1).encode()
        if constraint.startswith("UNIQUE"):
            return text.replace("COMMIT;", "CREATE UNIQUE INDEX ux_guest_keep ON guest "
                                f"(document_number) {constraint[len('UNIQUE '):]};\nCOMMIT;"
                                ).encode()
        start = text.index("CREATE TABLE guest") if "CREATE TABLE guest" in text else \
            text.index('CREATE TABLE "guest"')
        end = text.index(");", start)
        return (text[:end] + f", CONSTRAINT ck_guest_keep CHECK ({constraint} OR "
                f"first_name <> '[erased]')\n" + text[end:]).encode()
    return change


@pytest.mark.parametrize("target", ["new-guest", "existing-guest", "partial-unique",
                                    "new-guest-ledger"])
def test_a_schema_that_refuses_some_erasures_is_not_restored(app, runner, backend, tmp_path,
                                                             target):
    """The review's archives: a CHECK that lets every guest the archive holds (or
    all but one) be erased and no guest registered after the restore, or a unique
    index for later guests only. The restore is refused, names it, changes
    nothing; the guests registered since can still be erased."""
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    url = app.config["DATABASE_URL"]
    top = _scalar(url, "SELECT max(id) FROM guest")
    count = _scalar(url, "SELECT count(*) FROM guest")
    archive = make_backup(runner)
    if target.endswith("-ledger"):  # PostgreSQL: checked on psql's session, after the re-apply
        first = _scalar(url, "SELECT min(id) FROM guest")
        assert runner.invoke(args=["erase", "--guest", str(first), "--yes"]).exit_code == 0
    constraint = {"new-guest": f"id <= {top}", "existing-guest": f"id <> {top}",
                  "partial-unique": f"UNIQUE WHERE id > {top}",
                  "new-guest-ledger": f"id <= {top}"}[target]
    forged = forge_signed(app, archive, tmp_path / "forged" / archive.name,
                          _plant(backend, constraint))
    restored = _restore(app, runner, forged)
    assert restored.exit_code != 0, restored.output
    named = ("unique index ux_guest_keep on guest" if target == "partial-unique"
             else "CHECK constraint ck_guest_keep on guest")
    assert f"the archive's schema adds {named}, which could refuse a later erasure" \
        in restored.output, restored.output
    assert "nothing was restored" in restored.output
    assert _scalar(url, "SELECT count(*) FROM guest") == count
    new_id = _add_guest(app, "P9999")
    erased = runner.invoke(args=["erase", "--guest", str(new_id), "--yes"])
    assert erased.exit_code == 0, erased.output


def test_what_could_refuse_some_erasures_is_found_on_sqlite():
    """Each of what the check looks for on SQLite (the unit: no archive needed)."""
    engine = sa.create_engine("sqlite://")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE registration (id INTEGER PRIMARY KEY, "
                             "email TEXT NOT NULL)")
        conn.exec_driver_sql("CREATE TABLE guest (id INTEGER NOT NULL, registration_id INTEGER "
                             "REFERENCES registration (id), first_name TEXT, \"check\" TEXT "
                             "DEFAULT 'CHECK (', last_name TEXT, document_number TEXT, "
                             "document_photo TEXT, -- CHECK in a comment\n"
                             "CONSTRAINT pk_guest PRIMARY KEY (id))")
        conn.exec_driver_sql("CREATE INDEX ix_guest_name ON guest (first_name)")
        assert erasure_blockers(conn) == []  # a name, a text, a comment, a plain index
        conn.exec_driver_sql("CREATE INDEX ix_expr ON guest (json(first_name))")
        conn.exec_driver_sql("CREATE INDEX ix_part ON guest (first_name) WHERE id > 3")
        conn.exec_driver_sql("CREATE TABLE pairs (a INTEGER, b TEXT, PRIMARY KEY (a, b))")
        conn.exec_driver_sql("ALTER TABLE registration RENAME TO registration_old")
        conn.exec_driver_sql("CREATE TABLE registration (id INTEGER, email TEXT, g INTEGER AS "
                             "(length(email)) STORED, UNIQUE (email), FOREIGN KEY (id, email) "
                             "REFERENCES pairs (a, b), PRIMARY KEY (id, email))")
        found = erasure_blockers(conn)
    engine.dispose()
    assert sorted(found) == sorted([
        "index on an expression or with a condition ix_expr on guest",
        "index on an expression or with a condition ix_part on guest",
        "a primary key beyond id on registration", "generated column g on registration",
        "unique index sqlite_autoindex_registration_1 on registration",
        "foreign key (email) on registration"])


def test_what_could_refuse_some_erasures_is_found_on_postgresql(pg_server):
    """Each of what the check looks for on PostgreSQL, some of which no dump the
    screen passes can hold (a policy, a rule): the check reads the catalog."""
    url = create_pg_database(pg_server, PREFIX)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "CREATE TABLE registration (id serial PRIMARY KEY, email text NOT NULL);"
                "CREATE TABLE guest (id serial PRIMARY KEY, registration_id int REFERENCES "
                "registration (id), first_name text, last_name text, document_number text, "
                "document_photo text); CREATE INDEX ix_guest_name ON guest (first_name);")
            assert erasure_blockers(conn) == []
            conn.exec_driver_sql(
                "CREATE TABLE pairs (a int, b text, UNIQUE (a, b));"
                "ALTER TABLE guest ADD CONSTRAINT ck_keep CHECK (last_name <> '') NOT VALID;"
                "CREATE UNIQUE INDEX ux_doc ON guest (document_number) WHERE id > 3;"
                "CREATE INDEX ix_expr ON guest ((1 / (length(last_name) - 5)));"
                "ALTER TABLE guest ADD CONSTRAINT fk_pair FOREIGN KEY (id, first_name) "
                "REFERENCES pairs (a, b);"
                "ALTER TABLE guest ADD COLUMN g int GENERATED ALWAYS AS (length(first_name)) "
                "STORED;"
                "ALTER TABLE registration ENABLE ROW LEVEL SECURITY;"
                "CREATE POLICY p_reg ON registration USING (true);"
                "CREATE RULE r_reg AS ON UPDATE TO registration DO ALSO SELECT 1;"
                "ALTER TABLE registration ADD CONSTRAINT ex_mail EXCLUDE USING btree "
                "(email WITH =);")
            found = erasure_blockers(conn)
    finally:
        engine.dispose()
        drop_pg_database(pg_server, url)
    assert sorted(found) == sorted([
        "CHECK constraint ck_keep on guest", "unique index ux_doc on guest",
        "index on an expression or with a condition ix_expr on guest",
        "foreign key fk_pair on guest", "generated column g on guest",
        "row-level security registration on registration",
        "row-level security policy p_reg on registration", "rule r_reg on registration",
        "exclusion constraint ex_mail on registration"])


def test_the_apps_own_schema_has_nothing_that_refuses_an_erasure(app, backend):
    """What the check refuses, the app's own database (made by its migrations) holds
    none of, on either backend."""
    from guest_registration.extensions import db

    with app.app_context(), db.engine.connect() as conn:
        assert erasure_blockers(conn) == []


def test_the_host_models_declare_no_constraint_on_the_erasures_tables():
    """The check refuses every CHECK and unique constraint or index on ``guest``
    and ``registration`` because the host's models declare none. When a model
    gains one, this fails: the check (``ops/finishing.py``) must then allow
    exactly that one, or every archive of the app would be refused."""
    from guest_backup.ops.erasure_sql import ERASED_COLUMNS
    from guest_registration.models import Guest, Registration

    tables = {t.name: t for t in (Guest.__table__, Registration.__table__)}
    assert set(tables) == set(ERASED_COLUMNS)
    for name, table in tables.items():
        kinds = {type(c).__name__ for c in table.constraints}
        assert kinds <= {"PrimaryKeyConstraint", "ForeignKeyConstraint"}, (name, kinds)
        assert [c.name for c in table.primary_key.columns] == ["id"]
        assert not any(c.unique for c in table.columns), name
        assert not any(c.computed is not None for c in table.columns), name
        assert all(not i.unique and all(isinstance(e, sa.Column) for e in i.expressions)
                   and not i.dialect_options["postgresql"]["where"]
                   and not i.dialect_options["sqlite"]["where"] for i in table.indexes), name
        erased = set(ERASED_COLUMNS[name])
        assert not any(erased & {c.parent.name for c in fk.elements}
                       for fk in table.foreign_key_constraints), name



# -------------- what involves no written column is left; erasure_mark is written too

def _exec(url: str, *statements: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)
    engine.dispose()


@pytest.mark.parametrize("kind", ["plugin-column-check", "search-index"])
def test_the_apps_own_archive_with_a_harmless_guest_constraint_restores(app, runner, backend,
                                                                        kind):
    """The review's case: a plugin's column with a CHECK (docs/plugins.md) or a
    DBA's index on an expression of a column an erasure leaves alone: the app's
    own archive restores (it was refused)."""
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    _exec(app.config["DATABASE_URL"], {
        "plugin-column-check": "ALTER TABLE guest ADD COLUMN nickname VARCHAR(30) "
                               "CONSTRAINT ck_guest_nickname CHECK (nickname <> '')",
        "search-index": "CREATE INDEX ix_guest_doc_type ON guest (lower(document_type))"}[kind])
    restored = _restore(app, runner, make_backup(runner))
    assert restored.exit_code == 0, restored.output


def _mark_check(backend: str):
    def change(dump: bytes) -> bytes:
        text = dump.decode()
        if backend == "postgresql":
            anchor = "--\n-- PostgreSQL database dump complete"
            return text.replace(anchor, "ALTER TABLE ONLY public.erasure_mark\n    ADD "
                                "CONSTRAINT ck_mark CHECK ((seq < 2));\n\n" + anchor, 1).encode()
        start = text.index("CREATE TABLE erasure_mark") if "CREATE TABLE erasure_mark" in \
            text else text.index('CREATE TABLE "erasure_mark"')
        end = text.index(");", start)
        return (text[:end] + ", CONSTRAINT ck_mark CHECK (seq < 2)\n" + text[end:]).encode()
    return change


def test_a_check_on_erasure_mark_is_not_restored(app, runner, backend, tmp_path):
    """The review's archive: ``CHECK (seq < 2)`` on erasure_mark, which an erasure
    writes (and may insert into) in its own transaction: the second erasure after
    the restore failed. Now the restore is refused."""
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    archive = make_backup(runner)
    forged = forge_signed(app, archive, tmp_path / "forged" / archive.name,
                          _mark_check(backend))
    restored = _restore(app, runner, forged)
    assert restored.exit_code != 0, restored.output
    assert "the archive's schema adds CHECK constraint ck_mark on erasure_mark, which could " \
        "refuse a later erasure" in restored.output, restored.output
    assert "nothing was restored" in restored.output


_LEFT = ["ALTER TABLE guest ADD COLUMN nickname VARCHAR(30) CONSTRAINT ck_nick CHECK "
         "(nickname <> '')", "CREATE INDEX ix_doc_type ON guest (lower(document_type))",
         "CREATE INDEX ix_first ON guest (first_name)", "CREATE UNIQUE INDEX ux_pair ON guest "
         "(registration_id, id)", "CREATE INDEX ix_mark ON erasure_mark (seq)"]
_REFUSED = {  # statement: what is named (PostgreSQL; SQLite where it differs)
    "CREATE INDEX ix_last ON guest (lower(last_name))":
        "index on an expression or with a condition ix_last on guest",
    "ALTER TABLE guest ADD CONSTRAINT ck_time CHECK (id < 100 OR now() < '2027-01-01')":
        "CHECK constraint ck_time on guest",
    "ALTER TABLE guest ADD CONSTRAINT ck_day CHECK (id < 100 OR CURRENT_DATE < '2027-01-01')":
        "CHECK constraint ck_day on guest",
    "ALTER TABLE erasure_mark ADD CONSTRAINT ck_mark CHECK (seq < 2)":
        "CHECK constraint ck_mark on erasure_mark",
    "ALTER TABLE erasure_mark ADD COLUMN extra int NOT NULL DEFAULT 1":
        "column extra on erasure_mark",
    "ALTER TABLE guest ALTER document_photo SET NOT NULL":
        "NOT NULL column document_photo on guest",
    "ALTER TABLE guest ALTER first_name TYPE varchar(5)":
        "column (character varying(5)) first_name on guest",
    "CREATE DOMAIN kept AS text CHECK (VALUE <> '[erased]'); ALTER TABLE guest ALTER "
    "last_name TYPE kept": "column (kept) last_name on guest"}


def test_only_what_involves_a_written_column_is_refused_on_postgresql(app, pg_server):
    """What sees the same values before and after an erasure is left (a plugin's
    CHECK, indexes on other columns); what involves a written column, a CHECK
    reading the clock, a written column's type or NOT NULL, erasure_mark's CHECK:
    refused even with no row for the probe to try."""
    url = create_pg_database(pg_server, PREFIX)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "CREATE TABLE registration (id serial PRIMARY KEY, email varchar(255) NOT NULL);"
                "CREATE TABLE guest (id serial PRIMARY KEY, registration_id int, first_name "
                "varchar(100) NOT NULL, last_name varchar(100) NOT NULL, document_type text, "
                "document_number varchar(64) NOT NULL, document_photo varchar(255));"
                "CREATE TABLE erasure_mark (id int PRIMARY KEY, seq bigint NOT NULL, marked_at "
                "timestamp NOT NULL);" + ";".join(_LEFT))
            assert erasure_blockers(conn) == []
        for statement, named in _REFUSED.items():
            with engine.connect() as conn, conn.begin() as trans:
                conn.exec_driver_sql(statement)
                assert erasure_blockers(conn) == [named], statement
                trans.rollback()
    finally:
        engine.dispose()
        drop_pg_database(pg_server, url)


def test_only_what_involves_a_written_column_is_refused_on_sqlite():
    """SQLite's side: names in a CHECK or index found by its tokens (quoted too)."""
    tables = ("CREATE TABLE registration (id INTEGER PRIMARY KEY, email VARCHAR(255) NOT NULL);"
              "CREATE TABLE erasure_mark (id INTEGER NOT NULL, seq BIGINT NOT NULL, marked_at "
              "DATETIME NOT NULL, CONSTRAINT pk_erasure_mark PRIMARY KEY (id));"
              "CREATE TABLE guest (id INTEGER NOT NULL, registration_id INTEGER, first_name "
              "VARCHAR(100) NOT NULL, last_name VARCHAR(100) NOT NULL, document_type TEXT, "
              "document_number VARCHAR(64) NOT NULL, document_photo VARCHAR(255){}, "
              "PRIMARY KEY (id))")
    refused = {'CONSTRAINT ck_q CHECK ("First_Name" <> \'\')': "CHECK constraint ck_q on guest",
               "CONSTRAINT ck_b CHECK ([last_name] <> '')": "CHECK constraint ck_b on guest",
               "CONSTRAINT ck_r CHECK (id < 100 OR random() > -1)":
                   "CHECK constraint ck_r on guest",
               "CONSTRAINT ck_t CHECK (id < 100 OR CURRENT_TIMESTAMP < '2027')":
                   "CHECK constraint ck_t on guest",
               "g INT AS (length(first_name)) STORED": "generated column g on guest"}
    for extra, named in [("", None), (", g INT AS (id * 2) STORED", None)] + [
            (", " + k, v) for k, v in refused.items()]:
        engine = sa.create_engine("sqlite://")
        with engine.begin() as conn:
            for statement in tables.format(extra).split(";") + [
                    s.replace("ALTER TABLE guest ADD COLUMN nickname", "ALTER TABLE guest ADD "
                              "nickname") for s in _LEFT]:
                conn.exec_driver_sql(statement)
            assert erasure_blockers(conn) == ([named] if named else []), extra
        engine.dispose()
    engine = sa.create_engine("sqlite://")
    with engine.begin() as conn:
        for statement in tables.replace("document_photo VARCHAR(255)", "document_photo TEXT NOT "
                                        "NULL").format("").split(";"):
            conn.exec_driver_sql(statement)
        conn.exec_driver_sql("CREATE INDEX ix_last ON guest (lower(\"last_name\"))")
        assert erasure_blockers(conn) == ["NOT NULL column document_photo on guest",
                                          "index on an expression or with a condition ix_last "
                                          "on guest"]
    engine.dispose()
