"""Restore in one pass (issue 26): the archive is read once, decrypted, hashed,
screened and loaded as it streams, and the verdict at its end decides the
commit. No decrypted copy of the archive is written anywhere; an archive whose
last member's hash is wrong (behind a manifest re-signed with a trusted key), or
that is cut short, leaves the target exactly as it was, after the load ran."""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import tempfile
import threading
import zipfile
from pathlib import Path

import pytest
import sqlalchemy as sa

from guest_registration.extensions import db
from guest_backup.archive.format import sidecar_path
from guest_backup.engines.postgresql import PostgresEngine
from guest_backup.engines.sqlite import SQLiteEngine
from guest_backup.wiring import backup_context
from tests.helpers import make_backup, table_contents

GUESTS = 12_000  # random names: a dump of ~2.5 MB that compresses to about half


def _age():
    from pyrage import x25519  # the test extra installs it: missing, the tests fail

    return x25519


@pytest.fixture
def identity(tmp_path) -> tuple[Path, str]:
    key = _age().Identity.generate()
    offline = tmp_path / "offline"
    offline.mkdir()
    path = offline / "key.txt"
    path.write_text(f"{key}\n")
    return path, str(key.to_public())


@pytest.fixture(params=["plain", "encrypted"])
def kind(request) -> str:
    return request.param


@pytest.fixture
def archive(request, kind, app_config, tmp_path, identity) -> Path:
    """A signed archive (age-encrypted for ``kind == "encrypted"``) of a database
    with GUESTS guests of random names, and an upload."""
    if kind == "encrypted":
        app_config["BACKUP_AGE_RECIPIENTS"] = [identity[1]]
    app = request.getfixturevalue("app")
    runner = app.test_cli_runner()
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    with app.app_context():
        registration = db.session.execute(sa.text("SELECT min(id) FROM registration")).scalar()
        rows = [{"registration_id": registration, "first_name": secrets.token_hex(40),
                 "last_name": secrets.token_hex(40), "age_category": "adult",
                 "document_type": "passport", "document_number": secrets.token_hex(30),
                 "gdpr_consent": True} for _ in range(GUESTS)]
        db.session.execute(sa.text(
            "INSERT INTO guest (registration_id, first_name, last_name, age_category, "
            "document_type, document_number, gdpr_consent, created_at) VALUES (:registration_id, "
            ":first_name, :last_name, :age_category, :document_type, :document_number, "
            ":gdpr_consent, CURRENT_TIMESTAMP)"), rows)
        db.session.commit()
    uploads = Path(app.config["UPLOAD_FOLDER"])
    uploads.mkdir(parents=True, exist_ok=True)
    (uploads / "zz-last.txt").write_bytes(b"the last member of the archive\n")
    path = make_backup(runner)
    assert path.name.endswith(".age") == (kind == "encrypted")
    return path


def _restore(app, archive: Path, target: str, uploads: Path, identity, *extra: str):
    args = ["restore", str(archive), "--database-url", target, "--uploads", str(uploads),
            "--yes", *extra]
    if archive.name.endswith(".age"):
        args += ["--identity", str(identity[0])]
    return app.test_cli_runner().invoke(args=args)


def _plain_bytes(archive: Path, identity) -> bytes:
    if not archive.name.endswith(".age"):
        return archive.read_bytes()
    key = _age().Identity.from_str(identity[0].read_text().strip())
    from pyrage import decrypt

    return decrypt(archive.read_bytes(), [key])


def _rewrite(app, archive: Path, dest: Path, identity, *, zip_bytes: bytes | None = None,
             cut: int = 0) -> Path:
    """``archive`` again under its own name in ``dest``: with ``zip_bytes`` as its
    ZIP, cut by ``cut`` bytes at the end, encrypted again if it was, and sealed by
    the app's own (trusted) key for exactly these bytes."""
    data = zip_bytes if zip_bytes is not None else _plain_bytes(archive, identity)
    if archive.name.endswith(".age"):
        from pyrage import encrypt

        data = encrypt(data, [_age().Recipient.from_str(identity[1])])
    data = data[:len(data) - cut]
    dest.mkdir(exist_ok=True)
    out = dest / archive.name
    out.write_bytes(data)
    claims = json.loads(sidecar_path(archive).read_bytes())["claims"]
    claims.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    sidecar_path(out).write_bytes(backup_context(app).settings.signer().seal(claims))
    return out


def wrong_last_hash(app, archive: Path, dest: Path, identity) -> tuple[Path, str]:
    """The last member the manifest lists gets a wrong SHA-256 in the manifest,
    which is signed again with the app's key: only that hash is wrong."""
    with zipfile.ZipFile(io.BytesIO(_plain_bytes(archive, identity))) as zf:
        members = [(i.filename, zf.read(i)) for i in zf.infolist()]
    names = [n for n, _ in members]
    assert names[0] == "database.sql" and names[-2:] == ["manifest.json", "manifest.sig"]
    last = names[-3]
    manifest = json.loads(dict(members)["manifest.json"])
    manifest["members"][last]["sha256"] = hashlib.sha256(b"something else").hexdigest()
    manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    signature = backup_context(app).settings.signer().sign_manifest(manifest_bytes)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, {"manifest.json": manifest_bytes,
                               "manifest.sig": signature}.get(name, data))
    return _rewrite(app, archive, dest, identity, zip_bytes=out.getvalue()), last


@pytest.fixture
def loads(monkeypatch) -> list[str]:
    """The targets each engine's load was started on (the one-pass load ran)."""
    started: list[str] = []
    for cls in (PostgresEngine, SQLiteEngine):
        def spy(self, settings, url, stream, *, _original=cls.restore, **kw):
            started.append(url)
            return _original(self, settings, url, stream, **kw)
        monkeypatch.setattr(cls, "restore", spy)
    return started


def _target(request, backend: str, folder: Path, filled_from: Path | None, app, identity) -> str:
    """A database to restore into: new (empty) or already holding the archive's data."""
    folder.mkdir(exist_ok=True)
    url = (f"sqlite:///{folder / 'target.db'}" if backend == "sqlite"
           else request.getfixturevalue("new_pg_database")())
    if filled_from is not None:
        result = _restore(app, filled_from, url, folder / "first-uploads", identity)
        assert result.exit_code == 0, result.output
        with sa.create_engine(url).begin() as conn:  # differs from the archive
            conn.execute(sa.text("DELETE FROM guest WHERE id IN (SELECT max(id) FROM guest)"))
    return url


def _state(url: str) -> tuple:
    if url.startswith("sqlite"):
        path = Path(url.removeprefix("sqlite:///"))
        files = sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name)
                       or p.name.startswith(f".{path.name}"))
        return files, hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
    return table_contents(url, skip=()),


@pytest.mark.parametrize("mode", ["replace", "new"])
@pytest.mark.parametrize("damage", ["last hash", "truncated"])
def test_a_bad_end_leaves_the_target_as_it_was(request, backend, kind, archive, app, tmp_path,
                                               identity, loads, mode, damage):
    if damage == "last hash":
        bad, last = wrong_last_hash(app, archive, tmp_path / "bad", identity)
        assert last != "database.sql"  # the dump came before it: loaded, not committed
    else:
        bad = _rewrite(app, archive, tmp_path / "bad", identity, cut=200)
    target = _target(request, backend, tmp_path / "target", archive if mode == "replace" else None,
                     app, identity)
    before = _state(target)
    loads.clear()
    uploads = tmp_path / "restored-uploads"
    result = _restore(app, bad, target, uploads, identity, *(["--replace"] if mode == "replace"
                                                              else []))
    assert result.exit_code == 1 and "Traceback" not in result.output
    if damage == "last hash":
        assert "checksum mismatch" in result.output and "nothing was restored" in result.output
        assert loads == [target]  # the one-pass load ran, and did not commit
    elif kind == "encrypted":
        assert loads == [target]
    assert _state(target) == before
    assert not uploads.exists()
    good = _restore(app, archive, target, uploads, identity, "--replace")
    assert good.exit_code == 0, good.output  # and the same target takes a good archive


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize("kind", ["encrypted"])
@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("extra", ["duplicate", "unlisted", "photo"])
def test_members_after_the_dump_are_checked_as_they_come(request, backend, kind, archive, app,
                                                         tmp_path, identity, loads, extra):
    """Behind a valid seal and a re-signed manifest, a member no system backup has,
    coming after the dump, stops the pass: the load it started is not kept."""
    with zipfile.ZipFile(io.BytesIO(_plain_bytes(archive, identity))) as zf:
        members = [(i.filename, zf.read(i)) for i in zf.infolist()]
    name = {"duplicate": members[1][0], "unlisted": "uploads/planted.txt",
            "photo": "uploads/0b0e6c1e-3c52-4a43-9a6f-2f0f0b1b7d11.png"}[extra]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for i, (member, data) in enumerate(members):
            zf.writestr(member, data)
            if i == 0:
                zf.writestr(name, b"planted")
    bad = _rewrite(app, archive, tmp_path / "bad", identity, zip_bytes=out.getvalue())
    target = _target(request, backend, tmp_path / "target", None, app, identity)
    result = _restore(app, bad, target, tmp_path / "u", identity)
    assert result.exit_code == 1 and "nothing was restored" in result.output
    assert {"duplicate": "duplicate members", "unlisted": "not in the manifest",
            "photo": "guest-photo name"}[extra] in result.output
    assert loads == [target] and _state(target) == ([], None) and not (tmp_path / "u").exists()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_changed_archive_never_reaches_the_database(request, backend, kind, archive, app,
                                                      tmp_path, identity, loads):
    """The dump changed, the signed manifest and the seal kept: the file's hash
    against its seal (or, for a plain archive whose seal no longer matches, a whole
    verification first) refuses it before a byte is loaded."""
    with zipfile.ZipFile(io.BytesIO(_plain_bytes(archive, identity))) as zf:
        members = [(i.filename, zf.read(i)) for i in zf.infolist()]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data.replace(b"adult", b"child", 1) if name == "database.sql"
                        else data)
    data = out.getvalue()
    if kind == "encrypted":
        from pyrage import encrypt

        data = encrypt(data, [_age().Recipient.from_str(identity[1])])
    bad = tmp_path / "bad" / archive.name
    bad.parent.mkdir()
    bad.write_bytes(data)
    sidecar_path(bad).write_bytes(sidecar_path(archive).read_bytes())  # the old seal
    target = _target(request, backend, tmp_path / "target", None, app, identity)
    result = _restore(app, bad, target, tmp_path / "u", identity)
    assert result.exit_code == 1, result.output
    assert ("signature does not match the file" if kind == "encrypted"
            else "database.sql: checksum mismatch") in result.output
    assert loads == [] and _state(target) == ([], None)


class LargestFile(threading.Thread):
    """Polls folders and keeps the size of the largest file that appeared or
    changed in them since it started (a decrypted copy lives long enough to
    be seen: it is written, then read whole)."""

    def __init__(self, folders: list[Path], ignore: set[Path]) -> None:
        super().__init__(daemon=True)
        self.folders, self.ignore = folders, ignore
        self.before = {p: _stamp(p) for p in self._files()}
        self.largest, self.name_of_largest = 0, None
        self.stop = threading.Event()

    def _files(self):
        for folder in self.folders:
            for root, _, files in os.walk(folder):
                for name in files:
                    path = Path(root) / name
                    if path not in self.ignore:
                        yield path

    def run(self) -> None:
        while not self.stop.is_set():
            for path in self._files():
                stamp = _stamp(path)
                if stamp is not None and stamp != self.before.get(path) and stamp[0] > self.largest:
                    self.largest, self.name_of_largest = stamp[0], path.name
            self.stop.wait(0.002)


def _stamp(path: Path):
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def test_no_decrypted_copy_is_written(request, backend, kind, archive, app, tmp_path, identity,
                                      monkeypatch, loads):
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    plain = _plain_bytes(archive, identity)
    with zipfile.ZipFile(io.BytesIO(plain)) as zf:
        dump_size, zip_size = zf.getinfo("database.sql").file_size, len(plain)
    assert dump_size > 2_000_000 and zip_size > 1_000_000
    target = _target(request, backend, tmp_path / "target", None, app, identity)
    uploads = tmp_path / "restored-uploads"
    own = Path(app.config["DATABASE_URL"].removeprefix("sqlite:///"))
    watcher = LargestFile([scratch, Path(app.instance_path), Path(app.config["BACKUP_FOLDER"]),
                           tmp_path / "restored-uploads", archive.parent],
                          {own, Path(f"{own}-wal"), Path(f"{own}-journal"), Path(f"{own}-shm")})
    watcher.start()
    try:
        result = _restore(app, archive, target, uploads, identity)
    finally:
        watcher.stop.set()
        watcher.join()
    assert result.exit_code == 0, result.output
    assert loads == [target]
    # nothing near the size of the ZIP (let alone the dump) was written anywhere watched
    assert watcher.largest < zip_size // 10, (watcher.name_of_largest, watcher.largest)
    assert list(scratch.iterdir()) == []
    assert table_contents(target)["guest"] == table_contents(app.config["DATABASE_URL"])["guest"]
