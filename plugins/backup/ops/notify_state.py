"""Where notifications keep the last known state of each kind: one JSON file in
the instance folder (0600, replaced atomically, under an flock), or a Redis hash
shared by every machine of the installation when ``REDIS_URL`` is set."""

from __future__ import annotations

import json
import os
from pathlib import Path

from guest_backup.archive.manifest import now_text
from guest_backup.engines import held_flock
from guest_backup.files import write_private
from guest_backup.ops.context import BackupContext, shared

STATE_FILE = "notify-state.json"


class FileStates:
    """The last state of each kind in one JSON file (0600, replaced whole)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / STATE_FILE

    def locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return held_flock(self.path.with_name(f".{STATE_FILE}.lock"))

    def read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, kind: str) -> str | None:
        entry = self.read().get(kind)
        return entry.get("state") if isinstance(entry, dict) else None

    def set(self, kind: str, state: str) -> None:
        data = self.read()
        data[kind] = {"state": state, "since": now_text()}
        write_private(self.path, json.dumps(data, indent=1, sort_keys=True).encode())


class RedisStates:
    """The same in a Redis hash, shared by every machine of the installation."""

    def __init__(self, client, key: str) -> None:
        self.client, self.key = client, key

    def locked(self):
        return self.client.lock(self.key + ":lock", timeout=120, blocking_timeout=60)

    def read(self) -> dict:
        found = {}
        for kind, raw in self.client.hgetall(self.key).items():
            try:
                found[kind.decode() if isinstance(kind, bytes) else kind] = json.loads(raw)
            except ValueError:
                continue
        return found

    def get(self, kind: str) -> str | None:
        raw = self.client.hget(self.key, kind)
        try:
            return json.loads(raw).get("state") if raw else None
        except (ValueError, AttributeError):
            return None

    def set(self, kind: str, state: str) -> None:
        self.client.hset(self.key, kind, json.dumps({"state": state, "since": now_text()}))


def state_store(ctx: BackupContext) -> FileStates | RedisStates:
    return shared(ctx, lambda c: RedisStates(c, ctx.redis_key("notify-state")),
                  lambda: FileStates(ctx.instance_path))
