"""The ``pgbackrest`` commands, always as the data directory's owner and always
with this installation's configuration file (``--config``).

A failure becomes one line: pgBackRest's error code and the first line of its
message, secrets masked, never its whole stderr.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from guest_backup.physical import PitrBusy, PitrError
from guest_backup.physical.config import PitrConfig
from guest_backup.physical.owner import Owner

_ERROR = re.compile(r"^(?:\S+\s+\S+\s+P\d+\s+)?ERROR:\s*\[(\d+)\]:\s*(.*)$")
#: pgBackRest's lock error (another backup, expire or stanza command of the stanza runs)
LOCK_ACQUIRE = 50
KINDS = ("full", "diff", "incr")


class PgBackRestError(PitrError):
    """A pgBackRest command failed: ``code`` and a one-line summary."""

    def __init__(self, command: str, code: int | None, summary: str) -> None:
        self.command, self.code, self.summary = command, code, summary
        where = f"error {code:03d}" if code is not None else "failed"
        super().__init__(f"pgBackRest {command} {where}: {summary}")


def summarise(stderr: str, secrets: list[str], limit: int = 240) -> tuple[int | None, str]:
    """pgBackRest's error code and the first line of its message (masked, short)."""
    code, line = None, ""
    for raw in stderr.splitlines():
        m = _ERROR.match(raw.strip())
        if m:
            code, line = int(m.group(1)), m.group(2)
            break
    if not line:
        line = next((raw.strip() for raw in stderr.splitlines() if raw.strip()), "no message")
    for secret in secrets:
        line = line.replace(secret, "***")
    return code, line if len(line) <= limit else line[:limit - 1] + "…"


def _exists(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # not ours to look into: pgBackRest will say
        return True


class PgBackRest:
    """pgBackRest for one stanza, run as ``owner`` with ``config``'s file."""

    def __init__(self, config: PitrConfig, owner: Owner) -> None:
        self.config = config
        self.owner = owner

    def run(self, command: str, *options: str, timeout: float = 3600) -> str:
        """The command's standard output; PgBackRestError (PitrBusy on its lock)."""
        conf = self.config
        self.owner.require()
        if not _exists(conf.conf_path):
            raise PitrError(f"there is no pgBackRest configuration at {conf.conf_path}: "
                            f"run `manage.py pitr setup` first")
        argv = [conf.binary(), f"--config={conf.conf_path}", f"--stanza={conf.stanza}",
                "--log-level-console=off", "--log-level-stderr=error", *options, command]
        proc = self.owner.run(argv, timeout=timeout)
        if proc.returncode != 0:
            code, line = summarise(proc.stderr + "\n" + proc.stdout, conf.secrets())
            if code == LOCK_ACQUIRE:
                raise PitrBusy(f"another pgBackRest backup of stanza {conf.stanza} is running "
                               f"(wait for it to finish)")
            raise PgBackRestError(command, code, line)
        return proc.stdout

    def info(self) -> dict[str, Any]:
        """The stanza's entry of ``info --output=json``."""
        out = self.run("info", "--output=json", timeout=300)
        try:
            stanzas = json.loads(out)
        except ValueError:
            raise PitrError("pgBackRest info did not answer JSON") from None
        for entry in stanzas:
            if entry.get("name") == self.config.stanza:
                return entry
        raise PitrError(f"pgBackRest knows no stanza {self.config.stanza}")

    def stanza_create(self) -> None:
        self.run("stanza-create", timeout=600)

    def check(self) -> None:
        """pgBackRest's own check: the cluster, the repository, and one WAL segment
        archived end to end (it switches the WAL and waits for it)."""
        self.run("check", "--archive-timeout=120", timeout=600)

    def backup(self, kind: str) -> None:
        if kind not in KINDS:
            raise PitrError(f"the backup type must be one of {', '.join(KINDS)}")
        self.run("backup", f"--type={kind}", timeout=24 * 3600)

    def restore(self, into: Path, *, label: str, target: str | None) -> None:
        """Restore backup ``label`` into the empty folder ``into``, set to recover to
        ``target`` (a timestamp; None: the end of the archive) and promote, with
        archiving off (the new cluster never writes into this repository)."""
        options = [f"--pg1-path={into}", f"--set={label}", "--archive-mode=off"]
        if target is None:
            options += ["--type=default"]
        else:
            options += ["--type=time", f"--target={target}", "--target-action=promote"]
        self.run("restore", *options, timeout=24 * 3600)
