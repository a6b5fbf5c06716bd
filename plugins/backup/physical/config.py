"""The PITR settings as plain values, and the pgBackRest configuration file of this
installation written from them.

The file holds the repository (a local folder, or S3 with the keys taken from
boto3's standard environment variables) and its encryption passphrase: PostgreSQL
runs ``archive-push`` without our environment, so the file is the one place they
can be, readable by the data directory's owner only (mode 0600).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

from guest_backup.physical import PitrError

_STANZA = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class S3Repo:
    """``PITR_REPO_S3_URL`` with the endpoint, region and keys of the environment."""

    bucket: str
    prefix: str
    endpoint: str
    port: int
    region: str
    key: str = field(default="", repr=False)
    secret: str = field(default="", repr=False)
    token: str = field(default="", repr=False)

    @classmethod
    def parse(cls, url: str, environ: Mapping[str, str]) -> "S3Repo":
        parts = urlparse(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise PitrError(f"PITR_REPO_S3_URL must look like s3://bucket/prefix, not {url!r}")
        endpoint = (environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
                    or "").strip()
        region = (environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
                  or "us-east-1").strip()
        host, port = f"s3.{region}.amazonaws.com", 443
        if endpoint:
            ep = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
            if ep.scheme != "https":
                raise PitrError("pgBackRest reaches S3 over TLS only: AWS_ENDPOINT_URL must be "
                                "an https:// address")
            host, port = ep.hostname or "", ep.port or 443
        return cls(parts.netloc, "/" + parts.path.strip("/"), host, port, region,
                   environ.get("AWS_ACCESS_KEY_ID", ""), environ.get("AWS_SECRET_ACCESS_KEY", ""),
                   environ.get("AWS_SESSION_TOKEN", ""))


@dataclass(frozen=True)
class PitrConfig:
    """Everything the driver needs, from the PITR_* settings."""

    pg_data: Path
    folder: Path
    repo_path: Path
    stanza: str = "guest-registration"
    pg_port: int = 5432
    pg_socket: str = "/var/run/postgresql"
    bindir: str = ""
    pgbackrest: str = "pgbackrest"
    archive_timeout: int = 60
    retention_full: int = 2
    s3: S3Repo | None = None
    s3_url: str = ""
    verify_tls: bool = True
    uri_style: str = "host"
    cipher_pass: str = field(default="", repr=False)

    @classmethod
    def from_config(cls, config: Mapping[str, Any],
                    environ: Mapping[str, str] | None = None) -> "PitrConfig | None":
        """None when PITR is off (PITR_PG_DATA empty)."""
        data = str(config.get("PITR_PG_DATA") or "").strip()
        if not data:
            return None
        environ = os.environ if environ is None else environ
        _refuse_control(config, environ)
        folder = Path(str(config.get("PITR_FOLDER") or "")).expanduser()
        s3_url = str(config.get("PITR_REPO_S3_URL") or "").strip()
        stanza = str(config.get("PITR_STANZA") or "guest-registration").strip()
        if not _STANZA.match(stanza):
            raise PitrError(f"PITR_STANZA {stanza!r}: letters, digits, '-', '_' and '.' only")
        style = str(config.get("PITR_S3_URI_STYLE") or "host").strip().lower()
        if style not in ("host", "path"):
            raise PitrError("PITR_S3_URI_STYLE must be host or path")
        return cls(
            pg_data=Path(data).expanduser(), folder=folder,
            repo_path=Path(str(config.get("PITR_REPO_PATH") or folder / "repo")).expanduser(),
            stanza=stanza, pg_port=int(config.get("PITR_PG_PORT") or 5432),
            pg_socket=str(config.get("PITR_PG_SOCKET") or "/var/run/postgresql"),
            bindir=str(config.get("PITR_PG_BINDIR") or ""),
            pgbackrest=str(config.get("PITR_PGBACKREST") or "pgbackrest"),
            archive_timeout=int(config.get("PITR_ARCHIVE_TIMEOUT") or 60),
            retention_full=max(1, int(config.get("PITR_RETENTION_FULL") or 2)),
            s3=S3Repo.parse(s3_url, environ) if s3_url else None, s3_url=s3_url,
            verify_tls=_flag(config.get("PITR_S3_VERIFY_TLS", True)), uri_style=style,
            cipher_pass=str(config.get("PITR_CIPHER_PASS") or ""))

    @property
    def conf_path(self) -> Path:
        return self.folder / "pgbackrest.conf"

    def folders(self) -> list[Path]:
        """The folders pgBackRest writes to (the owner's): log, lock, spool, repository."""
        local = [] if self.s3 else [self.repo_path]
        return [self.folder / "log", self.folder / "lock", self.folder / "spool", *local]

    @property
    def repository(self) -> str:
        """Where the repository is, for people (no keys)."""
        return self.s3_url if self.s3 else str(self.repo_path)

    def binary(self) -> str:
        """pgBackRest's absolute path (PostgreSQL runs archive_command with its own PATH)."""
        found = shutil.which(self.pgbackrest)
        if not found:
            raise PitrError(f"pgBackRest is not installed ({self.pgbackrest!r} is not on PATH; "
                            f"apt-get install pgbackrest)")
        return found

    def archive_command(self, binary: str) -> str:
        return (f"{shlex.quote(binary)} --config={shlex.quote(str(self.conf_path))} "
                f"--stanza={self.stanza} archive-push %p")

    def secrets(self) -> list[str]:
        """Values never to show (masked in any message)."""
        values = [self.cipher_pass]
        if self.s3:
            values += [self.s3.secret, self.s3.token, self.s3.key]
        return [v for v in values if v]

    def render(self) -> str:
        """The configuration file's text."""
        lines = ["# Written by `manage.py pitr setup`; run it again after changing PITR_* "
                 "settings.", "[global]", f"log-path={self.folder / 'log'}",
                 f"lock-path={self.folder / 'lock'}", f"spool-path={self.folder / 'spool'}",
                 "log-level-file=info", "start-fast=y", "compress-type=lz4",
                 f"repo1-retention-full={self.retention_full}", "repo1-bundle=y"]
        lines += self._repo_lines()
        if self.cipher_pass:
            lines += ["repo1-cipher-type=aes-256-cbc", f"repo1-cipher-pass={self.cipher_pass}"]
        lines += ["", f"[{self.stanza}]", f"pg1-path={self.pg_data}", f"pg1-port={self.pg_port}",
                  f"pg1-socket-path={self.pg_socket}", ""]
        return "\n".join(lines)

    def _repo_lines(self) -> list[str]:
        if self.s3 is None:
            return [f"repo1-path={self.repo_path}"]
        s3 = self.s3
        lines = ["repo1-type=s3", f"repo1-path={s3.prefix}", f"repo1-s3-bucket={s3.bucket}",
                 f"repo1-s3-endpoint={s3.endpoint}", f"repo1-s3-region={s3.region}",
                 f"repo1-s3-uri-style={self.uri_style}", f"repo1-storage-port={s3.port}",
                 f"repo1-storage-verify-tls={'y' if self.verify_tls else 'n'}"]
        if s3.key and s3.secret:
            lines += [f"repo1-s3-key={s3.key}", f"repo1-s3-key-secret={s3.secret}"]
            lines += [f"repo1-s3-token={s3.token}"] if s3.token else []
        else:  # no keys in the environment: the machine's instance role
            lines += ["repo1-s3-key-type=auto"]
        return lines


#: the environment variables whose values go into the file (S3)
_ENVIRONMENT = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION",
                "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def _refuse_control(config: Mapping[str, Any], environ: Mapping[str, str]) -> None:
    """Refuse a setting holding a line break or another control character: in
    pgbackrest.conf it would end its line and start another (a base64 passphrase
    wrapped at 64 characters: its tail an option of its own, shown by pgBackRest in
    a warning). The setting is named, its value never shown (it may be a secret)."""
    values = [(name, value) for name, value in config.items() if name.startswith("PITR_")]
    if config.get("PITR_REPO_S3_URL"):
        values += [(name, environ.get(name)) for name in _ENVIRONMENT]
    for name, value in values:
        if isinstance(value, str) and any(unicodedata.category(ch) == "Cc" for ch in value):
            raise PitrError(f"{name} holds a line break or another control character: "
                            f"set it on one line, without them")


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off", "n", "")
    return bool(value)
