"""The uploads of a one-pass restore: written as the archive is read, under
short hidden names beside their destinations (:data:`STAGED_RE`: an upload's own
name may be as long as the file system allows; never a guest-photo name, never
outside the upload folder), and put in place only once the whole archive
verified and the database committed (:meth:`StagedUploads.commit`), never over an
existing file. On any failure :meth:`discard` removes the staged files and the
folders made for them; what a killed restore left is removed by the next one
(its process is gone). Run as root, the files and folders are the upload
folder's owner's, as every later backup by the service must read them."""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
from pathlib import Path, PurePosixPath

from guest_backup.archive.format import PHOTO_MEMBER_RE, PHOTO_NAME_RE, UPLOADS_PREFIX
from guest_backup.archive.writer import CHUNK, Digest
from guest_backup.archive.zipstream import StreamError
from guest_backup.errors import BackupError
from guest_backup.files import owned_like_folder
from guest_backup.ops.fetch import FREE_RESERVE

log = logging.getLogger(__name__)

#: a staged file: ``.r-<restoring process>-<random>.restoring``
STAGED_RE = re.compile(r"^\.r-([1-9][0-9]{0,6})-[0-9a-f]{16}\.restoring$")


class StagedUploads:
    """Uploads read from the archive, waiting for the verdict."""

    def __init__(self, target: str | os.PathLike) -> None:
        self.target = Path(target)
        self._staged: list[tuple[Path, Path]] = []     # (hidden file, destination)
        self._existing: list[tuple[Path, object]] = []  # (destination, member digest)
        self._made: list[Path] = []                     # folders made here, outermost first
        self._cleared: set[Path] = set()                # folders rid of stale staged files
        self._declared: dict[str, int] = {}  # member -> size, when the manifest is known
        self._room: int | None = None  # bytes that may be staged (free space, less a reserve)

    def expect(self, manifest: dict | None) -> None:
        """The sizes a plain archive's manifest declares (known before its members):
        a member inflating past its own is refused as it is written, not after."""
        for name, entry in ((manifest or {}).get("members") or {}).items():
            if isinstance(entry, dict) and isinstance(entry.get("size"), int):
                self._declared[name] = entry["size"]

    def add(self, member) -> None:
        """Stage one ``uploads/…`` member (read to its end here)."""
        if not member.name.startswith(UPLOADS_PREFIX) or member.name.endswith("/"):
            member.skip()  # the verdict says what it is
            return
        rel = member.name[len(UPLOADS_PREFIX):]
        if PHOTO_MEMBER_RE.match(PurePosixPath(rel).name):
            raise BackupError(f"{member.name!r} has a guest-photo name")
        if PHOTO_NAME_RE.match(PurePosixPath(rel).name):  # a photo's copy, an older archive's
            member.skip()
            log.warning("restore: %r left out (a copy of a guest photo)", member.name)
            return
        root = self._root()
        dest = root / rel
        anchor = dest.parent
        while not anchor.exists() and anchor != anchor.parent:
            anchor = anchor.parent
        if root != anchor.resolve() and root not in anchor.resolve().parents:
            raise BackupError(f"{member.name!r} leaves the upload folder")
        if not anchor.is_dir():  # a file where the archive has a folder: never replaced
            member.skip()
            self._existing.append((dest, member.digest))
            log.warning("restore: %r kept as it was: %s is a file, not a folder",
                        member.name, anchor)
            return
        self._mkdirs(dest.parent, like=root)
        if root != dest.parent.resolve() and root not in dest.parent.resolve().parents:
            raise BackupError(f"{member.name!r} leaves the upload folder")
        if dest.exists() or dest.is_symlink():
            member.skip()
            self._existing.append((dest, member.digest))
            return
        self._clear_stale(dest.parent)
        tmp = dest.with_name(f".r-{os.getpid()}-{secrets.token_hex(8)}.restoring")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        self._staged.append((tmp, dest))
        try:
            owned_like_folder(fd, root)  # run as root: the service's, as the folder
        except BaseException:
            os.close(fd)
            raise
        if self._room is None:
            self._room = max(shutil.disk_usage(root).free - FREE_RESERVE, 0)
        declared, size = self._declared.get(member.name), 0
        with os.fdopen(fd, "wb") as out:
            while chunk := member.read(CHUNK):
                size += len(chunk)
                if declared is not None and size > declared:
                    raise StreamError(f"{member.name}: larger than the manifest says")
                self._room -= len(chunk)
                if self._room < 0:  # before the verdict: an archive's word is not enough
                    raise BackupError(f"the uploads would leave less than "
                                      f"{FREE_RESERVE >> 20} MiB free on the upload folder's "
                                      f"disk; nothing was restored")
                out.write(chunk)

    def _root(self) -> Path:
        self._mkdirs(self.target)
        return self.target.resolve()

    def _mkdirs(self, folder: Path, like: Path | None = None) -> None:
        """Make ``folder`` and its missing parents, each owned (run as root) like
        ``like``, or like its own parent."""
        missing = []
        while not folder.exists() and folder != folder.parent:
            missing.append(folder)
            folder = folder.parent
        for path in reversed(missing):
            path.mkdir(mode=0o700)
            self._made.append(path)
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            try:
                owned_like_folder(fd, like or path.parent)
            finally:
                os.close(fd)

    def _clear_stale(self, folder: Path) -> None:
        """Remove the files a restore that is gone (killed) staged in ``folder``;
        not another name, nor a running restore's."""
        if folder in self._cleared:
            return
        self._cleared.add(folder)
        with os.scandir(folder) as entries:
            for entry in entries:
                match = STAGED_RE.match(entry.name)
                if (match and entry.is_file(follow_symlinks=False)
                        and not _running(int(match.group(1)))):
                    try:
                        os.unlink(entry.path)
                    except OSError:  # left as it was: it stops nothing (names are random)
                        pass

    def commit(self) -> tuple[int, int, int]:
        """Put the staged files in place; (written, already there, kept as they were)."""
        written = present = kept = 0
        for tmp, dest in self._staged:
            try:
                os.link(tmp, dest)  # fails instead of overwriting a file that appeared
                written += 1
            except FileExistsError:
                kept += 1
            finally:
                tmp.unlink(missing_ok=True)
        for dest, digest in self._existing:
            same = (not dest.is_symlink() and dest.is_file()
                    and Digest.of_file(dest).entry == digest.entry)
            present, kept = present + same, kept + (not same)
        self._staged, self._made = [], []
        return written, present, kept

    def discard(self) -> None:
        """Remove what was staged and the folders made for it (if left empty)."""
        for tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)
        for folder in reversed(self._made):
            try:
                folder.rmdir()
            except OSError:
                pass
        self._staged, self._made = [], []


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists (another user's too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # not ours to signal: it exists
        return True
    return True
