"""BACKUP_SIGNING_KEY is the path of the key file. Given the key itself (its PEM
text), it is refused in one line that never shows the value: before, it was
taken for a path, ``backup-key`` printed the whole private key, and a new key
was made under folders named after the PEM text and signed the archives."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sqlite = pytest.mark.parametrize("backend", ["sqlite"])
REFUSED = "Error: BACKUP_SIGNING_KEY must be the path of the key file, not the key"


def pem() -> str:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode().strip()


@sqlite
@pytest.mark.parametrize("command", ["backup-key", "backup"])
@pytest.mark.parametrize("value", ["pem", "two lines"])
def test_the_key_itself_is_refused_without_showing_it(app, runner, tmp_path, monkeypatch,
                                                      command, value):
    secret = pem() if value == "pem" else f"{tmp_path}/key.pem\n{tmp_path}/other.pem"
    body = secret.splitlines()[1]
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    app.config["BACKUP_SIGNING_KEY"] = secret
    result = runner.invoke(args=[command])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1] == REFUSED
    assert body not in result.output and "BEGIN" not in result.output
    assert list(workdir.rglob("*")) == []  # no key made under folders named after the text
    folder = Path(app.config["BACKUP_FOLDER"])
    assert not [p for p in folder.glob("system_backup_*")]


@sqlite
def test_backup_key_names_the_key_files_resolved_path(app, runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app.config["BACKUP_SIGNING_KEY"] = "keys/../signing.pem"
    result = runner.invoke(args=["backup-key"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0] == (f"archives are signed with the key in {tmp_path / 'signing.pem'}; "
                        f"its public key:")
    assert lines[-1].startswith("ed25519:")
    assert (tmp_path / "signing.pem").is_file()
