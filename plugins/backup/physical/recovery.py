"""Recovery into a NEW cluster beside the running one: an empty folder, its own
port, archiving off, recovered to a moment (or to the end of the archive) and
promoted, then started as the owner. The running cluster is never touched."""

from __future__ import annotations

import os
import shutil
import socket
import stat
from pathlib import Path
from typing import Callable

from guest_backup.physical import PitrError
from guest_backup.physical.cluster import Cluster, sql_literal
from guest_backup.physical.pgbackrest import PgBackRest

LOG_NAME = "pitr-recovery.log"
#: for a cluster whose configuration lives outside its data directory (Debian's /etc)
_MINIMAL_HBA = ("# written by manage.py pitr restore (the source keeps its own elsewhere)\n"
                "local all all peer\nhost all all 127.0.0.1/32 scram-sha-256\n"
                "host all all ::1/128 scram-sha-256\n")


def check_target(into: Path, running: Path) -> Path:
    """``into`` as an absolute path, refused when it is (or holds, or lies inside)
    the running cluster's data directory, or is not an empty folder."""
    if not into.is_absolute():
        raise PitrError(f"--into must be an absolute path, not {into}")
    target, source = Path(os.path.realpath(into)), Path(os.path.realpath(running))
    if target == source or source in target.parents or target in source.parents:
        raise PitrError(f"{into} is (or holds, or is inside) the running cluster's data "
                        f"directory {running}: recover into a new, empty folder")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise PitrError(f"{into} is not an empty folder: recovery only goes into a new one")
    return target


def check_port(port: int, socket_dir: str, live: int | None = None) -> None:
    """Refuse a port some server already uses (its socket file, or a TCP listener),
    and the running cluster's own even while it is down (when recovering is most
    likely): the app would reach the recovered cluster, and the live one could not
    start again."""
    if not 1 <= port <= 65535:
        raise PitrError(f"port {port} is not a port number")
    if port == live:
        raise PitrError(f"port {port} is the running cluster's own (PITR_PG_PORT), even "
                        f"while it is down: recover on another port")
    if (Path(socket_dir) / f".s.PGSQL.{port}").exists():
        raise PitrError(f"port {port} is in use by another PostgreSQL server")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            raise PitrError(f"port {port} is in use on this machine")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def recover(backrest: PgBackRest, source: Cluster, into: Path, port: int, *, label: str,
            target: str | None, timeout: float = 3600,
            check: Callable[[Cluster], None] | None = None) -> Cluster:
    """Restore backup ``label`` into ``into``, recover to ``target`` (None: the end
    of the archive), start it on ``port``, wait until it is promoted and ``check``
    it (the erasure ledger re-applied): a failure of any step, the check's
    included, stops the cluster and empties the folder."""
    owner = source.owner
    found = _found(into)
    owner.make_dir(into, 0o700)
    new = Cluster(into, port, source.socket, owner, source.bindir)
    try:
        backrest.restore(into, label=label, target=target)
        _configure(source, into, port)
        log = into / LOG_NAME
        new.start(log, timeout=int(min(timeout, 3600)))
        new.wait_promoted(log, timeout)
        if check is not None:
            check(new)
    except BaseException as exc:  # a copy of the database, erasures not re-applied: gone
        _discard(new, found)
        if isinstance(exc, PitrError):
            raise PitrError(f"{exc} (the folder {into} was emptied)") from None
        raise
    return new


def _found(folder: Path) -> os.stat_result | None:
    """An existing ``--into`` folder as it was found (None: this recovery makes it)."""
    try:
        return folder.stat()
    except FileNotFoundError:
        return None


def _discard(cluster: Cluster, found: os.stat_result | None) -> None:
    """A recovery that did not finish: its server stopped, its files removed, and
    the folder removed when this recovery made it, else given back as it was found
    (owner and mode: a root's folder does not stay the cluster owner's); never raises."""
    try:
        remove(cluster, keep_folder=found is not None)
    except Exception:
        pass
    if found is not None:
        try:
            os.chown(cluster.data, found.st_uid, found.st_gid)
            os.chmod(cluster.data, stat.S_IMODE(found.st_mode))
        except OSError:
            pass


def _configure(source: Cluster, into: Path, port: int) -> None:
    """Its own port and the source's socket folder, everything logged to one file;
    a minimal configuration when the source keeps its own outside the data directory."""
    owner = source.owner
    auto = into / "postgresql.auto.conf"
    text = auto.read_text() if auto.exists() else ""
    text += ("\n# added by manage.py pitr restore: a new cluster beside the running one\n"
             f"port = {port}\nunix_socket_directories = {sql_literal(source.socket)}\n"
             "logging_collector = off\nexternal_pid_file = ''\n")
    owner.write_file(auto, text, 0o600)
    if not (into / "postgresql.conf").exists():
        owner.write_file(into / "postgresql.conf", "# written by manage.py pitr restore\n"
                         "listen_addresses = 'localhost'\n" + _replay_settings(source, into),
                         0o600)
    for name, fallback in (("pg_hba.conf", _MINIMAL_HBA), ("pg_ident.conf", "")):
        if not (into / name).exists():
            owner.write_file(into / name, _source_file(source, name) or fallback, 0o600)


#: pg_controldata's names of the settings a cluster replaying WAL needs at least as
#: high as where the WAL was written (else: "recovery aborted because of
#: insufficient parameter settings")
_REPLAY_SETTINGS = {"max_connections": "max_connections",
                    "max_worker_processes": "max_worker_processes",
                    "max_wal_senders": "max_wal_senders",
                    "max_prepared_xacts": "max_prepared_transactions",
                    "max_locks_per_xact": "max_locks_per_transaction"}


def _replay_settings(source: Cluster, into: Path) -> str:
    """Those settings as the restored backup's control file has them (a minimal
    configuration would have PostgreSQL's defaults, and a source that raised one
    could never be recovered); empty when pg_controldata cannot tell."""
    try:
        proc = source.owner.run([source.tool("pg_controldata"), "-D", str(into)], timeout=60)
    except PitrError:
        return ""
    lines = []
    for line in proc.stdout.splitlines() if proc.returncode == 0 else ():
        name, _, value = line.partition(" setting:")
        if name.strip() in _REPLAY_SETTINGS and value.strip().isdigit():
            lines.append(f"{_REPLAY_SETTINGS[name.strip()]} = {value.strip()}\n")
    return "".join(lines)


def _source_file(source: Cluster, name: str) -> str | None:
    """The running cluster's hba or ident file (wherever its configuration is)."""
    setting = "hba_file" if name == "pg_hba.conf" else "ident_file"
    try:
        path = source.psql(f"SHOW {setting}")[0][0]
        return Path(path).read_text()
    except (PitrError, OSError, IndexError):
        return None


def remove(cluster: Cluster, *, keep_folder: bool = False) -> None:
    """Stop a scratch cluster at once (if it runs) and delete its folder (with
    ``keep_folder``: everything in it)."""
    try:
        if (cluster.data / "postmaster.pid").exists():
            cluster.stop("immediate", timeout=60)
    finally:
        if keep_folder:
            _empty(cluster.data)
        else:
            shutil.rmtree(cluster.data, ignore_errors=True)


def _empty(folder: Path) -> None:
    """Everything in ``folder`` removed, as far as it can be; never raises."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for entry in entries:
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink()
        except OSError:
            pass
