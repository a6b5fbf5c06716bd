"""With age encryption a full disk is still said in plain words ("the disk is
full; no archive was written"), not "age encryption failed (EncryptError)": the
sink's OSError, raised inside pyrage's thread, is what the encryptor raises."""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pyrage
import pytest

from guest_backup.archive.encryption import EncryptingWriter, parse_recipients
from guest_backup.ops.create import safe_message
from tests.helpers import ROOT


def recipient() -> str:
    return str(pyrage.x25519.Identity.generate().to_public())


class FullDisk:
    """A sink whose disk fills up after ``room`` bytes."""

    def __init__(self, room: int, code: int = errno.ENOSPC) -> None:
        self.room, self.code, self.written = room, code, 0

    def write(self, data: bytes) -> int:
        if self.written + len(data) > self.room:
            raise OSError(self.code, os.strerror(self.code))
        self.written += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def encrypt_onto(sink, size: int) -> BaseException:
    enc = EncryptingWriter(sink, parse_recipients([recipient()]))
    chunk = os.urandom(64 * 1024)
    try:
        for _ in range(size // len(chunk)):
            enc.write(chunk)
        enc.close()
    except BaseException as exc:  # noqa: B036 - what the writer raises is the point
        enc.abort()
        return exc
    pytest.fail("the full disk went unnoticed")


@pytest.mark.parametrize("code,said", [
    (errno.ENOSPC, "the disk is full; no archive was written"),
    (errno.EFBIG, "the archive grew beyond the allowed file size; no archive was written")])
@pytest.mark.parametrize("size", [4 * 1024 * 1024, 128 * 1024])  # mid-stream, at close
def test_the_sinks_error_comes_through_the_encryptor(code, said, size):
    exc = encrypt_onto(FullDisk(room=100_000, code=code), size)
    assert isinstance(exc, OSError) and exc.errno == code, repr(exc)
    assert safe_message(exc) == said


def manage_env(app, **extra) -> dict:
    env = {**os.environ, "DATABASE_URL": app.config["DATABASE_URL"],
           "UPLOAD_FOLDER": app.config["UPLOAD_FOLDER"],
           "BACKUP_FOLDER": app.config["BACKUP_FOLDER"],
           "SECRET_KEY": "test-secret-key", "SECURITY_PASSWORD_SALT": "test-salt",
           "INSTANCE_PATH": str(Path(app.config["BACKUP_FOLDER"]).parent / "instance")}
    env.update(extra)
    return env


@pytest.mark.parametrize("backend", ["postgresql"])  # the limit would hit SQLite's own files too
def test_a_full_disk_under_encryption_is_said_in_plain_words(app, runner, backend):
    """As tests/test_faults.py does: a file-size limit on the process stands in for
    a full disk (EFBIG instead of ENOSPC), here with BACKUP_AGE_RECIPIENTS set."""
    loaded = runner.invoke(args=["demo-data"])
    assert loaded.exit_code == 0, loaded.output
    (Path(app.config["UPLOAD_FOLDER"]) / "big-brochure.pdf").write_bytes(os.urandom(400_000))

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    proc = subprocess.run([sys.executable, "manage.py", "backup"], cwd=ROOT,
                          env=manage_env(app, BACKUP_AGE_RECIPIENTS=recipient()),
                          capture_output=True, text=True, timeout=120, preexec_fn=limit)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "Error: the archive grew beyond the allowed file size; no archive was written")
    assert "age encryption failed" not in proc.stderr and "Traceback" not in proc.stderr
    folder = Path(app.config["BACKUP_FOLDER"])
    assert [p.name for p in folder.iterdir() if p.name != ".backup.lock"] == []
