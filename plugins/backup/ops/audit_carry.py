"""The target's audit trail carried across a whole restore (a finisher of
:mod:`guest_backup.ops.finishing`): every entry of the database being replaced is
set aside first (streamed to a private file) and written back over the archive's
copy (an entry the archive holds as ``running`` gets its final state; an entry
written after the archive was taken comes back with its id), and the target's
entries are taken again at the last moment (what they gained and what changed
while the dump loaded), so that a restore loses nothing of the audit."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Iterator

BATCH = 500
AUDIT_TABLE = "audit_log"
#: PostgreSQL: the target's audit table as it was just before the old schema went
CARRIED = "gr_carried_audit"


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
    """The target's audit entries, set aside in ``path`` (JSON lines, 0600; None on
    PostgreSQL, which carries its own copy: :meth:`sql_before`)."""

    path: Path | None
    columns: list[str]
    #: each column's reflected type (how its values are written as SQL literals)
    types: dict = field(default_factory=dict)
    count: int = 0
    #: the highest id set aside
    last_id: int = 0

    @classmethod
    def set_aside(cls, target_url: str, folder: str | os.PathLike | None = None):
        """Stream the target's audit entries to a private file; None when the target
        has no audit table (an empty or foreign database).

        What is written meanwhile (a backup's entry while the dump loads) is taken
        too, at the last moment: PostgreSQL copies the table on psql's transaction,
        under its lock, before the old schema goes (:meth:`sql_before`), and carries
        that copy (:meth:`sql`); SQLite takes them all again from the copy of the
        target made under the swap's write lock (:meth:`before_swap`).
        Before, they were lost, and the restore's own entry took the id of a
        backup's, which that backup's end then overwrote."""
        from sqlalchemy import MetaData, Table, create_engine, func, inspect, select

        engine = create_engine(target_url)
        try:
            with engine.connect() as conn:
                if AUDIT_TABLE not in inspect(conn).get_table_names():
                    return None
                audit = Table(AUDIT_TABLE, MetaData(), autoload_with=conn)
                if conn.dialect.name == "postgresql":  # the copy is made on psql's transaction
                    return cls(None, [c.name for c in audit.columns], count=conn.execute(
                        select(func.count()).select_from(audit)).scalar_one())
                fd, name = tempfile.mkstemp(prefix="gr-audit-", suffix=".jsonl", dir=folder)
                carry = cls(Path(name), [c.name for c in audit.columns],
                            {c.name: c.type for c in audit.columns})
                with os.fdopen(fd, "w") as out:
                    rows = conn.execution_options(stream_results=True).execute(
                        select(audit).order_by(audit.c.id))
                    for row in rows.mappings():
                        out.write(json.dumps({k: _jsonable(v) for k, v in row.items()}) + "\n")
                        carry.count += 1
                        carry.last_id = max(carry.last_id, int(row["id"] or 0))
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

    def _statement(self, rows: list[dict]):
        """SQLite: the rows over the loaded table's, theirs winning at the same id."""
        from sqlalchemy import column, table
        from sqlalchemy.dialects.sqlite import insert

        audit = table(AUDIT_TABLE, *[column(c, self.types.get(c)) for c in self.columns])
        statement = insert(audit).values([{c: r.get(c) for c in self.columns} for r in rows])
        return statement.on_conflict_do_update(
            index_elements=["id"],
            set_={c: statement.excluded[c] for c in self.columns if c != "id"})

    def sql_before(self, url: str) -> Iterator[str]:
        """The target's audit table copied on psql's transaction, locked first (no
        entry commits after the copy; one waiting goes into the new table)."""
        yield (f"LOCK TABLE public.{AUDIT_TABLE} IN EXCLUSIVE MODE;\n"
               f"CREATE TEMPORARY TABLE {CARRIED} ON COMMIT DROP AS "
               f"SELECT * FROM public.{AUDIT_TABLE};\n")

    def sql(self, url: str) -> Iterator[str]:
        """The copy :meth:`sql_before` made, into the loaded table (its entries win
        over the archive's at the same id), and the id sequence past them all."""
        names = ", ".join(f'"{c}"' for c in self.columns)
        update = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in self.columns if c != "id")
        yield (f"INSERT INTO public.{AUDIT_TABLE} ({names}) SELECT {names} FROM pg_temp.{CARRIED} "
               f"ON CONFLICT (id) DO UPDATE SET {update};\n")
        yield (f"SELECT pg_catalog.setval(pg_catalog.pg_get_serial_sequence("
               f"'public.{AUDIT_TABLE}', 'id'), (SELECT COALESCE(max(id), 1) "
               f"FROM public.{AUDIT_TABLE}));\n")

    def before_swap(self, src, kept: Path) -> None:
        """SQLite: every entry of the target as it is at the swap (``kept``, its copy
        made under the swap's write lock: ``engines/sqlite_swap.py``) over the loaded
        copy ``src``'s (an sqlite3 connection), theirs winning at the same id: those
        written since :meth:`set_aside` and those changed since. Before, only ids above
        :attr:`last_id` were taken, and an entry that finished while the dump loaded
        (a backup's, an export's) came back as ``running``, its outcome lost."""
        import sqlite3

        with contextlib.closing(sqlite3.connect(kept)) as old:
            have = {r[1] for r in old.execute(f'PRAGMA table_info("{AUDIT_TABLE}")')}
            columns = [c for c in self.columns if c in have]
            if "id" not in columns:
                return
            names = ", ".join(f'"{c}"' for c in columns)
            marks = ", ".join("?" * len(columns))
            count = old.execute(f'SELECT count(*) FROM "{AUDIT_TABLE}"').fetchone()[0]
            rows = old.execute(f'SELECT {names} FROM "{AUDIT_TABLE}" ORDER BY id')
            src.execute("BEGIN")
            try:  # streamed: the trail may be long
                src.executemany(f'INSERT OR REPLACE INTO "{AUDIT_TABLE}" ({names}) '
                                f'VALUES ({marks})', rows)
                src.execute("COMMIT")
            except BaseException:
                if src.in_transaction:
                    src.execute("ROLLBACK")
                raise
        self.count = count

    def apply(self, connection) -> None:
        """SQLite: the entries set aside, into the loaded copy."""
        for rows in self._batches():
            connection.execute(self._statement(rows))

    def discard(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
