"""S3-compatible object storage (AWS, MinIO, Ceph, Garage, …) through boto3.

Configured by ``BACKUP_REMOTE_URL=s3://bucket/prefix`` and boto3's own
variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``), which this code never reads,
logs or passes on. Archives go up by multipart upload, one part
(``BACKUP_S3_PART_MB``, at least 5) in memory at a time; any failure aborts the
upload, so no orphaned parts are left behind.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from datetime import timezone
from pathlib import Path
from typing import IO, Any, Mapping
from urllib.parse import urlparse

from guest_backup.archive.format import is_archive_name, ArchiveInfo, SIDECAR_SUFFIX, sidecar_path
from guest_backup.storages import StorageError, StorageUnreachable, check_extra_name

log = logging.getLogger(__name__)
MIN_PART_MB = 5  # S3 refuses smaller non-final parts


def _boto():
    try:
        import boto3
        from botocore.config import Config
    except ImportError:  # pragma: no cover - the extra is part of every test install
        raise StorageError("S3 storage needs boto3: pip install 'guest-registration[s3]'") from None
    return boto3, Config


def _reason(exc: Exception) -> str:
    """A short reason from a botocore error: its code, never its text (no secrets)."""
    code = getattr(exc, "response", {}).get("Error", {}).get("Code") if hasattr(
        exc, "response") else None
    if code in ("NoSuchBucket",):
        return "the bucket does not exist"
    if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
        return "access denied (check the credentials)"
    if code:
        return f"the storage answered {code}"
    name = type(exc).__name__
    if "Endpoint" in name or "Connect" in name or "Timeout" in name:
        return "it could not be reached"
    if "Credentials" in name:
        return "no credentials are configured"
    return f"{name}"


class S3Storage:
    name = "remote"

    def __init__(self, bucket: str, prefix: str, part_size: int, client: Any) -> None:
        self.bucket, self.prefix, self.part_size, self.client = bucket, prefix, part_size, client
        self.url = f"s3://{bucket}/{prefix}".rstrip("/")

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _fail(self, what: str, exc: Exception, unreachable: bool = False) -> StorageError:
        log.warning("%s %s failed: %s", what, self.url, type(exc).__name__)
        cls = StorageUnreachable if unreachable else StorageError
        return cls(f"{what} {self.url} failed: {_reason(exc)}")

    def list(self) -> list[ArchiveInfo]:
        found = []
        prefix = f"{self.prefix}/" if self.prefix else ""
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(prefix):]
                    if "/" not in name and is_archive_name(name):
                        found.append(ArchiveInfo(name, obj["Size"],
                                                 obj["LastModified"].astimezone(timezone.utc),
                                                 [self.name]))
        except Exception as exc:
            raise self._fail("listing", exc, unreachable=True) from None
        return sorted(found, key=lambda a: a.name, reverse=True)

    def upload(self, path: Path) -> None:
        """The seal first (an archive is never listed without it), then the archive;
        a failed archive upload takes its seal away again."""
        sidecar = sidecar_path(path)
        if sidecar.exists():
            try:
                self.client.put_object(Bucket=self.bucket, Key=self._key(sidecar.name),
                                       Body=sidecar.read_bytes())
            except Exception as exc:
                raise self._fail("the upload to", exc) from None
        try:
            self._multipart(path, self._key(path.name))
        except BaseException:
            if sidecar.exists():
                try:
                    self.client.delete_object(Bucket=self.bucket, Key=self._key(sidecar.name))
                except Exception:
                    log.warning("could not remove the seal of a failed upload from %s", self.url)
            raise

    def _multipart(self, path: Path, key: str) -> None:
        try:
            upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
        except Exception as exc:
            raise self._fail("the upload to", exc) from None
        try:
            parts = []
            with open(path, "rb") as fh:
                number = 1
                while True:
                    data = fh.read(self.part_size)
                    if not data and parts:
                        break
                    answer = self.client.upload_part(Bucket=self.bucket, Key=key, PartNumber=number,
                                                     UploadId=upload_id, Body=data)
                    parts.append({"PartNumber": number, "ETag": answer["ETag"]})
                    number += 1
                    last = len(data) < self.part_size
                    del data, answer  # one part in memory: free it before reading the next
                    if last:
                        break
            self.client.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                                  MultipartUpload={"Parts": parts})
        except BaseException as exc:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except Exception:
                log.warning("could not abort the multipart upload of %s to %s", key, self.url)
            if not isinstance(exc, Exception):
                raise
            raise self._fail("the upload to", exc) from None

    def open(self, name: str) -> IO[bytes]:
        if not is_archive_name(name):
            raise StorageError("no such archive")
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"]
        except Exception as exc:
            raise self._fail(f"reading {name} from", exc) from None

    def read_sidecar(self, name: str) -> bytes | None:
        try:
            body = self.client.get_object(Bucket=self.bucket,
                                          Key=self._key(name + SIDECAR_SUFFIX))["Body"]
            return body.read(64 * 1024)
        except Exception:
            return None

    def delete(self, name: str) -> None:
        if not is_archive_name(name):
            raise StorageError("no such archive")
        try:
            for key in (self._key(name), self._key(name + SIDECAR_SUFFIX)):
                self.client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            raise self._fail(f"deleting {name} from", exc) from None

    def local_path(self, name: str) -> Path | None:
        return None

    def put_extra(self, name: str, data: bytes) -> None:
        """One PutObject with Content-MD5 (S3 checks it; Object Lock requires it)."""
        check_extra_name(name)
        digest = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=data,
                                   ContentMD5=digest)
        except Exception as exc:
            raise self._fail(f"writing {name} to", exc) from None

    def get_extra(self, name: str) -> bytes | None:
        check_extra_name(name)
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"]
            try:
                return body.read()
            finally:
                body.close()
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code") if hasattr(
                exc, "response") else None
            if code in ("NoSuchKey", "404"):
                return None
            raise self._fail(f"reading {name} from", exc, unreachable=True) from None


class S3StorageType:
    scheme = "s3"

    def open(self, url: str, config: Mapping[str, Any]) -> S3Storage:
        parsed = urlparse(url)
        if not parsed.netloc:
            raise StorageError("BACKUP_REMOTE_URL must look like s3://bucket/prefix")
        part_mb = int(config.get("BACKUP_S3_PART_MB") or 16)
        if part_mb < MIN_PART_MB:
            raise StorageError(f"BACKUP_S3_PART_MB must be at least {MIN_PART_MB} "
                               f"(S3 refuses smaller parts)")
        boto3, Config = _boto()
        client = boto3.client("s3", config=Config(connect_timeout=5, read_timeout=60,
                                                  retries={"max_attempts": 2, "mode": "standard"}))
        return S3Storage(parsed.netloc, parsed.path.strip("/"), part_mb * 1024 * 1024, client)
