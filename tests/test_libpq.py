"""The libpq tools' versions (guest_backup.engines.libpq.tool_version): asked once,
reused for a minute, asked again when the tool changes; a failure not remembered."""

from __future__ import annotations

import time
from pathlib import Path

from guest_backup.engines import libpq


def tool(path: Path, log: Path, body: str) -> str:
    path.write_text(f"#!/bin/sh\necho run >> {log}\n{body}\n")
    path.chmod(0o755)
    return str(path)


def runs(log: Path) -> int:
    return log.read_text().count("run") if log.exists() else 0


def test_a_version_is_asked_once_then_reused(tmp_path):
    log = tmp_path / "log"
    path = tool(tmp_path / "pg_dump", log, 'echo "pg_dump (PostgreSQL) 15.14"')
    assert [libpq.tool_version(path) for _ in range(3)] == ["15.14"] * 3
    assert runs(log) == 1


def test_a_replaced_tool_is_asked_again(tmp_path):
    log = tmp_path / "log"
    path = tool(tmp_path / "psql", log, 'echo "psql (PostgreSQL) 15.13"')
    assert libpq.tool_version(path) == "15.13" and not libpq.psql_restricts(path)
    tool(tmp_path / "psql", log, 'echo "psql (PostgreSQL) 15.14" # upgraded')
    assert libpq.tool_version(path) == "15.14" and libpq.psql_restricts(path)
    assert runs(log) == 2


def test_a_version_is_asked_again_after_a_minute(tmp_path):
    log = tmp_path / "log"
    path = tool(tmp_path / "pg_dump", log, 'echo "pg_dump (PostgreSQL) 16.10"')
    assert libpq.tool_version(path) == "16.10"
    for key, (when, version) in list(libpq._versions.items()):
        if key[0] == path:
            libpq._versions[key] = (when - 61, version)
    assert libpq.tool_version(path) == "16.10"
    assert runs(log) == 2


def test_a_failure_is_not_remembered(tmp_path):
    log = tmp_path / "log"
    path = tool(tmp_path / "pg_dump", log, "exit 1")
    assert libpq.tool_version(path) is None
    assert libpq.tool_version(path) is None
    assert runs(log) == 2
    assert libpq.tool_version(str(tmp_path / "missing")) is None
