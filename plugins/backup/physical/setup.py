"""``pitr setup``: the folders and configuration file (the owner's), the stanza,
the PostgreSQL settings archiving needs (printed, or applied with ``ALTER
SYSTEM``), and pgBackRest's ``check`` once they are in force. Run it again after
the restart it asks for; every step is safe to repeat."""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from guest_backup.physical import PitrError
from guest_backup.physical.cluster import Cluster, sql_literal
from guest_backup.physical.config import PitrConfig
from guest_backup.physical.info import RepoInfo
from guest_backup.physical.owner import Owner, describe_folder
from guest_backup.physical.pgbackrest import PgBackRest

#: values that already do (archive_mode=always, wal_level=logical archive as well)
_ENOUGH = {"archive_mode": {"on", "always"}, "wal_level": {"replica", "logical"}}


@dataclass
class SetupReport:
    """What setup did and found: ``steps`` as (state, text), state ``ok``,
    ``todo`` (the operator's turn) or ``failed``."""

    steps: list[tuple[str, str]] = field(default_factory=list)
    statements: list[str] = field(default_factory=list)
    restart_needed: bool = False

    @property
    def complete(self) -> bool:
        return all(state == "ok" for state, _ in self.steps)

    def add(self, state: str, text: str) -> None:
        self.steps.append((state, text))


def wanted(config: PitrConfig) -> dict[str, str]:
    return {"archive_mode": "on", "archive_command": config.archive_command(config.binary()),
            "archive_timeout": str(config.archive_timeout), "wal_level": "replica"}


def differing(current: dict[str, tuple[str, bool]], want: dict[str, str]) -> dict[str, str]:
    """The settings whose value in force is not (enough like) the wanted one."""
    return {name: value for name, value in want.items()
            if current.get(name, ("", False))[0] not in _ENOUGH.get(name, {value})}


def traverse_only(folder: Path) -> int:
    """Let everyone enter ``folder`` but list or read nothing in it: 0711, and every
    entry in it without read or write bits for group and others (files 0600,
    folders 0700 or traverse-only). The number of entries tightened."""
    tightened = 0
    for entry in folder.iterdir():
        st = entry.lstat()
        if stat.S_ISLNK(st.st_mode):
            continue
        mode = stat.S_IMODE(st.st_mode)
        keep = 0o711 if stat.S_ISDIR(st.st_mode) else 0o700
        if mode & ~keep:
            os.chmod(entry, mode & keep)
            tightened += 1
    os.chmod(folder, 0o711)
    return tightened


def first_blocked(config: PitrConfig, owner: Owner) -> tuple[Path, Path] | None:
    """The first folder pgBackRest uses (PITR_FOLDER, a local repository) that the
    owner cannot reach, and the folder on the way it may not enter; None: none.
    (The repository itself is made for the owner by :meth:`Owner.make_dir`, or handed
    to it when it is root's; another user's is refused.)"""
    ways = [(config.folder, config.folder)]
    if config.s3 is None:
        ways.append((config.repo_path, config.repo_path.parent))
    for path, way in ways:
        blocked = owner.blocked_at(way)
        if blocked is not None:
            return path, blocked
    return None


def open_private_folder(config: PitrConfig, owner: Owner, private: Path | None,
                        report: SetupReport) -> None:
    """When the owner may not enter the app's private folder (the instance folder,
    0700 by default) on its way to PITR_FOLDER, make that folder traverse-only."""
    found = first_blocked(config, owner)
    if private is None or found is None or found[1].resolve() != private.resolve():
        return
    try:
        tightened = traverse_only(private)
    except OSError as exc:
        raise PitrError(f"the folder {private} cannot be opened for {owner.name} "
                        f"({exc.strerror})") from None
    report.add("ok", f"the instance folder {private} is traverse-only now (mode 0711): "
                     f"{owner.name} may enter it to reach {config.folder}, nobody else may "
                     f"list or read it" + (f"; {tightened} entries in it lost their read and "
                                           f"write bits for others" if tightened else ""))


def prepare_files(config: PitrConfig, cluster: Cluster, report: SetupReport,
                  private: Path | None = None) -> None:
    """The owner's folders and the configuration file it can reach (``private``: the
    app's instance folder, made traverse-only when it is in the way)."""
    owner = cluster.owner
    open_private_folder(config, owner, private, report)
    found = first_blocked(config, owner)
    if found is not None:
        path, blocked = found
        setting = "PITR_FOLDER" if path == config.folder else "PITR_REPO_PATH"
        raise PitrError(f"{owner.name} cannot reach {path}: it may not enter "
                        f"{describe_folder(blocked)}. Set {setting} to a folder {owner.name} "
                        f"can reach (e.g. /var/lib/postgresql/pitr-{config.stanza}), or let "
                        f"{owner.name} enter {blocked}")
    folders = [config.folder, *config.folders()]
    for folder in folders:  # all of them, before any is made or handed over
        owner.refuse_foreign(folder)
    for folder in folders:
        owner.make_dir(folder, 0o700)
    changed = owner.write_file(config.conf_path, config.render(), 0o600)
    report.add("ok", f"pgBackRest configuration {'written' if changed else 'unchanged'}: "
                     f"{config.conf_path} (owner {owner.name}, mode 0600), repository "
                     f"{config.repository}" + (", encrypted (aes-256-cbc)"
                                               if config.cipher_pass else ""))


def apply_settings(cluster: Cluster, changes: dict[str, str],
                   want: dict[str, str]) -> dict[str, tuple[str, bool]]:
    """ALTER SYSTEM, reload, and the settings then in force (waiting a moment for
    the reload to reach new sessions)."""
    for name, value in changes.items():
        cluster.psql(f"ALTER SYSTEM SET {name} = {sql_literal(value)}")
    cluster.psql("SELECT pg_reload_conf()")
    current = cluster.settings()
    for _ in range(20):
        if not [n for n in differing(current, want) if not current[n][1]]:
            break
        time.sleep(0.25)
        current = cluster.settings()
    return current


def settings_step(config: PitrConfig, cluster: Cluster, apply: bool,
                  report: SetupReport) -> bool:
    """True when archiving is in force as wanted (else the report says what is missing)."""
    want = wanted(config)
    current = cluster.settings()
    changes = {n: v for n, v in differing(current, want).items() if not current[n][1]}
    if changes and not apply:
        report.statements = [f"ALTER SYSTEM SET {n} = {sql_literal(v)};"
                             for n, v in changes.items()] + ["SELECT pg_reload_conf();"]
        report.add("todo", "PostgreSQL is not set up for archiving yet: run `pitr setup "
                           "--apply`, or these statements as a superuser (or the same lines "
                           "in postgresql.conf)")
        return False
    if changes:
        current = apply_settings(cluster, changes, want)
        report.add("ok", f"set with ALTER SYSTEM: {', '.join(changes)}")
    waiting = [n for n in differing(current, want) if current[n][1]]
    if waiting:
        report.restart_needed = True
        report.add("todo", f"{', '.join(waiting)} take{'s' if len(waiting) == 1 else ''} effect "
                           f"only after PostgreSQL restarts: "
                           f"restart it (e.g. systemctl restart postgresql, or pg_ctl restart "
                           f"-D {cluster.data} as {cluster.owner.name}), then run `pitr setup` "
                           f"again")
        return False
    stuck = differing(current, want)
    if stuck:
        report.add("failed", f"{', '.join(stuck)} still differ after a reload: are they set on "
                             f"the server's command line?")
        return False
    report.add("ok", "archiving is on: archive_mode, wal_level, archive_timeout="
                     f"{config.archive_timeout}s, archive_command through {config.conf_path}")
    return True


def run_setup(config: PitrConfig, cluster: Cluster, backrest: PgBackRest,
              apply: bool, private: Path | None = None) -> SetupReport:
    """Every step that can be done now; the report says what is still missing
    (``private``: the app's instance folder, see :func:`open_private_folder`)."""
    report = SetupReport()
    cluster.owner.require()
    prepare_files(config, cluster, report, private)
    if not cluster.running():
        report.add("failed", f"the cluster in {cluster.data} is not running: start it and run "
                             f"`pitr setup` again")
        return report
    report.add("ok", f"cluster {cluster.data} (PostgreSQL {cluster.version_of(cluster.data)}, "
                     f"port {cluster.port}, owner {cluster.owner.name})")
    backrest.stanza_create()
    report.add("ok", f"stanza {config.stanza} is in the repository")
    if not settings_step(config, cluster, apply, report):
        return report
    backrest.check()
    report.add("ok", "pgBackRest check passed: a WAL segment went into the repository")
    full = RepoInfo.from_json(backrest.info()).newest_full
    if full is None:
        report.add("todo", "no full backup yet: run `pitr backup --type full`, then schedule "
                           "backups (see docs: weekly full, daily diff, hourly incr)")
    else:
        report.add("ok", f"newest full backup: {full.label}")
    return report
