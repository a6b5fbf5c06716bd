"""PostgreSQL connections of the engine's own and the restore role: a
non-superuser role that owns the restored tables during the load and nothing
else (no server files, no programs), created or checked by ``setup`` and by
every restore."""

from __future__ import annotations

import contextlib
import logging
import re
from typing import TYPE_CHECKING, Iterator

from guest_backup.engines import mask, sql
from guest_backup.engines.libpq import pg_reason as _pg_reason
from guest_backup.errors import EngineError

if TYPE_CHECKING:
    from sqlalchemy import Connection

log = logging.getLogger(__name__)

ROLE_NAME = re.compile(r"(?!pg_)[a-z_][a-z0-9_]{0,62}")
ROLE_ATTRIBUTES = "NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT"
#: roles that read or write the server's files or run programs there
FILE_ROLES = ("pg_read_server_files", "pg_write_server_files", "pg_execute_server_program")


@contextlib.contextmanager
def _connected(url, autocommit: bool = False) -> Iterator[Connection]:
    """A connection of its own to ``url`` (its engine disposed afterwards)."""
    from sqlalchemy import create_engine

    engine = create_engine(url, connect_args={"connect_timeout": 10},
                           **({"isolation_level": "AUTOCOMMIT"} if autocommit else {}))
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def prepare_restore_role(url: str, role: str) -> str:
    """Create the restore role when missing (NOLOGIN, none of SUPERUSER, CREATEDB,
    CREATEROLE, REPLICATION, BYPASSRLS), refuse it with any of those or as a member
    of a superuser or server file/program role, let the connecting user SET ROLE
    to it. A line for ``setup``; else EngineError (one line, no server text)."""
    if not ROLE_NAME.fullmatch(role):
        raise EngineError(f"RESTORE_DATABASE_ROLE {role[:64]!r} is not a plain role name "
                          f"(a-z, 0-9 and _)")
    try:
        with _connected(url, autocommit=True) as conn:
            created = _create_role(conn, role)
            _check_role(conn, role)
            _let_user_act_as(conn, role)
    except EngineError:
        raise
    except Exception as exc:
        log.warning("cannot prepare the restore role %s: %s", role, mask(str(exc), url))
        raise EngineError(f"cannot prepare the restore role {role}: "
                          f"{_connect_reason(exc)}") from None
    return (f"restore role ready: {role} ({'created' if created else 'checked'}: no "
            f"superuser, no CREATEDB/CREATEROLE, no server file or program access)")


def _create_role(conn: Connection, role: str) -> bool:
    if conn.execute(sql("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first():
        return False
    try:
        conn.exec_driver_sql(f'CREATE ROLE "{role}" {ROLE_ATTRIBUTES}')
    except Exception as exc:
        if getattr(getattr(exc, "orig", None), "pgcode", None) == "42710":
            return False  # another process made it meanwhile
        log.warning("cannot create the restore role %s: %s", role, exc)
        raise EngineError(f"the restore role {role} does not exist and this database user may "
                          f"not create roles: as a superuser run CREATE ROLE {role} "
                          f"{ROLE_ATTRIBUTES}; then run setup again") from None
    return True


def _check_role(conn: Connection, role: str) -> None:
    flags = conn.execute(sql("SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, "
                              "rolbypassrls FROM pg_roles WHERE rolname = :r"), {"r": role}).one()
    bad = [n for n, on in zip(("SUPERUSER", "CREATEDB", "CREATEROLE", "REPLICATION",
                               "BYPASSRLS"), flags) if on]
    bad += [f"a member of {name}" for name in conn.execute(sql(
        "SELECT b.rolname FROM pg_roles b WHERE b.rolname <> :r AND pg_has_role(CAST(:r AS "
        "name), b.oid, 'MEMBER') AND (b.rolsuper OR b.rolname = ANY(:files)) ORDER BY 1"),
        {"r": role, "files": list(FILE_ROLES)}).scalars()]
    if bad:
        raise EngineError(f"the restore role {role} may do harm ({', '.join(bad)[:200]}): as a "
                          f"superuser take that away (ALTER ROLE {role} NOSUPERUSER NOCREATEDB "
                          f"NOCREATEROLE NOREPLICATION NOBYPASSRLS; REVOKE … FROM {role}) or "
                          f"set RESTORE_DATABASE_ROLE to another role")


def _let_user_act_as(conn: Connection, role: str) -> None:
    """A superuser may SET ROLE to it; another user needs membership (granted if we may)."""
    mode = "SET" if (conn.dialect.server_version_info or (0,)) >= (16,) else "MEMBER"
    if conn.execute(sql(f"SELECT pg_has_role(current_user, CAST(:r AS name), '{mode}')"),
                    {"r": role}).scalar():
        return
    user = conn.execute(sql("SELECT current_user")).scalar()
    try:
        conn.exec_driver_sql(f'GRANT "{role}" TO CURRENT_USER')
    except Exception as exc:
        log.warning("cannot grant the restore role %s to %s: %s", role, user, exc)
        raise EngineError(f"the database user {user} may not act as the restore role {role}: "
                          f"as a superuser run GRANT {role} TO {user}") from None


def _connect_reason(exc: Exception) -> str:
    return _pg_reason(str(getattr(exc, "orig", exc)), "the connection").split(": ", 1)[-1]
