"""Uploads staged by a one-pass restore before the archive's verdict: never past
the size a plain archive's manifest declares for the member, and never so much
that the upload folder's disk is left with less than FREE_RESERVE. Before, a
signed archive of a few hundred KB staged 64 MiB of zeros per member (at any
ratio, up to 10,000 members) and was refused only at its end."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections import namedtuple
from pathlib import Path

import pytest

import guest_backup.ops.staging as staging
from guest_backup.archive.format import sidecar_path
from guest_backup.wiring import backup_context
from tests.helpers import make_backup

MiB = 1024 * 1024


@pytest.fixture
def backend() -> str:
    return "sqlite"


@pytest.fixture
def identity(tmp_path):
    from pyrage import x25519

    key = x25519.Identity.generate()
    path = tmp_path / "key.txt"
    path.write_text(f"{key}\n")
    return path, str(key.to_public())


def forged(app, archive: Path, dest: Path, identity, size: int, declared: int) -> Path:
    """``archive`` with three uploads of ``size`` zero bytes the manifest says are
    ``declared`` bytes each, signed and sealed again with the instance's key."""
    from pyrage import decrypt, encrypt, x25519

    encrypted = archive.name.endswith(".age")
    data = archive.read_bytes()
    if encrypted:
        data = decrypt(data, [x25519.Identity.from_str(identity[0].read_text().strip())])
    with zipfile.ZipFile(io.BytesIO(data)) as src:
        members = [(i.filename, src.read(i)) for i in src.infolist()]
    manifest = json.loads(dict(members)["manifest.json"])
    body = bytes(size)
    names = [f"uploads/big{k}.bin" for k in range(3)]
    for name in names:
        manifest["members"][name] = {"size": declared, "sha256": hashlib.sha256(body).hexdigest()}
    text = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    signer = backup_context(app).settings.signer()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in members:
            if name == "manifest.json":
                for big in names:
                    zf.writestr(big, body)
                zf.writestr(name, text)
            else:
                zf.writestr(name, signer.sign_manifest(text) if name == "manifest.sig"
                            else content)
    data = out.getvalue()
    if encrypted:
        data = encrypt(data, [x25519.Recipient.from_str(identity[1])])
    dest.mkdir(exist_ok=True)
    path = dest / archive.name
    path.write_bytes(data)
    claims = json.loads(sidecar_path(archive).read_bytes())["claims"]
    claims.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    sidecar_path(path).write_bytes(signer.seal(claims))
    return path


def restore_watching(app, monkeypatch, tmp_path, path: Path, identity=None):
    """Restore ``path`` into a new SQLite database; (result, the most bytes staged
    at once)."""
    most = [0]
    real = staging.StagedUploads.add

    def add(self, member):
        try:
            return real(self, member)
        finally:
            most[0] = max(most[0], sum(t.stat().st_size for t, _ in self._staged if t.exists()))

    monkeypatch.setattr(staging.StagedUploads, "add", add)
    args = ["restore", str(path), "--database-url", f"sqlite:///{tmp_path / 'target.db'}",
            "--uploads", str(tmp_path / "up"), "--yes"]
    if identity is not None:
        args += ["--identity", str(identity[0])]
    return app.test_cli_runner().invoke(args=args), most[0]


def test_a_member_larger_than_its_declared_size_stops_as_it_is_written(app, runner, tmp_path,
                                                                       monkeypatch, identity):
    path = forged(app, make_backup(runner), tmp_path / "forged", identity, 20 * MiB, 10)
    result, most = restore_watching(app, monkeypatch, tmp_path, path)
    assert result.exit_code == 1
    assert "uploads/big0.bin: larger than the manifest says" in result.output
    assert "nothing was restored" in result.output
    assert most <= 2 * MiB  # before: 60 MiB staged, refused at the archive's end
    assert not (tmp_path / "up").exists() or not any((tmp_path / "up").rglob("*.bin*"))


@pytest.mark.parametrize("kind", ["plain", "encrypted"])
def test_uploads_never_take_the_disks_last_free_space(app_config, request, tmp_path,
                                                      monkeypatch, identity, kind):
    """Declared honestly (an encrypted archive's manifest comes only at its end):
    the disk's free space, less the reserve, bounds what is staged."""
    if kind == "encrypted":
        app_config["BACKUP_AGE_RECIPIENTS"] = [identity[1]]
    app = request.getfixturevalue("app")
    archive = make_backup(app.test_cli_runner())
    path = forged(app, archive, tmp_path / "forged", identity, 20 * MiB, 20 * MiB)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(staging.shutil, "disk_usage",
                        lambda _: usage(10 ** 12, 0, staging.FREE_RESERVE + 30 * MiB))
    result, most = restore_watching(app, monkeypatch, tmp_path, path,
                                    identity if kind == "encrypted" else None)
    assert result.exit_code == 1, result.output
    assert "would leave less than 256 MiB free on the upload folder's disk" in result.output
    assert most <= 31 * MiB
    assert not any((tmp_path / "up").rglob("*.bin*")) if (tmp_path / "up").exists() else True
