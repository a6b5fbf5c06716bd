"""The libpq client tools (``pg_dump``, ``psql``): their versions, connection
settings as environment variables (never a password in an argument list) and a
short, safe reason from their stderr (never the text itself)."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time

from guest_backup.engines import TABLES_LOCKED, TARGET_LOCKED, parse_url

_versions: dict[tuple, tuple[float, str]] = {}  # (path, inode, size, mtime) -> (when, version)


def tool_version(path: str) -> str | None:
    """The version a command-line tool reports (``path --version``), or None; a
    version is reused for a minute unless the file changed (a backup asks twice on
    its way to the dump, 0.03-0.09 s each; the minute bounds what a wrapper such
    as Debian's ``pg_wrapper`` could hide after an upgrade)."""
    key = None
    with contextlib.suppress(OSError):
        st = os.stat(path)
        key = (path, st.st_ino, st.st_size, st.st_mtime_ns)
    if (known := _versions.get(key)) and time.monotonic() - known[0] < 60:
        return known[1]
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"(\d+(?:\.\d+)*)", out.stdout)
    version = m.group(1) if out.returncode == 0 and m else None
    if version is not None and key is not None:
        _versions[key] = (time.monotonic(), version)
    return version


#: the first minor release of each major version whose psql has \restrict
PSQL_RESTRICT_SINCE = {13: 22, 14: 19, 15: 14, 16: 10, 17: 6}
PG_ENV = {"host": "PGHOST", "port": "PGPORT", "username": "PGUSER", "password": "PGPASSWORD",
          "database": "PGDATABASE"}
PG_KEEP_ENV = frozenset({"PGPASSWORD", "PGPASSFILE", "PGSSLMODE", "PGSSLROOTCERT", "PGSSLCERT",
                         "PGSSLKEY"})
PG_QUERY_ENV = {"sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT", "sslcert": "PGSSLCERT",
                "sslkey": "PGSSLKEY", "connect_timeout": "PGCONNECT_TIMEOUT",
                "application_name": "PGAPPNAME", "options": "PGOPTIONS"}


def pg_environment(url: str) -> dict[str, str]:
    """Connection settings for libpq tools as environment variables: the password
    never appears in a process's argument list."""
    u = parse_url(url)
    # the URL says where to connect; the environment may still give the password
    # (PGPASSWORD, PGPASSFILE) and TLS files, as for any libpq program
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") or k in PG_KEEP_ENV}
    for attr, var in PG_ENV.items():
        value = getattr(u, attr)
        if value not in (None, ""):
            env[var] = str(value)
    for key, var in PG_QUERY_ENV.items():
        if key in u.query:
            value = u.query[key]
            env[var] = value if isinstance(value, str) else value[0]
    env.update(_query_hosts(u.query))
    env.setdefault("PGCONNECT_TIMEOUT", "10")
    return env


def _query_hosts(query) -> dict[str, str]:
    """PGHOST and PGPORT from the query's ``host`` and ``port``, over the netloc's, as
    SQLAlchemy connects the app (its options updated by the query): a unix socket
    (``postgresql://u@/db?host=/var/run/postgresql&port=5433``, as ``pitr restore``
    prints for the recovered cluster) or several hosts (``host=a,b&port=1,2``, or
    ``host=a:1&host=b:2``; libpq takes comma lists). Before, they were dropped: the
    tools connected to the default socket's server, another cluster than the app's."""
    env: dict[str, str] = {}
    host, port = query.get("host"), query.get("port")
    if isinstance(host, str) and port is None and re.fullmatch(r"[\w.-]+:\d+", host):
        host = (host,)  # host=name:port, SQLAlchemy's single-host form of the pair
    if isinstance(host, (list, tuple)):
        pairs = [token.rsplit(":", 1) if ":" in token else (token, "") for token in host]
        host = ",".join(h for h, _ in pairs)
        port = ",".join(p for _, p in pairs) if any(p for _, p in pairs) else port
    if host:
        env["PGHOST"] = host
    if port:
        env["PGPORT"] = port if isinstance(port, str) else ",".join(port)
    return env


def pg_major(version: str) -> int:
    """A PostgreSQL version's major number (9.6 -> 906, 15.4 -> 15)."""
    m = re.search(r"(\d+)(?:\.(\d+))?", version)
    if not m:
        return 0
    major = int(m.group(1))
    return major if major >= 10 else major * 100 + int(m.group(2) or 0)


def psql_restricts(path: str) -> bool:
    """Whether this psql has ``\\restrict`` (the 2025-08 minor releases and later)."""
    m = re.match(r"(\d+)\.(\d+)", tool_version(path) or "")
    major, minor = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    return major >= 18 or minor >= PSQL_RESTRICT_SINCE.get(major, 10**6)


def pg_reason(stderr: str, tool: str) -> str:
    """A short, safe reason from a libpq tool's stderr (never the text itself)."""
    lowered = stderr.lower()
    if "password authentication failed" in lowered or "no password supplied" in lowered:
        return f"{tool} could not log in to the database (wrong user or password)"
    if "does not exist" in lowered and "database" in lowered:
        return f"{tool}: the database does not exist"
    if any(w in lowered for w in ("could not connect", "connection refused",
                                  "connection to server")):
        return f"{tool} could not connect to the database server"
    if "server version mismatch" in lowered:
        return f"{tool} is older than the database server"
    if "permission denied" in lowered or "must be superuser" in lowered:
        return f"{tool}: permission denied in the database"
    if "gr-erasure-refused" in lowered:  # ops.erasure_sql.probe_erasure_sql
        return ("the archive's database refuses an erasure (a constraint or column type "
                "of its own)")
    if "gr-function-refused" in lowered:  # engines.pgload.calls_check
        return ("the archive's database calls a function a dump of this application "
                "does not (in a column default, check or index)")
    if "statement timeout" in lowered and "lock table" in lowered:  # --lock-wait-timeout
        return TABLES_LOCKED
    if "lock timeout" in lowered:  # a restore's lock_timeout (engines.pgload.load_script)
        return TARGET_LOCKED
    if "violates" in lowered and "constraint" in lowered:
        return f"{tool}: a constraint of the loaded database refused a row"
    if "backslash commands are restricted" in lowered or "unrestrict" in lowered:
        return f"{tool} refused a meta-command in the dump (it was restricted)"
    return f"{tool} failed (details are in the server log)"
