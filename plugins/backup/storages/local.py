"""The local backup folder as a storage, and ``file://`` URLs (another disk, a
mounted share) as a remote one."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import IO, Any, Mapping
from urllib.parse import unquote, urlparse

from guest_backup.archive.format import (is_archive_name, ArchiveInfo, delete_archive,
                                        list_archives, read_seal, sidecar_path)
from guest_backup.archive.writer import FileSink
from guest_backup.files import write_private
from guest_backup.storages import (MAX_EXTRA_BYTES, StorageError, StorageUnreachable,
                                    check_extra_name, checked_extra, upload_file)


class LocalStorage:
    parallel_reads = 1  # seals are files here: read one after another

    def __init__(self, folder: str | os.PathLike, name: str = "local") -> None:
        self.folder = Path(folder)
        self.name = name
        self.url = str(self.folder) if name == "local" else f"file://{self.folder}"

    def _path(self, name: str) -> Path:
        if not is_archive_name(name):
            raise StorageError("no such archive")
        return self.folder / name

    def list(self) -> list[ArchiveInfo]:
        if self.name != "local" and not self.folder.is_dir():
            raise StorageUnreachable(f"the storage {self.url} is not there")
        return list_archives(self.folder, self.name)

    def upload(self, path: Path) -> None:
        """Copy under a hidden name, then rename: a reader never sees half a file."""
        try:
            upload_file(self.begin_upload(path.name), path)
        except OSError as exc:
            raise StorageError(f"the copy to {self.url} failed ({exc.strerror})") from None

    def begin_upload(self, name: str) -> FileSink:
        """A hidden ``.partial`` file (0600) renamed into place, the sidecar first."""
        self._path(name)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"the copy to {self.url} failed ({exc.strerror})") from None
        return FileSink(self.folder, name)

    def held(self, name: str) -> str | None:
        return None

    def open(self, name: str) -> IO[bytes]:
        path = self._path(name)
        if not path.is_file() or path.is_symlink():
            raise StorageError(f"{name} is not in {self.url}")
        return open(path, "rb")

    def read_sidecar(self, name: str) -> bytes | None:
        try:
            return read_seal(sidecar_path(self._path(name)))
        except OSError:
            return None

    def delete(self, name: str) -> None:
        delete_archive(self._path(name))

    def local_path(self, name: str) -> Path | None:
        path = self._path(name)
        if not path.is_file() or path.is_symlink():
            raise StorageError(f"{name} is not in {self.url}")
        return path

    def put_extra(self, name: str, data: bytes) -> None:
        """Write under a hidden temporary name (0600), then rename."""
        check_extra_name(name)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_private(self.folder / name, data, sync=True)
        except OSError as exc:
            raise StorageError(f"writing {name} to {self.url} failed ({exc.strerror})") from None

    def get_extra(self, name: str) -> bytes | None:
        check_extra_name(name)
        if self.name != "local" and not self.folder.is_dir():
            raise StorageUnreachable(f"the storage {self.url} is not there")
        try:  # not through a link, never waiting on a FIFO planted in a shared folder
            fd = os.open(self.folder / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"reading {name} from {self.url} failed ({exc.strerror})") from None
        with os.fdopen(fd, "rb") as src:
            if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
                raise StorageError(f"{name} in {self.url} is not a regular file: not read")
            return checked_extra(name, self.url, src.read(MAX_EXTRA_BYTES + 1))


class FileStorageType:
    scheme = "file"

    def open(self, url: str, config: Mapping[str, Any]) -> LocalStorage:
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
            raise StorageError("a file:// remote must be an absolute path, e.g. file:///mnt/backups")
        return LocalStorage(unquote(parsed.path), name="remote")
