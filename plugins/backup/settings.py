"""The backup plugin's settings (declared through the host's
``register_settings`` hook, so each is also read from the environment)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

from .engines import EngineSettings


def defaults(instance_path: str) -> dict[str, Any]:
    return {
        #: where archives are written (mode 0700)
        "BACKUP_FOLDER": os.path.join(instance_path, "backups"),
        #: keep only the N newest archives after each backup (0 = keep all)
        "BACKUP_KEEP": 0,
        #: deflate level of archives: 3 is 2.4x faster than 6 for ~10% more bytes
        "BACKUP_COMPRESSLEVEL": 3,
        #: rows fetched per round trip by a streaming export
        "EXPORT_FETCH_ROWS": 2000,
        #: the PostgreSQL client tools (at least the server's major version)
        "PG_DUMP": "pg_dump",
        "PSQL": "psql",
    }


@dataclass
class BackupSettings:
    """Everything a backup needs, as plain values (no Flask below this line)."""

    database_url: str
    upload_folder: str
    backup_folder: str
    app_version: str
    pg_dump: str = "pg_dump"
    psql: str = "psql"
    keep: int = 0
    compresslevel: int = 3

    @classmethod
    def from_config(cls, config: Mapping[str, Any], app_version: str) -> "BackupSettings":
        return cls(
            database_url=config["DATABASE_URL"], upload_folder=config["UPLOAD_FOLDER"],
            backup_folder=config["BACKUP_FOLDER"], app_version=app_version,
            pg_dump=config["PG_DUMP"], psql=config["PSQL"], keep=int(config["BACKUP_KEEP"] or 0),
            compresslevel=int(config["BACKUP_COMPRESSLEVEL"]),
        )

    @property
    def engine_settings(self) -> EngineSettings:
        return EngineSettings(self.database_url, self.pg_dump, self.psql)
