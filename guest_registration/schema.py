"""The database schema's one owner: Alembic (through Flask-Migrate), one history
with a branch for the host (``host``) and one per plugin, each plugin shipping its
revisions inside its package and naming their folder through the
``register_migrations`` hook.

- ``setup`` runs :func:`upgrade` (``upgrade heads``). A database made by the
  ``create_all`` of earlier versions (tables, no ``alembic_version``) is compared
  with the first revision and stamped there if it matches (the next revision then
  renames its constraints to the naming convention); if it does not match,
  nothing is touched and the message says why.
- :func:`init_app` refuses to serve a database whose schema is behind or ahead of
  the code: every request gets a 503 page naming the command (JSON under /api),
  and the log says it once.
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

from flask import Flask, current_app, g, request

from .extensions import db
from .registry import hook_items

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
HOST_VERSIONS = MIGRATIONS / "versions"
#: the revision that describes what ``create_all`` made before migrations existed
FIRST_REVISION = "0000_create_all"
RECHECK_SECONDS = 10
#: the instance folder's list of plugin revision folders that upgraded its database
LOCATIONS_FILE = "schema-locations.json"


class SchemaError(RuntimeError):
    """The schema cannot be brought up to date (safe to show)."""


def plugin_locations(app: Flask) -> list[str]:
    """The revision folders of the plugins loaded now (``register_migrations``)."""
    found: list[str] = []
    for folder in hook_items(app.extensions["plugin_manager"], "register_migrations"):
        if str(folder) not in found:
            found.append(str(folder))
    return found


def remembered_locations(app: Flask) -> list[str]:
    """Folders of plugins that upgraded this instance's database before (still on
    disk), from the instance folder: never from the database, which a restore
    brings from an archive (a row of it naming a folder of the archive's uploads
    made Alembic import a file of the archive)."""
    return [f for f in _listed(app) if Path(f).is_dir()]


def _listed(app: Flask) -> list[str]:
    path = Path(app.instance_path) / LOCATIONS_FILE
    try:
        folders = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        log.warning("%s cannot be read (%s): only the loaded plugins' migrations are known",
                    path, type(exc).__name__)
        return []
    return [f for f in folders if isinstance(f, str)] if isinstance(folders, list) else []


def version_locations(app: Flask) -> list[str]:
    """The host's revisions, every loaded plugin's, and those of plugins disabled
    since they upgraded this database (their tables and branches are kept)."""
    found = [str(HOST_VERSIONS)]
    for folder in plugin_locations(app) + remembered_locations(app):
        if folder not in found:
            found.append(folder)
    return found


def _remember(app: Flask, conn) -> None:
    """The loaded plugins' folders, added to the instance folder's list (what
    :func:`remembered_locations` reads) and to ``schema_location`` (kept for the
    record: nothing reads it to find code)."""
    from sqlalchemy import text

    loaded = plugin_locations(app)
    known = {r[0] for r in conn.execute(text("SELECT folder FROM schema_location"))}
    for folder in loaded:
        if folder not in known:
            conn.execute(text("INSERT INTO schema_location (folder) VALUES (:f)"), {"f": folder})
    path = Path(app.instance_path) / LOCATIONS_FILE
    folders = _listed(app)
    if all(folder in folders for folder in loaded):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # the instance's own
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(json.dumps(folders + [f for f in loaded if f not in folders], indent=1))
    os.replace(partial, path)


def alembic_config(app: Flask, url: str | None = None):
    """An Alembic config for this app's history (``url``: for offline SQL)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("path_separator", "os")
    config.set_main_option("version_locations", os.pathsep.join(version_locations(app)))
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def init_app(app: Flask) -> None:
    """Flask-Migrate's ``db`` commands on this history, and the schema guard."""
    from flask_migrate import Migrate

    migrate = Migrate(app, db, directory=str(MIGRATIONS), render_as_batch=True,
                      compare_type=True)

    @migrate.configure
    def _locations(config):
        config.set_main_option("path_separator", "os")
        config.set_main_option("version_locations", os.pathsep.join(version_locations(app)))
        return config

    if app.config.get("DATABASE_SCHEMA_CHECK", True):
        app.before_request(_guard)


def upgrade(app: Flask):
    """Bring the database to the code's revisions (``upgrade heads``), adopting a
    database made before migrations; yields what it did. Raises SchemaError,
    with nothing changed, for a database ahead of the code or one it cannot
    recognise."""
    from alembic import command
    from alembic.util import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    kind, detail = state(app)
    if kind == "ahead":
        raise SchemaError(f"the database is at revisions this code does not know ({detail}): "
                          f"install the version that made it; nothing was changed")
    config = alembic_config(app)
    if kind == "legacy":
        differences = legacy_differences()
        if differences:
            raise SchemaError("the database has tables this application's earlier setup did "
                              f"not make ({'; '.join(differences[:5])}): nothing was changed")
        with _transaction() as conn:
            config.attributes["connection"] = conn
            command.stamp(config, FIRST_REVISION)
        yield f"database made before migrations recognised: stamped at {FIRST_REVISION}"
    try:
        with _transaction() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "heads")
            _remember(app, conn)
    except (SQLAlchemyError, CommandError) as exc:
        text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        raise SchemaError(f"the schema upgrade failed ({type(exc).__name__}: "
                          f"{text[0][:200] if text else ''}); nothing was changed") from None
    current_app_state = app.extensions.get("schema_state")
    if current_app_state is not None:
        current_app_state.update(ok=False, at=0.0)
    yield f"database schema at {', '.join(sorted(heads(app)))}"


@contextmanager
def _transaction():
    """The app's database in one transaction, schema changes included: pysqlite
    begins one only before INSERT/UPDATE/DELETE, so on SQLite each CREATE, ALTER
    and DROP of a migration committed on its own (one failing halfway left its
    first steps and Alembic's ``_alembic_tmp_*`` table behind, and ``setup``
    could not run again)."""
    with db.engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN")
        yield conn


def legacy_differences() -> list[str]:
    """How an unversioned database differs from the first revision's tables and
    columns (empty: it is one made by ``create_all`` before migrations)."""
    import importlib.util

    from sqlalchemy import inspect

    spec = importlib.util.spec_from_file_location(
        "_first_revision", HOST_VERSIONS / f"{FIRST_REVISION}.py")
    first = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(first)
    with db.engine.connect() as conn:
        inspector = inspect(conn)
        tables = set(inspector.get_table_names())
        found = []
        for table, columns in first.TABLES.items():
            if table not in tables:
                found.append(f"{table} is missing")
                continue
            have = {c["name"] for c in inspector.get_columns(table)}
            if have != set(columns):
                found.append(f"{table} has columns {sorted(have ^ set(columns))} that differ")
    return found


def heads(app: Flask) -> set[str]:
    """The code's head revisions as ``upgrade heads`` records them in
    ``alembic_version`` (see :func:`recorded_heads`)."""
    from alembic.script import ScriptDirectory

    from .schema_heads import recorded_heads

    return recorded_heads(ScriptDirectory.from_config(alembic_config(app)))


def current(connection) -> set[str]:
    """The revisions a database is at (empty: none recorded)."""
    from alembic.migration import MigrationContext

    return set(MigrationContext.configure(connection).get_current_heads())


def state(app: Flask) -> tuple[str, str]:
    """``("current" | "behind" | "ahead" | "legacy" | "empty", detail)``."""
    from alembic.script import ScriptDirectory
    from sqlalchemy import inspect

    script = ScriptDirectory.from_config(alembic_config(app))
    with db.engine.connect() as conn:
        at = current(conn)
        tables = set(inspect(conn).get_table_names())
    if not at:
        return ("legacy", "tables made before migrations") if tables - {"alembic_version"} \
            else ("empty", "no tables")
    known = {rev.revision for rev in script.walk_revisions()}
    unknown = at - known
    if unknown:
        return "ahead", ", ".join(sorted(unknown))
    from .schema_heads import recorded_heads

    code = recorded_heads(script)
    if at == code:
        return "current", ", ".join(sorted(at))
    return "behind", f"at {', '.join(sorted(at))}; the code is at {', '.join(sorted(code))}"


def _guard():
    """Every request of an app whose database is not at the code's revisions: 503."""
    if request.endpoint in ("static", None) or request.path in ("/favicon.ico", "/metrics"):
        return None
    checked = current_app.extensions.setdefault("schema_state", {"at": 0.0, "ok": False})
    if not checked["ok"] and time.monotonic() - checked["at"] >= RECHECK_SECONDS:
        try:
            kind, detail = state(current_app)
        except Exception:  # the database is down: other handlers answer for that
            return None
        checked.update(at=time.monotonic(), ok=kind == "current", kind=kind, detail=detail)
        if kind != "current":
            log.error("the database schema is %s (%s): run `guest-registration setup` "
                      "(or `manage.py setup`) to upgrade it", kind, detail)
    if checked["ok"]:
        return None
    g.schema_problem = checked
    return _schema_page(checked["kind"])


def _schema_page(kind: str):
    """503 with Retry-After: JSON ``{"error": …}`` under /api (an API answers JSON,
    never HTML, as the OpenAPI document says), a page elsewhere."""
    from flask import jsonify, render_template_string

    from .i18n import API_PREFIX

    message = ("This site's database is newer than its code: install the matching version."
               if kind == "ahead" else
               "This site's database needs an upgrade: run `guest-registration setup` "
               "(or `python manage.py setup`).")
    if request.path.startswith(API_PREFIX):
        response = jsonify(error=message)
        response.status_code = 503
        response.headers["Retry-After"] = "60"
        return response
    body = render_template_string(
        "<!doctype html><title>Maintenance</title><h1>Maintenance</h1><p>{{ m }}</p>",
        m=message)
    return current_app.response_class(body, status=503, headers={"Retry-After": "60"},
                                      mimetype="text/html")
