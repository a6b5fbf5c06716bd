"""What a restore does to the loaded database before it commits (PostgreSQL: SQL
appended to the dump inside psql's single transaction; SQLite: on the loaded copy
before it is swapped in), so that all of it happens or none of it:

- :class:`~guest_backup.ops.schema.SchemaUpgrade`: the archive's schema brought
  to the code's revisions;
- :class:`~guest_backup.ops.audit_carry.AuditCarry`: the target's audit trail
  carried across the restore, so that a restore loses nothing of the audit;
- the erasure ledger re-applied (``guest_backup.ops.erasure``), and the tables
  an erasure writes checked for what could refuse one later (:func:`check_erasable`).

A finisher has ``sql(url) -> Iterator[str]`` and ``apply(connection)`` (and may
have ``sql_before(url)``, run on psql's transaction before the old schema goes,
and ``before_swap(src, kept)`` for SQLite); one that
needs Python on PostgreSQL's loaded rows before the COMMIT also has
``in_session`` (true when it has work) and ``run(session)``, which gets psql's
open transaction (:mod:`guest_backup.engines.psqlsession`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from guest_backup.archive.manifest import shown
from guest_backup.ops import schema as schema_ops
from guest_backup.ops.audit_carry import AuditCarry

__all__ = ["AuditCarry", "CheckedUpgrade", "ErasureReapply", "Finishers", "PlannedUpgrade", "erasures_for"]


@dataclass
class Finishers:
    """Several finishers, run in order (on PostgreSQL, psql's loader takes them one
    by one from ``parts``, each step marked: ``guest_backup.engines.pgload``)."""

    parts: list = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.parts)

    def before_swap(self, src, kept: Path) -> None:
        """SQLite: what the parts take from ``kept``, the target's copy made just
        before the swap, into the loaded copy ``src``."""
        for part in self.parts:
            getattr(part, "before_swap", lambda src, kept: None)(src, kept)

    def apply(self, connection) -> None:
        for part in self.parts:
            part.apply(connection)


@dataclass
class PlannedUpgrade:
    """The schema upgrade (:func:`guest_backup.ops.schema.plan`), planned once the
    archive's signed manifest is known: a one-pass restore of an encrypted archive
    reads the manifest after the dump, before it commits. A revision the code does
    not know raises there, and nothing commits."""

    migrations: object
    upgrade: object = None

    def settle(self, manifest: dict) -> None:
        from guest_backup.ops.schema import plan

        if self.upgrade is None:
            self.upgrade = plan(self.migrations, manifest)

    @property
    def needed(self) -> bool:
        return self.upgrade is not None and self.upgrade.needed

    def describe(self) -> str:
        return self.upgrade.describe()

    def sql(self, url: str) -> Iterator[str]:
        if self.needed:
            yield self.upgrade.sql(url)

    def apply(self, connection) -> None:
        if self.needed:
            self.upgrade.apply(connection)


@dataclass
class ErasureReapply:
    """The erasure ledger re-applied to the loaded database before it commits
    (PostgreSQL: on psql's open transaction; SQLite: on the loaded copy before it
    is swapped in); a restore never ends with a guest present that the ledger says
    was erased, and nobody sees one while it runs."""

    entries: list
    ledger: object
    applied: int = 0
    #: a restore's load: the erasure's tables checked too (:func:`check_erasable`)
    check_schema: bool = False
    #: the step psql's loader names when this one's SQL fails (its probe, before run)
    doing = "re-applying the erasure ledger"

    def sql(self, url: str) -> Iterator[str]:
        """PostgreSQL, before :meth:`run`: the archive's erasure mark dropped (its
        word is worth nothing), an erasure tried and undone on the first rows and
        every row the ledger names, the erasure's tables checked (:func:`erasable_
        schema_sql`; with ledger lines, in :meth:`run`): a refusal stops the load."""
        from guest_backup.ops.erasure_mark import FORGET_MARK_SQL
        from guest_backup.ops.erasure_sql import probe_erasure_sql

        yield FORGET_MARK_SQL
        kinds = [(e.get("kind"), e) for e in self.entries if isinstance(e, dict)]
        yield probe_erasure_sql(
            [i for kind, e in kinds if kind == "guest" for i in e.get("guest_ids", ())],
            [i for kind, e in kinds if kind != "guest" for i in e.get("registration_ids", ())])
        if self.check_schema and not self.in_session:
            yield erasable_schema_sql()

    @property
    def in_session(self) -> bool:
        return bool(self.entries)

    def run(self, session) -> None:
        """PostgreSQL: the ledger re-applied (matching by keyed hash in Python) on
        the load's own transaction, which psql commits only after this; raising
        here, or psql stopping at a statement of it, commits nothing."""
        from guest_backup.ops.erasure_mark import last_seq, mark_sql

        session.doing = "re-applying the erasure ledger"
        self._reapply(session, "; nothing was restored")
        session.execute(mark_sql(last_seq(self.entries)))
        if self.check_schema:
            session.doing = "checking the archive's schema"
            _refuse(session.execute(_blockers_select()).scalars(), "; nothing was restored")

    def apply(self, connection) -> None:
        """SQLite (and a recovered cluster): the same on ``connection``."""
        from guest_backup.ops.erasure_mark import clear_mark, last_seq, set_mark
        from guest_backup.ops.erasure_sql import probe_erasure

        probe_erasure(connection)  # SQLite: before the loaded copy is swapped in
        if self.entries:
            self._reapply(connection)
            set_mark(connection, last_seq(self.entries))
        else:
            clear_mark(connection)
        if self.check_schema:
            check_erasable(connection)

    def _reapply(self, connection, outcome: str = "") -> None:
        from guest_backup.errors import BackupError
        from guest_backup.ops.reapply import reapply_checked

        self.applied, left = reapply_checked(connection, self.entries, self.ledger)
        if left:
            raise BackupError(f"erased records are still present after re-applying the "
                              f"ledger ({', '.join(str(x) for x in left[:5])}){outcome}")


#: PostgreSQL: what on the tables an erasure writes (or inserts into: erasure_mark)
#: could refuse it for some rows only, unseen by the probe (docs/security.md); what
#: involves no written column (w.nums) sees the same values after, but a CHECK's time.
_BLOCKERS_PG = r"""SELECT k.kind || ' ' || pg_catalog.quote_ident(k.name) || ' on ' ||
 t.relname AS what FROM pg_catalog.pg_class t JOIN pg_catalog.pg_namespace n
 ON n.oid = t.relnamespace JOIN (VALUES %s) AS e(rel, cols, width, nulled, keep) ON e.rel = t.relname
CROSS JOIN LATERAL (SELECT coalesce(array_agg(a.attnum), '{}') AS nums FROM
 pg_catalog.pg_attribute a WHERE a.attrelid = t.oid AND a.attnum > 0
 AND (e.cols IS NULL OR a.attname::text = ANY (e.cols))) AS w
CROSS JOIN LATERAL (
 SELECT CASE c.contype WHEN 'c' THEN 'CHECK constraint' WHEN 'u' THEN 'unique constraint'
  WHEN 'x' THEN 'exclusion constraint' WHEN 'p' THEN 'primary key' WHEN 'f' THEN 'foreign key'
  WHEN 't' THEN 'constraint trigger' ELSE 'constraint' END, c.conname
 FROM pg_catalog.pg_constraint c WHERE c.conrelid = t.oid AND c.contype <> 'n' AND NOT (
  c.contype = 'p' AND c.conkey = ARRAY(SELECT a.attnum FROM pg_catalog.pg_attribute a
   WHERE a.attrelid = t.oid AND a.attname = 'id')) AND (c.contype NOT IN ('c', 'u', 'x', 'p',
   'f') OR c.conkey && w.nums OR 0 = ANY (c.conkey) OR e.cols IS NULL
  OR c.conbin::text ~ '\{(SQLVALUEFUNCTION|COERCEVIAIO|NEXTVALUEEXPR) ' OR EXISTS (
   SELECT FROM regexp_matches(c.conbin::text, ':(funcid|opno) (\d+)', 'g') AS m
   LEFT JOIN pg_catalog.pg_operator o ON m[1] = 'opno' AND o.oid = m[2]::oid
   JOIN pg_catalog.pg_proc p ON p.oid = coalesce(o.oprcode::oid, m[2]::oid)
   WHERE p.provolatile <> 'i' OR p.pronamespace <> 'pg_catalog'::regnamespace))
 UNION ALL SELECT CASE WHEN i.indisunique THEN 'unique index' ELSE 'index on an expression or '
  'with a condition' END, x.relname FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class x
  ON x.oid = i.indexrelid WHERE i.indrelid = t.oid AND NOT i.indisprimary
  AND (i.indisunique OR i.indexprs IS NOT NULL OR i.indpred IS NOT NULL) AND (e.cols IS NULL
  OR i.indkey::int2[] && w.nums OR concat(i.indexprs, i.indpred) ~ '[:]varattno 0 '
  OR EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_class'::regclass
   AND d.objid = i.indexrelid AND d.refobjid = t.oid AND d.refobjsubid = ANY (w.nums)))
 UNION ALL SELECT 'row-level security policy', p.polname FROM pg_catalog.pg_policy p
  WHERE p.polrelid = t.oid
 UNION ALL SELECT 'row-level security', t.relname WHERE t.relrowsecurity OR t.relforcerowsecurity
 UNION ALL SELECT 'rule', r.rulename FROM pg_catalog.pg_rewrite r WHERE r.ev_class = t.oid
 UNION ALL SELECT 'trigger', g.tgname FROM pg_catalog.pg_trigger g
  WHERE g.tgrelid = t.oid AND NOT g.tgisinternal
 UNION ALL SELECT CASE WHEN a.attgenerated <> '' THEN 'generated column' WHEN a.attnotnull
  AND a.attname::text = ANY (e.nulled) THEN 'NOT NULL column' WHEN e.cols IS NULL AND NOT
  a.attname::text = ANY (e.keep) THEN 'column' ELSE 'column (' || format_type(a.atttypid,
  a.atttypmod) || ')' END, a.attname FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type y
  ON y.oid = a.atttypid WHERE a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped AND (
  (a.attgenerated <> '' AND (e.cols IS NULL OR EXISTS (SELECT FROM pg_catalog.pg_attrdef f
   JOIN pg_catalog.pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = f.oid
   WHERE f.adrelid = t.oid AND f.adnum = a.attnum AND d.refobjid = t.oid
   AND d.refobjsubid = ANY (w.nums))))
  OR (a.attnum = ANY (w.nums) AND (y.typtype = 'd' OR (a.attnotnull AND a.attname::text =
   ANY (e.nulled)) OR (e.cols IS NULL AND NOT a.attname::text = ANY (e.keep)) OR (e.cols IS NOT
   NULL AND (a.atttypid NOT IN (25, 1043) OR a.atttypmod BETWEEN 0 AND 3 + e.width)))))
 UNION ALL SELECT 'other kind of table (' || t.relkind::text || ')', t.relname
  WHERE t.relkind <> 'r'
) AS k(kind, name) WHERE n.nspname = 'public'"""
REFUSES_ERASURE = "which could refuse a later erasure"


def _blockers_pg() -> str:
    from guest_backup.ops.erasure_sql import written_columns_sql

    return _BLOCKERS_PG % written_columns_sql()


def erasable_schema_sql() -> str:
    """PostgreSQL text for the end of a load: what of :data:`_BLOCKERS_PG` it holds
    (``gr-schema-refused``, reported) and an error that stops psql before COMMIT."""
    query = _blockers_pg()
    return (f"COPY (SELECT 'gr-schema-refused the archive''s schema adds ' || q.what || "
            f"', {REFUSES_ERASURE}' FROM ({query}) AS q ORDER BY q.what LIMIT 1) TO STDOUT;\n"
            f"DO $gr$ BEGIN IF EXISTS ({query}) THEN RAISE EXCEPTION 'gr-erasure-refused: the "
            f"schema of the erasure''s tables'; END IF; END $gr$;\n")


def erasure_blockers(connection) -> list[str]:
    """What on the erasure's tables of ``connection``'s database could refuse an
    erasure of some rows only (:data:`_BLOCKERS_PG`; SQLite: :func:`_blockers_sqlite`)."""
    if connection.dialect.name == "sqlite":
        return _blockers_sqlite(connection)
    return list(connection.execute(_blockers_select()).scalars())


def _blockers_select():  # psql's session runs it as COPY
    import sqlalchemy as sa
    what = sa.column("what", sa.Text)
    return sa.select(what).select_from(sa.text(f"({_blockers_pg()}) AS q")).order_by(what)


def _blockers_sqlite(connection) -> list[str]:
    """:data:`_BLOCKERS_PG` on SQLite (:func:`~guest_backup.engines.sqlitescreen.
    update_blockers`), before the loaded copy is swapped in."""
    from guest_backup.engines.sqlitescreen import update_blockers
    from guest_backup.ops.erasure_sql import ERASED_COLUMNS, ERASED_TO_NULL, MARK_COLUMNS

    con = connection.connection.dbapi_connection
    return [found for table, columns in sorted(ERASED_COLUMNS.items())
            for found in update_blockers(con, table, columns, ERASED_TO_NULL)] + \
        update_blockers(con, "erasure_mark", (), only=MARK_COLUMNS)


def check_erasable(connection) -> None:
    """BackupError naming the first of :func:`erasure_blockers`: a restore that
    lets some guests be erased and not others never commits."""
    _refuse(erasure_blockers(connection))


def _refuse(found, outcome: str = "") -> None:
    from guest_backup.errors import BackupError

    for what in found:
        raise BackupError(f"the archive's schema adds {shown(what, 200)}, {REFUSES_ERASURE}"
                          f"{outcome}")


def erasures_for(ctx) -> ErasureReapply:
    """The ledger's erasures (every copy checked and merged: a broken copy stops the
    restore before it touches anything), ready to re-apply."""
    from guest_backup.ops.ledger import ErasureLedger
    from guest_backup.ops.ledger_copies import collect

    ledger = ErasureLedger.in_folder(ctx.instance_path)
    return ErasureReapply(collect(ledger, ctx.storages()), ledger, check_schema=True)


class CheckedUpgrade(PlannedUpgrade):
    """The planned upgrade, and what the loaded database must bear out before the
    commit (:mod:`guest_backup.ops.schema`): a database made before migrations is the
    first revision; ``alembic_version`` holds the code's heads, whatever the manifest said."""

    in_session = property(lambda self: self.upgrade is not None and self.upgrade.legacy)
    #: the step psql stopped in, named in the reason (``engines/pgload.py``)
    doing = property(lambda self: f"{'upgrading' if self.needed else 'checking'} the archive's "
                                  f"schema")

    def sql(self, url: str):
        if self.upgrade is not None:
            yield schema_ops.LOADED_COLUMNS_SQL if self.upgrade.legacy else ""
            yield from super().sql(url)
            yield schema_ops.heads_check_sql(self.upgrade)

    def run(self, session) -> None:  # PostgreSQL, legacy: on psql's open transaction
        schema_ops.check_session(self.upgrade, session)

    def apply(self, connection) -> None:  # SQLite: on the loaded copy
        if self.upgrade is not None:
            schema_ops.check_legacy(self.upgrade, connection)
            super().apply(connection)
            schema_ops.check_heads(self.upgrade, schema_ops.current_revisions(connection))
