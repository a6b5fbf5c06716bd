"""Files made once and kept: the signing key, the installation id and the host's
secrets. A full disk while one is written leaves nothing behind (it left an empty
key file, and every later backup failed); an empty file left by an earlier
version is replaced; processes making one at once all use the same contents."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap

import pytest

from guest_backup.archive.signing import Signer, load_or_create_key
from guest_backup.errors import BackupError
from guest_backup.files import write_private
from guest_backup.ops.settings import load_or_create_installation_id
from guest_registration.instance_folder import secret_from_file as _secret_from_file

from tests.helpers import missing

FULL_DISK = textwrap.dedent("""
    import resource, signal, sys
    from guest_backup.archive.signing import load_or_create_key
    from guest_backup.errors import BackupError
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit: EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (40, 40))
    try:
        load_or_create_key(sys.argv[1])
    except BackupError as exc:
        print("refused:", exc)
    else:
        print("made")
""")


def test_a_key_that_cannot_be_written_whole_leaves_no_file(tmp_path):
    path = tmp_path / "keys" / "signing.pem"
    out = subprocess.run([sys.executable, "-c", FULL_DISK, str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("refused: the signing key"), out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    assert not path.exists()
    assert not [p.name for p in path.parent.iterdir()]  # no temporary file either
    # with room again the next backup makes the key (it found an empty file before)
    assert Signer(load_or_create_key(path)).public_key.startswith("ed25519:")


def test_an_empty_key_file_left_behind_is_replaced(tmp_path):
    path = tmp_path / "signing.pem"
    path.write_bytes(b"")
    key = load_or_create_key(path)
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert Signer(load_or_create_key(path)).public_key == Signer(key).public_key
    assert path.stat().st_mode & 0o777 == 0o600


def test_an_empty_installation_id_is_replaced(tmp_path):
    path = tmp_path / "installation_id"
    path.write_text("\n")
    made = load_or_create_installation_id(path)
    assert len(made) == 32 and load_or_create_installation_id(path) == made


def test_a_key_file_that_is_not_a_key_is_still_refused(tmp_path):
    path = tmp_path / "signing.pem"
    path.write_text("not a key\n")
    with pytest.raises(BackupError, match="not an unencrypted PEM private key"):
        load_or_create_key(path)
    assert path.read_text() == "not a key\n"  # never replaced: only an empty file is


def _made(kind, path, start, results):
    start.wait()
    if kind == "key":
        results.put(Signer(load_or_create_key(path)).public_key)
    elif kind == "installation":
        results.put(load_or_create_installation_id(path))
    else:
        from pathlib import Path
        results.put(_secret_from_file(Path(path).parent, Path(path).name))


@pytest.mark.parametrize("kind", ["key", "installation", "secret"])
def test_processes_making_it_at_once_all_use_the_same(tmp_path, kind):
    ctx = multiprocessing.get_context("fork")
    for attempt in range(10):
        folder = tmp_path / f"round{attempt}"
        folder.mkdir(mode=0o700)
        path = folder / "made"
        start, results = ctx.Barrier(6), ctx.Queue()
        workers = [ctx.Process(target=_made, args=(kind, str(path), start, results))
                   for _ in range(6)]
        for worker in workers:
            worker.start()
        seen = [results.get(timeout=60) for _ in workers]
        for worker in workers:
            worker.join(timeout=60)
            assert worker.exitcode == 0
        assert len(set(seen)) == 1, f"round {attempt}: {len(set(seen))} different values"
        assert [p.name for p in folder.iterdir()] == ["made"]


def test_made_by_root_in_the_service_users_folder_it_is_that_users(tmp_path):
    """``status`` or ``backup-key`` typed as root before the service's first backup
    left a root-owned 0600 key: the service could not read it, every backup failed."""
    if os.geteuid() != 0:
        missing("REQUIRE_PGBACKREST", "giving a file to another user needs root (as PITR does)")
    folder = tmp_path / "instance"
    folder.mkdir(mode=0o700)
    os.chown(folder, 65534, 65534)
    load_or_create_key(folder / "signing.pem")
    load_or_create_installation_id(folder / "installation_id")
    _secret_from_file(folder, "secret_key")
    write_private(folder / "state.json", b"{}")
    owners = {p.name: (p.stat().st_uid, p.stat().st_mode & 0o777) for p in folder.iterdir()}
    assert owners == {name: (65534, 0o600) for name in
                      ("signing.pem", "installation_id", "secret_key", "state.json")}
    # a folder of root's own keeps root's files
    own = tmp_path / "root-instance"
    own.mkdir(mode=0o700)
    load_or_create_key(own / "signing.pem")
    assert (own / "signing.pem").stat().st_uid == 0
