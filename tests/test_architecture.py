"""The shape of the code, checked: the import-linter contracts in setup.cfg (the
backup plugin's layers, no Flask or host below ``ops``, no import cycles in the
host or the plugin), no function over 60 lines and no module over 300."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
MAX_FUNCTION_LINES = 60
#: ARCHITECTURE.md's "a few hundred lines": past this, a module holds more than one owner
MAX_MODULE_LINES = 300


def lint_imports(cwd: Path, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if extra_path is not None:  # found before the installed (editable) packages
        env["PYTHONPATH"] = str(extra_path)
    return subprocess.run([str(LINT_IMPORTS), "--config", str(ROOT / "setup.cfg"),
                           "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_import_contracts_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    for contract in ("Backup plugin layers", "Nothing under ops", "backup plugin's packages",
                     "host's modules"):
        assert contract in result.stdout, result.stdout
    assert "BROKEN" not in result.stdout


def test_the_contract_fails_when_archive_imports_flask(tmp_path):
    """A copy of the plugin whose archive/ imports Flask breaks the contract."""
    copy = tmp_path / "guest_backup"
    shutil.copytree(ROOT / "plugins" / "backup", copy,
                    ignore=shutil.ignore_patterns("__pycache__", "translations"))
    target = copy / "archive" / "format.py"
    target.write_text(target.read_text() + "\n\nimport flask  # noqa: E402,F401\n")
    result = lint_imports(tmp_path, extra_path=tmp_path)
    assert result.returncode != 0, result.stdout
    assert "guest_backup.archive.format -> flask" in result.stdout, result.stdout[-3000:]


def _long_functions(folder: Path) -> list[str]:
    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines})")
    return found


def test_no_function_is_longer_than_60_lines():
    long = _long_functions(ROOT / "guest_registration") + _long_functions(ROOT / "plugins")
    assert long == []


def test_no_module_is_longer_than_300_lines():
    """Each module one responsibility: the ten that grew past 300 lines were split
    along their seams (notify_state, ledger_copies, erasure_plan, export.request,
    zipcheck, pgload, health_problems, pitr_recover, screening, the scratch
    database's drop in browse_load)."""
    long = [f"{path.relative_to(ROOT)} ({n})"
            for folder in ("guest_registration", "plugins")
            for path in sorted((ROOT / folder).rglob("*.py"))
            if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES]
    assert long == []
