"""What a restore does to the loaded database before it commits (PostgreSQL: SQL
appended to the dump inside psql's single transaction; SQLite: on the loaded copy
before it is swapped in), so that all of it happens or none of it:

- :class:`~guest_backup.ops.schema.SchemaUpgrade`: the archive's schema brought
  to the code's revisions;
- :class:`AuditCarry`: the target's audit trail carried across the restore. Every
  entry of the database being replaced is set aside first (streamed to a private
  file) and written back over the archive's copy (an entry the archive holds as
  ``running`` gets its final state; an entry written after the archive was taken
  comes back with its id), so that a restore loses nothing of the audit;
- the erasure ledger re-applied (``guest_backup.ops.erasure``).

A finisher has ``sql(url) -> Iterator[str]`` and ``apply(connection)``; one that
needs Python on PostgreSQL's loaded rows before the COMMIT also has
``in_session`` (true when it has work) and ``run(session)``, which gets psql's
open transaction (:mod:`guest_backup.engines.psqlsession`).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Iterator

BATCH = 500
AUDIT_TABLE = "audit_log"


@dataclass
class Finishers:
    """Several finishers, run in order."""

    parts: list = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.parts)

    def sql(self, url: str) -> Iterator[str]:
        for part in self.parts:
            yield from part.sql(url)

    def apply(self, connection) -> None:
        for part in self.parts:
            part.apply(connection)

    @property
    def in_session(self) -> bool:
        return any(getattr(part, "in_session", False) for part in self.parts)

    def run(self, session) -> None:
        for part in self.parts:
            if getattr(part, "in_session", False):
                part.run(session)


def _jsonable(value):
    if isinstance(value, (datetime, date)):
        return {"__dt__": value.isoformat()}
    return value


def _from_json(value):
    if isinstance(value, dict) and "__dt__" in value:
        return datetime.fromisoformat(value["__dt__"])
    return value


@dataclass
class AuditCarry:
    """The target's audit entries, set aside in ``path`` (JSON lines, 0600)."""

    path: Path
    columns: list[str]
    #: each column's reflected type (how its values are written as SQL literals)
    types: dict = field(default_factory=dict)
    count: int = 0

    @classmethod
    def set_aside(cls, target_url: str, folder: str | os.PathLike | None = None):
        """Stream the target's audit entries to a private file; None when the target
        has no audit table (an empty or foreign database)."""
        from sqlalchemy import MetaData, Table, create_engine, inspect, select

        engine = create_engine(target_url)
        try:
            with engine.connect() as conn:
                if AUDIT_TABLE not in inspect(conn).get_table_names():
                    return None
                audit = Table(AUDIT_TABLE, MetaData(), autoload_with=conn)
                fd, name = tempfile.mkstemp(prefix="gr-audit-", suffix=".jsonl", dir=folder)
                carry = cls(Path(name), [c.name for c in audit.columns],
                            {c.name: c.type for c in audit.columns})
                with os.fdopen(fd, "w") as out:
                    rows = conn.execution_options(stream_results=True).execute(
                        select(audit).order_by(audit.c.id))
                    for row in rows.mappings():
                        out.write(json.dumps({k: _jsonable(v) for k, v in row.items()}) + "\n")
                        carry.count += 1
                return carry
        finally:
            engine.dispose()

    def _batches(self) -> Iterator[list[dict]]:
        batch: list[dict] = []
        with open(self.path) as lines:
            for line in lines:
                batch.append({k: _from_json(v) for k, v in json.loads(line).items()})
                if len(batch) >= BATCH:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def _statement(self, dialect: str, rows: list[dict]):
        from sqlalchemy import column, table

        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        audit = table(AUDIT_TABLE, *[column(c, self.types.get(c)) for c in self.columns])
        statement = insert(audit).values([{c: r.get(c) for c in self.columns} for r in rows])
        return statement.on_conflict_do_update(
            index_elements=["id"],
            set_={c: statement.excluded[c] for c in self.columns if c != "id"})

    def sql(self, url: str) -> Iterator[str]:
        from guest_backup.engines.psqlsession import psql_text

        for rows in self._batches():
            yield f"{psql_text(self._statement('postgresql', rows))};\n"
        yield (f"SELECT pg_catalog.setval(pg_catalog.pg_get_serial_sequence('{AUDIT_TABLE}', "
               f"'id'), (SELECT COALESCE(max(id), 1) FROM {AUDIT_TABLE}));\n")

    def apply(self, connection) -> None:
        for rows in self._batches():
            connection.execute(self._statement(connection.dialect.name, rows))

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


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

    def sql(self, url: str) -> Iterator[str]:
        """PostgreSQL, before :meth:`run`: the archive's erasure mark dropped (the
        archive's word on this ledger is worth nothing: with no ledger line, the
        database reads "not known"), and an erasure tried and undone
        (:func:`probe_erasure_sql`) on the first rows and on every row the ledger
        names: a schema that refuses one stops the load."""
        from guest_backup.ops.erasure_mark import FORGET_MARK_SQL
        from guest_backup.ops.erasure_sql import probe_erasure_sql

        yield FORGET_MARK_SQL
        kinds = [(e.get("kind"), e) for e in self.entries if isinstance(e, dict)]
        yield probe_erasure_sql(
            [i for kind, e in kinds if kind == "guest" for i in e.get("guest_ids", ())],
            [i for kind, e in kinds if kind != "guest" for i in e.get("registration_ids", ())])

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

    def apply(self, connection) -> None:
        """SQLite (and a recovered cluster): the same on ``connection``."""
        from guest_backup.ops.erasure_mark import clear_mark, last_seq, set_mark
        from guest_backup.ops.erasure_sql import probe_erasure

        probe_erasure(connection)  # SQLite: before the loaded copy is swapped in
        if not self.entries:
            clear_mark(connection)
            return
        self._reapply(connection)
        set_mark(connection, last_seq(self.entries))

    def _reapply(self, connection, outcome: str = "") -> None:
        from guest_backup.errors import BackupError
        from guest_backup.ops.reapply import reapply_checked

        self.applied, left = reapply_checked(connection, self.entries, self.ledger)
        if left:
            raise BackupError(f"erased records are still present after re-applying the "
                              f"ledger ({', '.join(str(x) for x in left[:5])}){outcome}")


def erasures_for(ctx) -> ErasureReapply:
    """The ledger's erasures (every copy checked and merged: a broken copy stops the
    restore before it touches anything), ready to re-apply."""
    from guest_backup.ops.ledger import ErasureLedger
    from guest_backup.ops.ledger_copies import collect

    ledger = ErasureLedger.in_folder(ctx.instance_path)
    return ErasureReapply(collect(ledger, ctx.storages()), ledger)
