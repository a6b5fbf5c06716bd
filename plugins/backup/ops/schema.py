"""Archives know their schema: the manifest records the Alembic revision of every
branch (``schema.revisions``), and anything that brings an archive back upgrades
it to the code's revisions in the same all-or-nothing step as the load.

An archive made before migrations (no ``schema`` in its manifest) counts as the
first revision, its database without a version table (``legacy``). An archive at
a revision the code does not know (newer code made it, or a plugin branch that is
not installed here) is refused before anything is touched, naming both sides.

PostgreSQL: the upgrade is SQL text (Alembic's offline mode) that the engine
appends to the dump, inside psql's single transaction. SQLite: the upgrade runs on
the freshly loaded copy before it is checked and swapped in.
The manifest's revisions must be revision names; before the commit, the loaded
database must bear them out (:func:`check_session`, :func:`check_legacy`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from dataclasses import dataclass, field

from guest_backup.archive.manifest import shown
from guest_backup.errors import BackupError
from guest_backup.files import write_private

#: the host's first revision: what an archive without revisions holds
FIRST_REVISION = "0000_create_all"
#: a revision's name (``backup_0001_erasure_mark``; Alembic's own: 12 hex digits)
REVISION_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")
#: PostgreSQL, before a legacy database's stamp: its columns kept for check_session
LOADED_COLUMNS_SQL = r"""DO $gr$ BEGIN PERFORM pg_catalog.set_config('gr_restore.loaded_columns',
 COALESCE((SELECT pg_catalog.json_agg(pg_catalog.json_build_array(c.relname, a.attname))::text
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid WHERE n.nspname = 'public'
  AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped), '[]'), true); END $gr$;
"""


@dataclass(frozen=True)
class MigrationPaths:
    """Where the history lives (given by the wiring: no host import here)."""

    script_location: str
    version_locations: tuple[str, ...]
    #: a file remembering the heads of these folders as they are now (see :func:`plan`)
    heads_cache: str | None = None


@dataclass
class SchemaUpgrade:
    """How one archive's database is brought to the code's revisions."""

    paths: MigrationPaths
    #: the archive's revisions (the first revision for an archive made before them)
    revisions: set[str]
    #: the code's head revisions, as ``upgrade heads`` records them (a head another
    #: one ``depends_on`` is implied by it: see ``schema_heads.recorded_heads``)
    heads: set[str]
    #: True when the archive's database has no version table (made before migrations)
    legacy: bool = False
    #: per head, in the order the upgrade goes: the revision to start from (None: the
    #: branch is new to this database)
    starts: dict[str, str | None] = field(default_factory=dict)
    #: a legacy database's tables and columns: the first revision's ``TABLES``
    first_tables: dict | None = None

    @property
    def needed(self) -> bool:
        return self.legacy or any(start != head for head, start in self.starts.items())

    def describe(self) -> str:
        return f"schema upgraded from {_names(self.revisions)} to {_names(self.heads)}"

    def sql(self, url: str) -> str:
        """The upgrade as SQL for ``url``'s dialect, without BEGIN/COMMIT (it runs
        inside the caller's transaction) and with ``search_path`` set (a pg_dump
        clears it)."""
        from alembic import command

        parts = ["SET search_path = public;\n"]
        if self.legacy:
            parts.append(_offline(self.paths, url, lambda cfg: command.stamp(
                cfg, FIRST_REVISION, sql=True)))
        for head, start in self.starts.items():
            if start == head:
                continue
            target = f"{start}:{head}" if start else head
            parts.append(_offline(self.paths, url, lambda cfg, t=target: command.upgrade(
                cfg, t, sql=True)))
        text = "".join(parts)
        # a branch new to this database starts with Alembic's CREATE TABLE of the
        # version table, which the dump (or the stamp above) already holds
        return text.replace("CREATE TABLE alembic_version (",
                            "CREATE TABLE IF NOT EXISTS alembic_version (")

    def apply(self, connection) -> None:
        """Run the upgrade on ``connection`` (inside its transaction)."""
        from alembic import command

        config = _config(self.paths)
        config.attributes["connection"] = connection
        if self.legacy:
            command.stamp(config, FIRST_REVISION)
        command.upgrade(config, "heads")


def _config(paths: MigrationPaths, url: str | None = None):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", paths.script_location)
    config.set_main_option("path_separator", "os")
    config.set_main_option("version_locations", os.pathsep.join(paths.version_locations))
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _offline(paths: MigrationPaths, url: str, run) -> str:
    config = _config(paths, url)
    config.output_buffer = io.StringIO()
    config.attributes["no_transaction"] = True
    run(config)
    return config.output_buffer.getvalue()


def archive_revisions(manifest: dict, outcome: str = "") -> tuple[set[str], bool]:
    """The archive's revisions and whether it predates migrations; BackupError (its
    message ending in ``outcome``) when they are not revision names."""
    schema = manifest.get("schema")
    if not isinstance(schema, dict) or not schema.get("revisions"):
        return {FIRST_REVISION}, True
    revisions = schema["revisions"]
    if not isinstance(revisions, list) or not all(isinstance(r, str) for r in revisions):
        raise BackupError(f"the archive's schema revisions are unreadable{outcome}")
    if len(revisions) > 100 or not all(REVISION_NAME.fullmatch(r) for r in revisions):
        raise BackupError(f"the archive's schema revisions are not revision names{outcome}")
    return set(revisions), False


def _names(revisions) -> str:
    """Revisions as a message quotes them (from an archive: cut short, one line)."""
    return shown(", ".join(shown(r, 64) for r in sorted(revisions)[:10]), 300) or "none"


def history_fingerprint(paths: MigrationPaths) -> list:
    """Every file of the history with its size and time: changes with any of them
    (the heads cache's key, and a browse session's ``heads``)."""
    found: list = []
    for folder in (paths.script_location, *paths.version_locations):
        try:
            with os.scandir(folder) as entries:
                found += sorted([e.path, e.stat().st_size, e.stat().st_mtime_ns]
                                for e in entries if e.is_file())
        except OSError:
            found.append([folder, None, None])
    return found


def _cached_heads(paths: MigrationPaths) -> set[str] | None:
    """The heads remembered for the history exactly as it is on disk now, or None."""
    try:
        with open(paths.heads_cache, encoding="utf-8") as f:
            cached = json.load(f)
        if cached["files"] == history_fingerprint(paths):
            return set(cached["heads"])
    except (OSError, TypeError, ValueError, KeyError):
        pass
    return None


def _remember_heads(paths: MigrationPaths, heads: set[str]) -> None:
    if not paths.heads_cache:
        return
    data = json.dumps({"files": history_fingerprint(paths), "heads": sorted(heads)})
    with contextlib.suppress(OSError):  # only a cache: the next restore asks Alembic again
        write_private(paths.heads_cache, data.encode())


def plan(paths: MigrationPaths, manifest: dict) -> SchemaUpgrade:
    """How the archive's database reaches the code's revisions; BackupError (before
    anything is touched) for a revision the code does not know.

    An archive exactly at the code's heads needs nothing: with the heads remembered
    for the history as it is on disk (``heads_cache``), that is known without
    importing Alembic (a tenth of a second of every restore)."""
    revisions, legacy = archive_revisions(manifest, "; nothing was restored")
    if paths.heads_cache and not legacy and revisions == _cached_heads(paths):
        return SchemaUpgrade(paths, revisions, set(revisions), starts={h: h for h in revisions})
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    from guest_backup.ops.schema_heads import plan_starts, recorded_heads

    script = ScriptDirectory.from_config(_config(paths))
    heads = recorded_heads(script)
    _remember_heads(paths, heads)
    unknown = []
    for rev in sorted(revisions):
        try:
            if script.get_revision(rev) is None:
                unknown.append(rev)
        except CommandError:
            unknown.append(rev)
    if unknown:
        raise BackupError(f"the archive's schema is at {_names(unknown)}, which this code "
                          f"does not know (a newer version, or a plugin that is not "
                          f"installed); the code is at {_names(heads)}: nothing was restored")
    upgrade = SchemaUpgrade(paths, revisions, heads, legacy)
    if legacy:
        upgrade.first_tables = getattr(script.get_revision(FIRST_REVISION).module, "TABLES", None)
    plan_starts(script, upgrade.revisions, upgrade.starts)
    return upgrade


def current_revisions(connection) -> list[str]:
    """The revisions recorded in a database (for the manifest); none before migrations."""
    from sqlalchemy import inspect, text

    if "alembic_version" not in inspect(connection).get_table_names():
        return []
    return sorted(r[0] for r in connection.execute(text("SELECT version_num FROM alembic_version")))


def heads_check_sql(upgrade: SchemaUpgrade) -> str:
    """PostgreSQL, after the upgrade: ``alembic_version`` must hold exactly the code's
    heads, else a line saying what it holds (``gr-schema-refused``, which the engine
    reports) and an error that stops psql before the COMMIT."""
    heads = sorted(upgrade.heads)
    expected = "ARRAY[" + ", ".join("'" + h.replace("'", "''") + "'" for h in heads) + "]::text[]"
    found = ("(SELECT COALESCE(pg_catalog.array_agg(version_num::text ORDER BY version_num "
             "COLLATE \"C\"), '{}') FROM public.alembic_version)")
    said = _names(heads).replace("'", "''")
    return ("CREATE TABLE IF NOT EXISTS public.alembic_version (version_num varchar(32));\n"
            f"COPY (SELECT 'gr-schema-refused the archive''s database records ' || "
            f"COALESCE(pg_catalog.array_to_string(ARRAY(SELECT pg_catalog.quote_literal(v) FROM "
            f"pg_catalog.unnest({found}) AS v LIMIT 10), ', '), 'none') || ' in alembic_version, "
            f"not {said}' WHERE {found} IS DISTINCT FROM {expected}) TO STDOUT;\n"
            f"DO $gr$ BEGIN IF {found} IS DISTINCT FROM {expected} THEN RAISE EXCEPTION "
            f"'gr-schema-refused'; END IF; END $gr$;\n")


def check_session(upgrade: SchemaUpgrade, session) -> None:
    """PostgreSQL, on psql's open transaction after the upgrade: a legacy database
    was the first revision (its columns as loaded, kept before the stamp)."""
    from sqlalchemy import Text, literal_column, select

    session.doing = "checking the archive's schema"
    kept = session.execute(select(literal_column(
        "pg_catalog.current_setting('gr_restore.loaded_columns', true)", Text)
        .label("v"))).scalar_one_or_none()
    found: dict[str, set[str]] = {}
    for name, col in json.loads(kept or "[]"):
        found.setdefault(name, set()).add(col)
    _unlike_first(upgrade.first_tables, found, "; nothing was restored")


def check_legacy(upgrade: SchemaUpgrade, connection) -> None:
    """SQLite, on the loaded copy before the stamp: a legacy database is the first
    revision."""
    from sqlalchemy import inspect

    if upgrade.legacy:
        found = inspect(connection)
        _unlike_first(upgrade.first_tables, {
            t: {c["name"] for c in found.get_columns(t)} for t in found.get_table_names()})


def _unlike_first(tables: dict | None, found: dict[str, set[str]], outcome: str = "") -> None:
    """Refuse an unversioned database unlike the first revision (as ``setup`` does)."""
    differ = [f"{name} is missing" if name not in found else
              f"{name} has columns {sorted(found[name] ^ set(cols))} that differ"
              for name, cols in (tables or {}).items() if found.get(name) != set(cols)]
    if differ or tables is None:
        raise BackupError(f"the archive's database was made before migrations but does not "
                          f"match the first revision ({shown('; '.join(differ[:5]), 300)}), so "
                          f"this code cannot upgrade it{outcome}")


def check_heads(upgrade: SchemaUpgrade, rows: list[str], outcome: str = "") -> None:
    """Refuse a loaded database whose ``alembic_version`` rows are not the code's
    heads (whatever the manifest said; an offline ``UPDATE`` may match nothing)."""
    if sorted(rows) != sorted(upgrade.heads):
        raise BackupError(f"the archive's database records {_names(rows)} in alembic_version, "
                          f"not {_names(upgrade.heads)} (its manifest says "
                          f"{_names(upgrade.revisions)}){outcome}")
