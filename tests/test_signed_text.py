"""Text from a signed manifest or seal (signed, but by a key that may be stolen)
reaches refusal messages and the audit log only as one short line. Found by the
review of 2026-12-05: a re-signed ``database.engine`` of 5,000 characters with
line breaks was printed whole ("Error: the archive holds a postgresql dump.\\n
Restored 119 rows; all checks passed.\\n…") and stored in the audit entry."""

from __future__ import annotations

import json
import zipfile

import pytest

from guest_backup.archive.format import sidecar_path
from guest_backup.archive.signing import seal_claims
from guest_backup.archive.manifest import Binding
from guest_backup.wiring import backup_context
from tests.helpers import make_backup

LIE = "postgresql\nRestored 119 rows; all checks passed.\n" + "X" * 5000


@pytest.fixture
def backend() -> str:
    return "sqlite"


def resigned(app, archive, change) -> None:
    with zipfile.ZipFile(archive) as src:
        members = {i.filename: src.read(i) for i in src.infolist()}
    manifest = json.loads(members["manifest.json"])
    change(manifest)
    members["manifest.json"] = json.dumps(manifest).encode()
    members["manifest.sig"] = backup_context(app).settings.signer().sign_manifest(
        members["manifest.json"])
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
        for name, data in members.items():
            out.writestr(name, data)
    sidecar_path(archive).unlink()


@pytest.mark.parametrize("field", ["engine", "format_version"])
def test_signed_text_is_shown_on_one_short_line(app, runner, tmp_path, field):
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    archive = make_backup(runner)
    if field == "engine":
        resigned(app, archive, lambda m: m["database"].update(engine=LIE))
    else:
        resigned(app, archive, lambda m: m.update(format_version=LIE))
    for args in (["verify", str(archive)],
                 ["restore", str(archive), "--yes", "--replace", "--uploads", str(tmp_path / "u")]):
        result = runner.invoke(args=args)
        assert result.exit_code == 1
        forged = [line for line in result.output.splitlines()
                  if line.startswith("Restored") or "X" * 50 in line]
        assert forged == [], result.output[:600]
        assert len(result.output) < 800, result.output[:600]


def test_a_seal_with_an_odd_engine_is_unreadable():
    envelope = json.dumps({"claims": {"name": "x", "size": 1, "sha256": "0", "created_at": "",
                                      "installation": "i", "engine": LIE}}).encode()
    assert seal_claims(envelope) is None


def test_signed_names_and_dates_are_shown_without_line_breaks():
    problems = Binding("system_backup_20250101_000000.zip").problems(
        {"name": "a\nRestored: all checks passed", "created_at": "b\nOK"}, None)
    assert problems and all("\n" not in p and len(p) < 200 for p in problems)
