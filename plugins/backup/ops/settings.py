"""The backup plugin's settings (declared through the host's
``register_settings`` hook, so each is also read from the environment)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    from guest_backup.archive.signing import Signer, TrustedKeys

from guest_backup.engines import EngineSettings
from guest_backup.errors import BackupError
from guest_backup.storages.s3 import DEFAULT_PART_MB


def defaults(instance_path: str) -> dict[str, Any]:
    return {
        #: where archives are written (mode 0700)
        "BACKUP_FOLDER": os.path.join(instance_path, "backups"),
        #: retention after each backup, restic's rules: the N newest archives, and the
        #: newest of each of the last N days / ISO weeks / months (all 0 = keep all)
        "BACKUP_KEEP": 0,
        "BACKUP_KEEP_DAILY": 0,
        "BACKUP_KEEP_WEEKLY": 0,
        "BACKUP_KEEP_MONTHLY": 0,
        #: deflate level of archives: 3 is 2.4x faster than 6 for ~10% more bytes
        "BACKUP_COMPRESSLEVEL": 3,
        #: seconds a backup waits for a table another session holds (a migration, say)
        #: before it fails, as pg_dump --lock-wait-timeout (0: without limit)
        "BACKUP_LOCK_WAIT": 60,
        #: the PostgreSQL client tools (at least the server's major version)
        "PG_DUMP": "pg_dump",
        "PSQL": "psql",
        #: the PostgreSQL role restores and restore drills load a dump as (psql connects as
        #: the target's user, then SET ROLE): no superuser, no file or program access,
        #: owning only the tables it restores until they are handed back. `setup` creates it
        "RESTORE_DATABASE_ROLE": "guest_restore",
        #: this installation's id (created, mode 0600, when missing): every archive's signed
        #: manifest and seal name it, and a restore refuses another installation's archive
        #: unless its signing key is given with --trusted-key
        "BACKUP_INSTALLATION_FILE": os.path.join(instance_path, "installation_id"),
        #: the Ed25519 key archives are signed with (PEM; created, mode 0600, when missing)
        "BACKUP_SIGNING_KEY": os.path.join(instance_path, "backup_signing_key.pem"),
        #: public keys (ed25519:…) whose archives verify and restore trust, besides our own
        "BACKUP_TRUSTED_KEYS": [],
        #: age recipients (age1…): when given, archives are written encrypted (.zip.age)
        "BACKUP_AGE_RECIPIENTS": [],
        #: a remote copy of every archive: s3://bucket/prefix or file:///path
        "BACKUP_REMOTE_URL": "",
        #: multipart part size for S3 uploads, MiB (at least 5): parts are sent while the
        #: archive is written, at most 16 MiB of them in memory (docs/s3.md)
        "BACKUP_S3_PART_MB": DEFAULT_PART_MB,
        #: Object Lock retention of every uploaded archive, days (0 = off; the bucket must
        #: have Object Lock) and its mode: GOVERNANCE or COMPLIANCE (docs/s3.md)
        "BACKUP_S3_OBJECT_LOCK_DAYS": 0,
        "BACKUP_S3_OBJECT_LOCK_MODE": "GOVERNANCE",
        #: keep a copy of every archive in BACKUP_FOLDER; false (0) with a remote: the
        #: archive is streamed to the remote only, nothing archive-sized is written here
        "BACKUP_KEEP_LOCAL": True,
        #: dead-man's switch: GET URL after a good backup, URL/fail after a failed one
        "BACKUP_HEALTHCHECK_URL": "",
        #: legal retention of guest records, in years from the end of the stay (0 = off):
        #: `retention-enforce` erases older registrations and prunes older archives
        "GUEST_RETENTION_YEARS": 6,
        #: Apprise URLs (comma-separated, any scheme) told once per change of state: a backup
        #: failed or recovered, a drill failed, health degraded, a storage unreachable
        "BACKUP_NOTIFY_URLS": [],
        #: a retention run removing more archives than this from one storage notifies (0: off)
        "BACKUP_NOTIFY_MAX_PRUNE": 5,
        **pitr_defaults(instance_path), **browse_defaults(), **export_defaults(),
    }


def export_defaults() -> dict[str, Any]:
    """The monthly guest export (docs/api.md)."""
    return {
        #: rows fetched per round trip by a streaming export
        "EXPORT_FETCH_ROWS": 2000,
        #: API exports streaming at once per process (0 = no limit); keep it below the
        #: server's threads per process (gunicorn --threads) and DATABASE_POOL_SIZE,
        #: so that pages always find a thread and a connection. More: 429.
        "EXPORT_MAX_CONCURRENT": 2,
    }


def browse_defaults() -> dict[str, Any]:
    """Browsing archives and restoring a selection (docs/selective-restore.md)."""
    return {
        #: an archive opened for browsing (Restore a selection, `browse`) is dropped with
        #: its scratch database after this many minutes unused
        "BACKUP_BROWSE_IDLE_MINUTES": 30,
    }


def pitr_defaults(instance_path: str) -> dict[str, Any]:
    """Point-in-time recovery with pgBackRest (docs/pitr.md); off while PITR_PG_DATA is empty."""
    folder = os.path.join(instance_path, "pgbackrest")
    return {
        #: the cluster's data directory; pgBackRest runs as its owner (runuser when root)
        "PITR_PG_DATA": "",
        "PITR_STANZA": "guest-registration",
        #: how pgBackRest and psql reach the cluster: its port and unix socket folder
        "PITR_PG_PORT": 5432,
        "PITR_PG_SOCKET": "/var/run/postgresql",
        #: the server binaries (pg_ctl); empty: /usr/lib/postgresql/<version>/bin or PATH
        "PITR_PG_BINDIR": "",
        "PITR_PGBACKREST": "pgbackrest",
        #: pgbackrest.conf, log, lock and spool folders (the owner's; it must reach them)
        "PITR_FOLDER": folder,
        #: the repository: a folder (empty: PITR_FOLDER/repo, i.e. <instance>/pgbackrest/repo),
        #: or s3://bucket/prefix (endpoint, region, keys: boto3's AWS_* variables; TLS only)
        "PITR_REPO_PATH": "",
        "PITR_REPO_S3_URL": "",
        "PITR_S3_VERIFY_TLS": True,
        "PITR_S3_URI_STYLE": "host",
        #: repository encryption (aes-256-cbc) when set; keep it with the recovery notes
        "PITR_CIPHER_PASS": "",
        #: archive_timeout (seconds): at most this much of the newest writes is lost
        "PITR_ARCHIVE_TIMEOUT": 60,
        "PITR_RETENTION_FULL": 2,
        #: health: a WAL segment waiting longer (seconds, or 5m, 1h); the newest full backup older.
        #: Durations, so strings: an int default made the host take only whole numbers
        "PITR_MAX_WAL_DELAY": "300",
        "PITR_MAX_FULL_AGE": "8d",
    }


#: the duration settings, read with ``parse_duration`` (seconds, or 90m, 26h, 8d, 2w)
#: where used (``guest_backup.ops.health``)
DURATION_SETTINGS = ("PITR_MAX_WAL_DELAY", "PITR_MAX_FULL_AGE")


def check_durations(config: Mapping[str, Any]) -> None:
    """ValueError naming the first duration setting its reader cannot parse: start-up
    stops on it in one line, rather than every health check failing later."""
    from guest_backup.ops.health_problems import parse_duration

    for name in DURATION_SETTINGS:
        value = config.get(name)
        if value in (None, ""):
            continue  # the default
        try:
            parse_duration(str(value))
        except ValueError:
            raise ValueError(f"{name} must be a duration: seconds, or a number with s, m, "
                             f"h, d or w (5m, 26h, 8d), not {str(value)[:40]!r}") from None


@dataclass
class BackupSettings:
    """Everything a backup needs, as plain values (no Flask below this line)."""

    database_url: str
    upload_folder: str
    backup_folder: str
    app_version: str
    pg_dump: str = "pg_dump"
    psql: str = "psql"
    restore_role: str = "guest_restore"
    keep: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    compresslevel: int = 3
    #: BACKUP_LOCK_WAIT, seconds (0: without limit)
    lock_wait: float = 60.0
    #: BACKUP_SIGNING_KEY, the key file's path (never shown: it might hold the key)
    signing_key: str = field(default="", repr=False)
    installation_file: str = ""
    trusted_keys: list[str] = field(default_factory=list)
    age_recipients: list[str] = field(default_factory=list)
    remote_url: str = ""
    #: BACKUP_KEEP_LOCAL (only without a remote is a local copy always kept)
    keep_local: bool = True
    healthcheck_url: str = ""
    guest_retention_years: int = 0
    #: the PITR_* settings as given (read by guest_backup.ops.pitr, checked there)
    pitr: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], app_version: str) -> "BackupSettings":
        return cls(
            database_url=config["DATABASE_URL"], upload_folder=config["UPLOAD_FOLDER"],
            backup_folder=config["BACKUP_FOLDER"], app_version=app_version,
            pg_dump=config["PG_DUMP"], psql=config["PSQL"], keep=int(config["BACKUP_KEEP"] or 0),
            restore_role=(config.get("RESTORE_DATABASE_ROLE") or "guest_restore").strip(),
            keep_daily=int(config["BACKUP_KEEP_DAILY"] or 0),
            keep_weekly=int(config["BACKUP_KEEP_WEEKLY"] or 0),
            keep_monthly=int(config["BACKUP_KEEP_MONTHLY"] or 0),
            compresslevel=int(config["BACKUP_COMPRESSLEVEL"]),
            lock_wait=max(0.0, float(config.get("BACKUP_LOCK_WAIT", 60) or 0)),
            signing_key=config["BACKUP_SIGNING_KEY"],
            installation_file=config["BACKUP_INSTALLATION_FILE"],
            trusted_keys=_as_list(config["BACKUP_TRUSTED_KEYS"]),
            age_recipients=_as_list(config["BACKUP_AGE_RECIPIENTS"]),
            remote_url=(config["BACKUP_REMOTE_URL"] or "").strip(),
            keep_local=_as_flag(config.get("BACKUP_KEEP_LOCAL", True)),
            healthcheck_url=(config["BACKUP_HEALTHCHECK_URL"] or "").strip(),
            guest_retention_years=max(0, int(config.get("GUEST_RETENTION_YEARS", 6) or 0)),
            pitr={k: v for k, v in config.items() if k.startswith("PITR_")},
        )

    def signer(self) -> "Signer":
        """The instance's signer (its key is created on first use)."""
        from guest_backup.archive.signing import Signer, load_or_create_key

        return Signer(load_or_create_key(self.signing_key))

    def signing_key_file(self) -> "Path":
        """The key file's absolute path; a BackupError (never showing the value)
        when BACKUP_SIGNING_KEY holds the key itself."""
        from guest_backup.archive.signing import key_file

        return key_file(self.signing_key).resolve()

    def installation(self) -> str:
        """This installation's id (created on first use)."""
        return load_or_create_installation_id(self.installation_file)

    def trusted(self, extra: "list[str] | tuple[str, ...]" = ()) -> "TrustedKeys":
        """The instance's own public key, BACKUP_TRUSTED_KEYS and ``extra``. A value of
        the setting that is not a public key raises a BackupError that names the
        setting (never quoting a private key pasted there): retention, health and
        the listings report it instead of a bare "… is not a public key"."""
        from guest_backup.archive.signing import TrustedKeys, parse_public_key

        for text in self.trusted_keys:
            parse_public_key(text, "BACKUP_TRUSTED_KEYS")
        return TrustedKeys([self.signer().public_key, *self.trusted_keys, *extra])


    @property
    def pitr_enabled(self) -> bool:
        return bool(str(self.pitr.get("PITR_PG_DATA") or "").strip())

    @property
    def engine_settings(self) -> EngineSettings:
        return EngineSettings(self.database_url, self.pg_dump, self.psql, self.restore_role,
                              self.lock_wait)


def _as_list(value: Any) -> list[str]:
    """A list setting as the host hands it (it parses strings from the environment
    and from the app's config at start-up); a string set later is one item."""
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    return [str(v).strip() for v in value or () if str(v).strip()]


def _as_flag(value: Any) -> bool:
    """A true/false setting as the host hands it (a bool), or a string set later."""
    if isinstance(value, str):
        return value.strip().lower() not in {"0", "false", "no", "off"}
    return bool(value)


def load_or_create_installation_id(path: str | os.PathLike) -> str:
    """The id in ``path``, or a new random one written there (mode 0600, whole
    before anyone reads it: :func:`guest_backup.files.read_or_create`)."""
    import uuid

    from guest_backup.files import read_or_create

    try:
        data = read_or_create(path, lambda: (uuid.uuid4().hex + "\n").encode())
    except OSError:
        raise BackupError(f"the installation id {path} cannot be read or written") from None
    text = data.decode("utf-8", "replace").strip()
    if not text:
        raise BackupError(f"the installation id {path} is empty")
    return text
