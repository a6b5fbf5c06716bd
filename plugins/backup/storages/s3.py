"""S3-compatible object storage (AWS, MinIO, Ceph, Garage, …) through boto3.

Configured by ``BACKUP_REMOTE_URL=s3://bucket/prefix`` and boto3's own
variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``), which this code never reads,
logs or passes on. Archives go up by multipart upload while they are written
(:mod:`guest_backup.storages.s3_upload`: parts of ``BACKUP_S3_PART_MB``, at least
5, bounded memory); any failure aborts the upload, so no orphaned parts are left.

With ``BACKUP_S3_OBJECT_LOCK_DAYS`` every archive and its seal get an Object Lock
retention (``BACKUP_S3_OBJECT_LOCK_MODE``) once uploaded
(:mod:`guest_backup.storages.s3_lock`); nothing here deletes a locked version, and
deleting always removes versions (never a delete marker that only hides an archive
on a versioned bucket). See docs/s3.md.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
from datetime import timezone
from pathlib import Path
from typing import IO, Any, Mapping
from urllib.parse import urlparse

from guest_backup.archive.format import (MAX_SEAL_BYTES, NO_SEAL, SIDECAR_SUFFIX, ArchiveInfo,
                                        is_archive_name)
from guest_backup.storages import (MAX_EXTRA_BYTES, ArchiveHeld, StorageError,
                                    StorageUnreachable, check_extra_name, check_remote_url,
                                    checked_extra, upload_file)
from guest_backup.storages.s3_acks import prompt_acks
from guest_backup.storages.s3_errors import error_code, error_reason
from guest_backup.storages.s3_lock import ObjectLock, object_lock
from guest_backup.storages.s3_upload import (CHECKSUM_FIELD, MultipartUpload, declared_checksum,
                                           part_checksum)

log = logging.getLogger(__name__)
MIN_PART_MB = 5  # S3 refuses smaller non-final parts
DEFAULT_PART_MB = 8  # BACKUP_S3_PART_MB's default (ops.settings takes it from here)


def _boto():
    """botocore, which boto3 is built on: the same S3 client, variables and config
    files, without boto3's transfer manager (0.085 CPU s and 3 MiB less)."""
    try:
        import botocore.session
        from botocore.config import Config
    except ImportError:  # pragma: no cover - the extra is part of every test install
        raise StorageError("S3 storage needs boto3: pip install 'guest-registration[s3]'") from None
    return botocore.session, Config


def _version(obj: Mapping[str, Any]) -> str | None:
    """One listed object's ETag, time and size (None without an ETag)."""
    etag = obj.get("ETag")
    return f"{etag}/{obj['LastModified'].timestamp()!r}/{obj['Size']}" if etag else None


def _md5(data: bytes) -> str:
    """Content-MD5: S3 checks it, and puts into a bucket with Object Lock require it."""
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


class S3Storage(ObjectLock):
    name = "remote"
    parallel_reads = 8  # seals read at once by a listing (a round trip each)

    def __init__(self, bucket: str, prefix: str, part_size: int, client: Any = None, *,
                 lock_days: int = 0, lock_mode: str = "GOVERNANCE",
                 make_client: Any = None) -> None:
        self.bucket, self.prefix, self.part_size = bucket, prefix, part_size
        self.lock_days, self.lock_mode = lock_days, lock_mode
        self.url = f"s3://{bucket}/{prefix}".rstrip("/")
        self._client, self._make_client = client, make_client
        self._client_lock = threading.Lock()

    @property
    def client(self) -> Any:
        """The S3 client, built on first use (importing botocore and loading the S3
        model take ~0.2 s: an upload builds it in a thread as it begins)."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = self._make_client()
        return self._client

    @client.setter
    def client(self, value: Any) -> None:
        self._client = value

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _fail(self, what: str, exc: Exception, unreachable: bool = False) -> StorageError:
        log.warning("%s %s failed: %s", what, self.url, type(exc).__name__)
        cls = StorageUnreachable if unreachable else StorageError
        return cls(f"{what} {self.url} failed: {error_reason(exc)}")

    def list(self) -> list[ArchiveInfo]:
        """Every archive-named key, with the version of it and of its seal the listing
        saw (:attr:`ArchiveInfo.fingerprint`: ETag, time and size of each; any new
        upload of either changes it)."""
        found, seals = [], {}
        prefix = f"{self.prefix}/" if self.prefix else ""
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(prefix):]
                    if "/" in name:
                        continue
                    if is_archive_name(name):
                        found.append(ArchiveInfo(name, obj["Size"],
                                                 obj["LastModified"].astimezone(timezone.utc),
                                                 [self.name], fingerprint=_version(obj)))
                    elif name.endswith(SIDECAR_SUFFIX):
                        seals[name[:-len(SIDECAR_SUFFIX)]] = _version(obj)
        except Exception as exc:
            raise self._fail("listing", exc, unreachable=True) from None
        for archive in found:
            seal = seals.get(archive.name, NO_SEAL)
            archive.fingerprint = (f"{archive.fingerprint} {seal}"
                                   if archive.fingerprint and seal else None)
        return sorted(found, key=lambda a: a.name, reverse=True)

    def size_of(self, name: str) -> int | None:
        """Archive ``name``'s size, None when it is not here: one HeadObject, where
        :meth:`list` pages through every key (a download, a verify and every poll
        of a job ask)."""
        if not is_archive_name(name):
            return None
        try:
            head = self._head(self._key(name))
        except Exception as exc:
            raise self._fail(f"looking for {name} in", exc, unreachable=True) from None
        return int(head["ContentLength"]) if head is not None else None

    def _head(self, key: str) -> dict | None:
        """HeadObject's answer for ``key``, None when it is not there."""
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def upload(self, path: Path) -> None:
        """A finished archive file copied here (its seal first, see begin_upload)."""
        try:
            upload_file(self.begin_upload(path.name), path)
        except OSError as exc:
            raise StorageError(f"the upload to {self.url} failed ({exc.strerror})") from None

    def begin_upload(self, name: str) -> MultipartUpload:
        if not is_archive_name(name):
            raise StorageError("no such archive")
        return MultipartUpload(self, name)

    def abort_leftovers(self, spare: str | None = None) -> None:
        """Abort the multipart uploads of archives under our prefix that a killed
        process (or an abort that could not reach the storage) left, but the upload
        ``spare`` (the one being written); called by an upload, under the backup
        lock, so no other one is still being written. Never raises."""
        prefix = f"{self.prefix}/" if self.prefix else ""
        try:
            answer = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
            for upload in answer.get("Uploads", []):
                if upload["UploadId"] != spare and is_archive_name(upload["Key"][len(prefix):]):
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                       UploadId=upload["UploadId"])
                    log.warning("aborted an unfinished upload of %s", upload["Key"])
        except Exception as exc:
            log.warning("could not look for unfinished uploads in %s (%s)", self.url,
                        type(exc).__name__)

    def put(self, key: str, data: bytes) -> str | None:
        """One PutObject with Content-MD5; the new version's id (None: unversioned).
        Its CRC32, where botocore sends one, goes as a header before a plain body
        (:func:`~guest_backup.storages.s3_upload.part_checksum`), never as an
        ``aws-chunked`` trailer: the seal, a small archive and the ledger's copy
        reach every storage that takes the parts."""
        checksum = declared_checksum(self.client)
        if checksum:
            checksum[CHECKSUM_FIELD] = part_checksum(data)
        answer = self.client.put_object(Bucket=self.bucket, Key=key, Body=data,
                                        ContentMD5=_md5(data), **checksum)
        return answer.get("VersionId")

    def open(self, name: str, **extra: str) -> IO[bytes]:
        if not is_archive_name(name):
            raise StorageError("no such archive")
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(name), **extra)["Body"]
        except Exception as exc:  # only "no such key" says the archive is not there
            gone = error_code(exc) in ("NoSuchKey", "404", "NotFound")
            raise self._fail(f"reading {name} from", exc, unreachable=not gone) from None

    def open_range(self, name: str, first: int, last: int) -> IO[bytes]:
        """Bytes ``first``..``last`` (inclusive) of one archive: GetObject's Range."""
        return self.open(name, Range=f"bytes={first}-{last}")

    def read_sidecar(self, name: str) -> bytes | None:
        """The seal beside archive ``name``, None when there is none. One that could not
        be read (503 SlowDown, a timeout, AccessDenied) is StorageUnreachable, not a
        missing seal: the archive was reported as an unrecognised file, and the
        remote as holding no archive, when it was the storage that failed."""
        try:
            body = self.client.get_object(Bucket=self.bucket,
                                          Key=self._key(name + SIDECAR_SUFFIX))["Body"]
            try:
                return body.read(MAX_SEAL_BYTES)
            finally:
                body.close()
        except Exception as exc:
            if error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise self._fail(f"reading the seal of {name} from", exc, unreachable=True) from None

    def delete(self, name: str) -> None:
        """Every version of the archive and of its seal, each by its id: never a
        plain delete, which on a versioned bucket only adds a delete marker."""
        if not is_archive_name(name):
            raise StorageError("no such archive")
        reason, versions_of = self._lock_state(name)  # the versions listed once
        if reason:
            raise ArchiveHeld(name, self.url, reason)
        try:
            for key, versions in versions_of.items():
                if versions is None or (versions == [] and self._head(key) is not None):
                    # no versioning API, or one that lists nothing for a key that is
                    # there (a store ignoring ?versions): a plain delete, else none
                    self.client.delete_object(Bucket=self.bucket, Key=key)
                for version_id, _ in versions or ():
                    self.client.delete_object(Bucket=self.bucket, Key=key, VersionId=version_id)
        except Exception as exc:
            raise self._fail(f"deleting {name} from", exc) from None

    def remove_quietly(self, key: str, version: str | None) -> None:
        """Take back a just-put seal whose archive failed (never raises)."""
        extra = {"VersionId": version} if version else {}
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key, **extra)
        except Exception:
            log.warning("could not remove the seal of a failed upload from %s", self.url)

    def local_path(self, name: str) -> Path | None:
        return None

    def put_extra(self, name: str, data: bytes) -> None:
        """One PutObject with Content-MD5 (S3 checks it; Object Lock requires it)."""
        check_extra_name(name)
        try:
            self.put(self._key(name), data)
        except Exception as exc:
            raise self._fail(f"writing {name} to", exc) from None

    def get_extra(self, name: str) -> bytes | None:
        check_extra_name(name)
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"]
            try:
                data = body.read(MAX_EXTRA_BYTES + 1)
            finally:
                body.close()
        except Exception as exc:
            if error_code(exc) in ("NoSuchKey", "404"):
                return None
            raise self._fail(f"reading {name} from", exc, unreachable=True) from None
        return checked_extra(name, self.url, data)


class S3StorageType:
    scheme = "s3"

    def open(self, url: str, config: Mapping[str, Any]) -> S3Storage:
        parsed = urlparse(check_remote_url(url, config))  # never a credential shown
        if not parsed.netloc:
            raise StorageError("BACKUP_REMOTE_URL must look like s3://bucket/prefix")
        part_mb = config.get("BACKUP_S3_PART_MB")
        part_mb = DEFAULT_PART_MB if part_mb in (None, "") else int(part_mb)
        if part_mb < MIN_PART_MB:
            raise StorageError(f"BACKUP_S3_PART_MB must be at least {MIN_PART_MB} "
                               f"(S3 refuses smaller parts)")
        days, mode = object_lock(config)

        def make_client() -> Any:
            session, Config = _boto()
            client = session.get_session().create_client("s3", config=Config(
                connect_timeout=5, read_timeout=60,
                retries={"max_attempts": 2, "mode": "standard"}))
            prompt_acks(client)
            return client

        return S3Storage(parsed.netloc, parsed.path.strip("/"), part_mb * 1024 * 1024,
                         lock_days=days, lock_mode=mode, make_client=make_client)
