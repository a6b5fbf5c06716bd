"""The states notifications know (which are worth a message, its title, how it says
why a run failed), and where they keep the last known state of each kind: one
JSON file in the instance folder (0600, replaced atomically, under an flock), or
a Redis hash shared by every machine of the installation when ``REDIS_URL`` is
set."""

from __future__ import annotations

import json
import os
from pathlib import Path

from guest_backup.archive.manifest import now_text
from guest_backup.engines import held_flock
from guest_backup.errors import BackupError
from guest_backup.files import write_private
from guest_backup.ops.context import BackupContext, shared

STATE_FILE = "notify-state.json"

#: states worth a message when they begin
BAD = frozenset({"failed", "degraded", "unreachable", "excess"})
#: (kind, new state) -> title; a kind back to "ok" after a bad state has its own
TITLES = {
    ("backup", "failed"): "Backup failed",
    ("backup", "ok"): "Backup recovered",
    ("retention", "failed"): "Backup retention failed",
    ("retention", "ok"): "Backup retention applied again",
    ("drill", "failed"): "Restore drill failed",
    ("drill", "ok"): "Restore drill passed again",
    ("health", "degraded"): "Backup health degraded",
    ("health", "ok"): "Backup health recovered",
    ("health", "worse"): "Backup health: new problems",
    ("storage", "unreachable"): "Backup storage unreachable",
    ("storage", "ok"): "Backup storage reachable again",
    ("prune", "excess"): "Retention removed many archives",
}


def why(outcome: BaseException) -> str:
    """What a message may say of a run that raised ``outcome``: a BackupError's safe
    text, that it was interrupted, or the type only (the rest is in the server log)."""
    if isinstance(outcome, BackupError):
        return str(outcome)
    if not isinstance(outcome, Exception):  # KeyboardInterrupt: SIGTERM or Ctrl-C
        return "it was interrupted (SIGTERM or Ctrl-C)"
    return f"{type(outcome).__name__}; details are in the server log"


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


def store_error(exc: BaseException) -> bool:
    """An error of the state store: Redis's own, or the state file's."""
    return isinstance(exc, OSError) or type(exc).__module__.split(".")[0] == "redis"


#: the kind under which the problems of degraded health are kept (comma-separated keys)
HEALTH_PROBLEMS = "health-problems"


def problem_key(problem: dict) -> str:
    """What makes a health problem (``problem_ids``' entry) news: its id, and the
    storage it is about (a second storage with no archive is news too)."""
    storage = problem.get("params", {}).get("storage")
    return f"{problem['id']}:{storage}" if storage else problem["id"]


def known_problems(store) -> set[str] | None:
    """The problem keys health was last told with; None when none were kept (a
    state from before they were)."""
    raw = store.get(HEALTH_PROBLEMS)
    return None if raw is None else {k for k in raw.split(",") if k}


def remember_problems(store, keys) -> None:
    store.set(HEALTH_PROBLEMS, ",".join(sorted(keys)))
