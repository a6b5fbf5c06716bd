"""age encryption of archives (through ``pyrage``, the Rust age library): written
as a stream, so the plain ZIP never touches the disk, and readable by the stock
``age`` CLI (``age -d -i key.txt archive.zip.age``).

The server holds only recipients (``age1…`` public keys); identities (private
keys) are given to ``verify``/``restore`` with ``--identity FILE`` when needed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
from pathlib import Path
from typing import BinaryIO, Iterable

from guest_backup.errors import BackupError

AGE_MAGIC = b"age-encryption.org/v1\n"
#: the decryption pipe's size (Linux lets a process ask for up to 1 MiB)
PIPE_BYTES = 1024 * 1024


def _pyrage():
    try:
        import pyrage
    except ImportError:
        raise BackupError("age encryption needs the pyrage package: "
                          "pip install 'guest-registration[age]'") from None
    return pyrage


def parse_recipients(texts: Iterable[str]) -> list:
    """``age1…`` strings → recipients; a clear error naming a bad one by its place in
    BACKUP_AGE_RECIPIENTS, never by its value: a value that is not a public key may
    be an identity (quoted, as Docker's --env-file keeps it, or in lower case) or
    another secret, and the message reaches status, the audit log and
    notifications. With none configured, pyrage (the ``age`` extra) is not needed
    and not imported."""
    texts = [t.strip() for t in texts if t.strip()]
    if not texts:
        return []
    pyrage = _pyrage()
    recipients = []
    for place, text in enumerate(texts, 1):
        which = f"recipient {place} of BACKUP_AGE_RECIPIENTS"
        if "AGE-SECRET-KEY" in text.upper():
            raise BackupError(f"{which} is an identity (AGE-SECRET-KEY-…, the value is not "
                              f"shown); give the public key (age1…) instead and keep the "
                              f"identity offline")
        try:
            recipients.append(pyrage.x25519.Recipient.from_str(text))
        except Exception:
            quoted = " (give it without quotes)" if text[:1] in "\"'" else ""
            raise BackupError(f"{which} is not an age recipient (a public key, age1…)"
                              f"{quoted}; the value is not shown") from None
    return recipients


def load_identities(path: str | os.PathLike) -> list:
    """The ``AGE-SECRET-KEY-…`` lines of an identity file (as ``age-keygen`` writes it)."""
    pyrage = _pyrage()
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise BackupError(f"the identity file {path} cannot be read ({exc.strerror})") from None
    identities = []
    for line in lines:
        line = line.strip()
        if line.startswith("AGE-SECRET-KEY-"):
            try:
                identities.append(pyrage.x25519.Identity.from_str(line))
            except Exception:
                raise BackupError(f"{path} holds a malformed age identity") from None
    if not identities:
        raise BackupError(f"{path} holds no age identity (AGE-SECRET-KEY-…)")
    return identities


class HashingFile:
    """The real file under the archive's writer: counts and hashes the bytes that
    reach it (the ciphertext, when encrypted). Write-only, not seekable.
    ``error`` is the first exception the file raised (a full disk under pyrage's
    thread, which pyrage replaces by its own EncryptError)."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh, self.sha, self.size = fh, hashlib.sha256(), 0
        self.error: BaseException | None = None

    def write(self, data: bytes) -> int:
        try:
            self.fh.write(data)
        except BaseException as exc:
            self.error = self.error or exc
            raise
        self.sha.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self.fh.flush()


class EncryptingWriter:
    """A write-only stream whose bytes reach ``fh`` age-encrypted to ``recipients``.

    pyrage reads the plaintext from a pipe in a worker thread (it releases the
    GIL), so memory stays at a pipe buffer and pyrage's chunk. Not seekable:
    ``zipfile`` then writes data descriptors, as it does for any stream.
    """

    def __init__(self, fh: BinaryIO, recipients: list) -> None:
        self._pyrage = _pyrage()
        self.out = HashingFile(fh)
        read_fd, write_fd = os.pipe()
        self._reader = os.fdopen(read_fd, "rb")
        self._writer = os.fdopen(write_fd, "wb")
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(recipients,),
                                        name="age-encrypt", daemon=True)
        self._thread.start()

    def _run(self, recipients: list) -> None:
        try:
            self._pyrage.encrypt_io(self._reader, self.out, recipients)
        except BaseException as exc:  # raised in the writer's thread by close()
            self._error = exc
        finally:
            self._reader.close()

    def write(self, data: bytes) -> int:
        try:
            self._writer.write(data)
        except BrokenPipeError:
            self._thread.join()
            raise self._failure() from None
        return len(data)

    def _failure(self) -> BaseException:
        """Why encryption stopped: the file's own error (ENOSPC, EFBIG: said in plain
        words by the caller) rather than pyrage's wrapper of it."""
        if self.out.error is not None:
            return self.out.error
        return BackupError(f"age encryption failed ({type(self._error).__name__})")

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        """Finish the age stream; raises if encryption failed."""
        if not self._writer.closed:
            try:
                self._writer.close()
            except BrokenPipeError:
                pass
        self._thread.join()
        if self._error is not None or self.out.error is not None:
            raise self._failure()

    def abort(self) -> None:
        try:
            self._writer.close()
        except OSError:
            pass
        self._thread.join()


class HashingReader:
    """A file read through, its bytes counted and hashed on the way (the
    ciphertext, for the seal's hash)."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh, self.sha, self.size = fh, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        self.sha.update(data)
        self.size += len(data)
        return data

    def readinto(self, buf) -> int:
        n = self.fh.readinto(buf)
        self.sha.update(memoryview(buf)[:n])
        self.size += n
        return n


class DecryptingReader:
    """The plaintext of an age file as a stream, decrypted while it is read (no
    copy on disk): pyrage decrypts in a worker thread into a pipe, ``read`` takes
    from the pipe. ``ciphertext`` hashes every byte of the file (``finish`` reads
    what pyrage left). A wrong identity or damaged file raises BackupError."""

    def __init__(self, path: str | os.PathLike, identities: list) -> None:
        self._pyrage = _pyrage()
        try:
            self._file = open(path, "rb")
        except OSError as exc:
            raise BackupError(f"{path} cannot be read ({exc.strerror})") from None
        self.ciphertext = HashingReader(self._file)
        read_fd, write_fd = os.pipe()
        with contextlib.suppress(OSError):  # fewer wake-ups; the default works too
            fcntl.fcntl(write_fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
        self._fd, self._writer = read_fd, os.fdopen(write_fd, "wb")
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(identities,),
                                        name="age-decrypt", daemon=True)
        self._thread.start()

    def _run(self, identities: list) -> None:
        try:
            self._pyrage.decrypt_io(self.ciphertext, self._writer, identities)
        except BaseException as exc:  # reported by read() at the end of the plaintext
            self._error = exc
        finally:
            with contextlib.suppress(OSError):
                self._writer.close()

    def read(self, n: int = -1) -> bytes:
        data = os.read(self._fd, n if n > 0 else PIPE_BYTES)
        if not data:
            self._thread.join()
            if self._error is not None:
                raise BackupError("the archive cannot be decrypted with the given identity (not "
                                  "one of its recipients, or the file is damaged)")
        return data

    def finish(self) -> None:
        """The plaintext was read to its end: hash the rest of the file."""
        self._thread.join()
        while self.ciphertext.read(PIPE_BYTES):
            pass

    def close(self) -> None:
        """Stop decrypting (a pipe closed under pyrage ends it) and close the file."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        self._thread.join()
        self._file.close()


def is_age_file(path: str | os.PathLike) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(len(AGE_MAGIC)) == AGE_MAGIC
    except OSError:
        return False


def is_encrypted(path: str | os.PathLike) -> bool:
    return str(path).endswith(".age") or is_age_file(path)
