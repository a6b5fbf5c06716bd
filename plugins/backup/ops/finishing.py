"""What a restore does to the loaded database before it commits (PostgreSQL: SQL
appended to the dump inside psql's single transaction; SQLite: on the loaded copy
before it is swapped in), so that all of it happens or none of it:

- :class:`~guest_backup.ops.schema.SchemaUpgrade`: the archive's schema brought
  to the code's revisions;
- :class:`~guest_backup.ops.audit_carry.AuditCarry`: the target's audit trail
  carried across the restore, so that a restore loses nothing of the audit;
- the erasure ledger re-applied (``guest_backup.ops.erasure``).

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
    #: the step psql's loader names when this one's SQL fails (its probe, before run)
    doing = "re-applying the erasure ledger"

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
