"""The target's audit trail carried across a whole restore (a finisher of
:mod:`guest_backup.ops.finishing`): every entry of the database being replaced is
set aside first (streamed to a private file) and written back over the archive's
copy (an entry the archive holds as ``running`` gets its final state; an entry
written after the archive was taken comes back with its id), and the target's
entries are taken again at the last moment (what they gained and what changed
while the dump loaded), so that a restore loses nothing of the audit.

The loaded copy's columns decide what is carried (the archive may come from an
older version: putting the older code back restores the archive made before
an upgrade over the database the newer one changed): a column the copy lacks is
dropped from the carried entries, and when the copy requires a value they lack
(NOT NULL, no default), only the entries it already holds are brought up to
date; the others cannot be written, and are left out (a warning says how many)
rather than failing the restore."""

from __future__ import annotations

import contextlib
import json
import os
import logging
import tempfile
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

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
    #: the step psql stopped in, named in the reason (``engines/pgload.py``)
    doing = "carrying the replaced database's audit trail over"

    @classmethod
    def set_aside(cls, target_url: str, folder: str | os.PathLike | None = None, *,
                  after: int | None = None):
        """Stream the target's audit entries to a private file; None when the target
        has no audit table (an empty or foreign database). ``after``: only the
        entries past that id, streamed on PostgreSQL too (for a copy on another
        server: PITR's recovered cluster, :mod:`guest_backup.ops.pitr_recover`).

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
                if conn.dialect.name == "postgresql" and after is None:  # on psql's transaction
                    return cls(None, [c.name for c in audit.columns], count=conn.execute(
                        select(func.count()).select_from(audit)).scalar_one())
                fd, name = tempfile.mkstemp(prefix="gr-audit-", suffix=".jsonl", dir=folder)
                carry = cls(Path(name), [c.name for c in audit.columns],
                            {c.name: c.type for c in audit.columns})
                with os.fdopen(fd, "w") as out:
                    query = select(audit).order_by(audit.c.id)
                    rows = conn.execution_options(stream_results=True).execute(
                        query if after is None else query.where(audit.c.id > after))
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

    def _statement(self, columns: list[str], rows: list[dict], only_held: bool, dialect: str):
        """The rows over the loaded table's, theirs winning at the same id
        (``only_held``: only those at an id it holds, updated)."""
        from sqlalchemy import bindparam, column, table, update
        from sqlalchemy.dialects import postgresql, sqlite

        insert = (postgresql if dialect == "postgresql" else sqlite).insert

        audit = table(AUDIT_TABLE, *[column(c, self.types.get(c)) for c in columns])
        if only_held:
            shared = [c for c in columns if c != "id"]
            return update(audit).where(audit.c.id == bindparam("carried_id")).values(
                {c: bindparam(f"carried_{c}", type_=self.types.get(c)) for c in shared}), [
                {"carried_id": r.get("id"), **{f"carried_{c}": r.get(c) for c in shared}}
                for r in rows]
        statement = insert(audit).values([{c: r.get(c) for c in columns} for r in rows])
        set_ = {c: statement.excluded[c] for c in columns if c != "id"}
        return (statement.on_conflict_do_update(index_elements=["id"], set_=set_) if set_
                else statement.on_conflict_do_nothing(index_elements=["id"])), None

    def sql_before(self, url: str) -> Iterator[str]:
        """The target's audit table copied on psql's transaction, locked first (no
        entry commits after the copy; one waiting goes into the new table)."""
        yield (f"LOCK TABLE public.{AUDIT_TABLE} IN EXCLUSIVE MODE;\n"
               f"CREATE TEMPORARY TABLE {CARRIED} ON COMMIT DROP AS "
               f"SELECT * FROM public.{AUDIT_TABLE};\n")

    def sql(self, url: str) -> Iterator[str]:
        """The copy :meth:`sql_before` made, into the loaded table (its entries win
        over the archive's at the same id; :data:`_CARRY_SQL`), and the id sequence
        past them all."""
        yield _CARRY_SQL
        yield _SEQUENCE_PAST_SQL

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
            columns, only_held = _carried([c for c in self.columns if c in have],
                                          src.execute(f'PRAGMA table_info("{AUDIT_TABLE}")'))
            if "id" not in columns:
                return
            names = ", ".join(f'"{c}"' for c in columns)
            count = old.execute(f'SELECT count(*) FROM "{AUDIT_TABLE}"').fetchone()[0]
            rows = old.execute(f'SELECT {names} FROM "{AUDIT_TABLE}" ORDER BY id')
            if only_held:  # an UPDATE of the shared columns, the id last
                sets = ", ".join(f'"{c}" = ?' for c in columns[1:])
                statement, rows = f'UPDATE "{AUDIT_TABLE}" SET {sets} WHERE id = ?', (
                    (*row[1:], row[0]) for row in rows)
            else:
                statement = (f'INSERT OR REPLACE INTO "{AUDIT_TABLE}" ({names}) '
                             f'VALUES ({", ".join("?" * len(columns))})')
            src.execute("BEGIN")
            try:  # streamed: the trail may be long
                carried = src.executemany(statement, rows).rowcount
                src.execute("COMMIT")
            except BaseException:
                if src.in_transaction:
                    src.execute("ROLLBACK")
                raise
        self.count = _left_out(count, carried) if only_held else count

    def apply(self, connection) -> None:
        """The entries set aside, into the loaded copy (SQLite; PostgreSQL: a copy on
        another server, set aside with ``after``, its id sequence moved past them)."""
        dialect = connection.dialect.name
        columns, only_held = _carried(self.columns, _table_info(connection))
        if "id" not in columns:
            return
        carried = 0
        for rows in self._batches():
            statement, params = self._statement(columns, rows, only_held, dialect)
            carried += connection.execute(statement, params).rowcount
        if only_held:
            self.count = _left_out(self.count, carried)
        if dialect == "postgresql":
            connection.exec_driver_sql(_SEQUENCE_PAST_SQL)

    def discard(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _table_info(connection) -> list[tuple]:
    """The loaded audit table's columns as SQLite's ``PRAGMA table_info`` rows
    (cid, name, type, notnull, default, pk), on PostgreSQL from its catalog."""
    if connection.dialect.name == "sqlite":
        return connection.exec_driver_sql(f'PRAGMA table_info("{AUDIT_TABLE}")').all()
    from sqlalchemy import inspect

    seen = inspect(connection)
    keys = set(seen.get_pk_constraint(AUDIT_TABLE)["constrained_columns"])
    return [(i, c["name"], c["type"], not c["nullable"], c["default"] or c.get("identity"),
             c["name"] in keys) for i, c in enumerate(seen.get_columns(AUDIT_TABLE))]


def _carried(names: list[str], loaded) -> tuple[list[str], bool]:
    """Of the carried columns ``names``, those the loaded table has (``loaded``:
    its ``PRAGMA table_info`` rows), ``id`` first; and whether the loaded table
    requires a value they lack (NOT NULL, no default, not the key): then only the
    entries it holds can be carried, as updates (none without a column to update)."""
    loaded = list(loaded)
    have = {r[1] for r in loaded}
    columns = sorted((c for c in names if c in have), key=lambda c: c != "id")
    required = [r[1] for r in loaded if r[3] and r[4] is None and not r[5] and r[1] not in names]
    return (columns if columns[1:] or not required else []), bool(required)


def _left_out(count: int, carried: int) -> int:
    """How many entries were carried; a warning for those that could not be."""
    if count > carried:
        log.warning("%d audit entries of the replaced database were left out: the restored "
                    "%s requires a value they lack", count - carried, AUDIT_TABLE)
    return carried


#: PostgreSQL: the id sequence past every entry (a carried one's id is never taken again)
_SEQUENCE_PAST_SQL = (f"SELECT pg_catalog.setval(pg_catalog.pg_get_serial_sequence("
                      f"'public.{AUDIT_TABLE}', 'id'), (SELECT COALESCE(max(id), 1) "
                      f"FROM public.{AUDIT_TABLE}));\n")
#: PostgreSQL: the carried copy into the loaded table, by the columns both have (the
#: loaded table's decide: the archive may be older than the replaced database);
#: when the loaded table requires a value the copy lacks (NOT NULL, no default),
#: only the entries it holds are updated, and a warning says how many were left out.
_CARRY_SQL = r"""DO $gr$ DECLARE names text; excluded text; sets text; has_id boolean;
required boolean; left_out bigint; BEGIN
SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum),
 pg_catalog.string_agg(pg_catalog.format('%1$I = EXCLUDED.%1$I', a.attname), ', '
  ORDER BY a.attnum) FILTER (WHERE a.attname <> 'id'),
 pg_catalog.string_agg(pg_catalog.format('%1$I = c.%1$I', a.attname), ', '
  ORDER BY a.attnum) FILTER (WHERE a.attname <> 'id'),
 pg_catalog.bool_or(a.attname = 'id')
 INTO names, excluded, sets, has_id
 FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_attribute c ON c.attname = a.attname
 AND c.attrelid = 'pg_temp.gr_carried_audit'::regclass AND c.attnum > 0 AND NOT c.attisdropped
 WHERE a.attrelid = 'public.audit_log'::regclass AND a.attnum > 0 AND NOT a.attisdropped;
SELECT pg_catalog.bool_or(true) INTO required FROM pg_catalog.pg_attribute a
 WHERE a.attrelid = 'public.audit_log'::regclass AND a.attnum > 0 AND NOT a.attisdropped
 AND a.attnotnull AND NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = ''
 AND NOT EXISTS (SELECT FROM pg_catalog.pg_attribute c WHERE c.attname = a.attname
  AND c.attrelid = 'pg_temp.gr_carried_audit'::regclass AND c.attnum > 0
  AND NOT c.attisdropped);
IF has_id IS NOT TRUE THEN RETURN; END IF;
IF required IS NOT TRUE THEN
 EXECUTE pg_catalog.format('INSERT INTO public.audit_log (%1$s) SELECT %1$s FROM '
  'pg_temp.gr_carried_audit ON CONFLICT (id) DO %2$s', names,
  COALESCE('UPDATE SET ' || excluded, 'NOTHING'));
 RETURN;
END IF;
IF sets IS NOT NULL THEN
 EXECUTE pg_catalog.format('UPDATE public.audit_log AS t SET %s FROM '
  'pg_temp.gr_carried_audit AS c WHERE t.id = c.id', sets);
END IF;
SELECT pg_catalog.count(*) INTO left_out FROM pg_temp.gr_carried_audit AS c
 WHERE NOT EXISTS (SELECT FROM public.audit_log AS t WHERE t.id = c.id);
IF left_out > 0 THEN RAISE WARNING '% audit entries of the replaced database were left out: '
 'the restored audit_log requires a value they lack', left_out; END IF;
END $gr$;
"""
