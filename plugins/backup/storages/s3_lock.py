"""S3 Object Lock for the archives: ``BACKUP_S3_OBJECT_LOCK_DAYS`` (0 = off) and
``BACKUP_S3_OBJECT_LOCK_MODE``, the retention set on each archive and its seal
once uploaded, and what keeps an archive from being deleted (a retention date
still to come, a legal hold), and taking back an upload whose completion answered
an error but happened. Mixed into :class:`~guest_backup.storages.s3.S3Storage`;
see docs/s3.md."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

from guest_backup.archive.format import SIDECAR_SUFFIX
from guest_backup.storages import StorageError
from guest_backup.storages.s3_errors import error_code, error_reason

LOCK_MODES = ("GOVERNANCE", "COMPLIANCE")
MAX_LOCK_DAYS = 36500


def object_lock(config: Mapping[str, Any]) -> tuple[int, str]:
    """BACKUP_S3_OBJECT_LOCK_DAYS (0 = off) and _MODE, checked (StorageError)."""
    raw = config.get("BACKUP_S3_OBJECT_LOCK_DAYS") or 0
    try:
        days = int(str(raw).strip())
    except ValueError:
        days = -1
    if not 0 <= days <= MAX_LOCK_DAYS:
        raise StorageError(f"BACKUP_S3_OBJECT_LOCK_DAYS must be a whole number of days from 0 "
                           f"(off) to {MAX_LOCK_DAYS}, not {str(raw)[:20]!r}")
    mode = str(config.get("BACKUP_S3_OBJECT_LOCK_MODE") or "GOVERNANCE").strip().upper()
    if mode not in LOCK_MODES:
        raise StorageError(f"BACKUP_S3_OBJECT_LOCK_MODE must be GOVERNANCE or COMPLIANCE, "
                           f"not {mode[:20]!r}")
    return days, mode


def multipart_etag(parts: list[dict[str, Any]]) -> str | None:
    """The ETag S3 gives the object these parts complete (the MD5 of their MD5s and
    their count): what tells an upload's object from another; None when a part's
    ETag is not an MD5 (the storage's own scheme)."""
    try:
        digests = b"".join(bytes.fromhex(part["ETag"].strip('"')) for part in parts)
    except (ValueError, AttributeError):
        return None
    return f'"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{len(parts)}"'


class ObjectLock:
    """The Object Lock part of an S3 storage (its ``client``, ``bucket``,
    ``lock_days``, ``lock_mode``, ``_key``, ``_head`` and ``_fail``)."""

    client: Any
    bucket: str
    lock_days: int
    lock_mode: str

    def lock(self, key: str, version: str | None) -> None:
        """Set BACKUP_S3_OBJECT_LOCK_DAYS' retention on one uploaded version (after the
        upload: S3 ignores lock settings given to CreateMultipartUpload)."""
        if not self.lock_days:
            return
        until = datetime.now(timezone.utc) + timedelta(days=self.lock_days)
        extra = {"VersionId": version} if version else {}
        try:
            self.client.put_object_retention(
                Bucket=self.bucket, Key=key, **extra,
                Retention={"Mode": self.lock_mode, "RetainUntilDate": until})
        except Exception as exc:
            raise self._fail(f"the archive was uploaded, but locking {key.rsplit('/', 1)[-1]} "
                             f"in", exc) from None

    def _versions(self, key: str, etag: str | None = None) -> list[tuple[str, bool]] | None:
        """(version id, is a delete marker) of exactly ``key`` (given ``etag``: only
        its versions with that ETag); None when the store has no versioning API."""
        found = []
        try:
            pages = self.client.get_paginator("list_object_versions").paginate(
                Bucket=self.bucket, Prefix=key)
            for page in pages:
                found += [(v["VersionId"], False) for v in page.get("Versions", [])
                          if v["Key"] == key and etag in (None, v.get("ETag"))]
                found += [(m["VersionId"], True) for m in page.get("DeleteMarkers", [])
                          if m["Key"] == key and etag is None]
        except Exception as exc:
            if error_code(exc) in ("NotImplemented", "MethodNotAllowed", "501"):
                return None
            raise
        return found

    def held(self, name: str) -> str | None:
        """Why the archive cannot be deleted yet: a version of it or of its seal under
        an Object Lock retention date still to come, or a legal hold (read with
        HeadObject, which returns both; StorageError when it cannot be read, so that
        nothing is deleted on a guess)."""
        return self._lock_state(name)[0]

    def _lock_state(self, name: str) -> tuple[str | None, dict[str, list | None]]:
        """:meth:`held`'s answer and the versions it read, by key (the archive's and
        its seal's; None: the store has no versioning API): what a delete removes,
        without listing them again."""
        now, until, modes, legal = datetime.now(timezone.utc), None, set(), False
        found: dict[str, list | None] = {}
        try:
            for key in (self._key(name), self._key(name + SIDECAR_SUFFIX)):
                found[key] = self._versions(key)
                for version_id, marker in found[key] or ():
                    if marker:
                        continue
                    # "null": an unversioned bucket's one version (some stores refuse the id)
                    extra = {} if version_id == "null" else {"VersionId": version_id}
                    head = self.client.head_object(Bucket=self.bucket, Key=key, **extra)
                    legal |= head.get("ObjectLockLegalHoldStatus") == "ON"
                    date = head.get("ObjectLockRetainUntilDate")
                    if date is not None and date > now:
                        until = max(until or date, date)
                        modes.add(head.get("ObjectLockMode") or "?")
        except Exception as exc:
            raise self._fail(f"reading the Object Lock of {name} in", exc) from None
        if legal:
            return "under an Object Lock legal hold: kept until the hold is lifted", found
        if until is not None:
            return (f"Object Lock ({'/'.join(sorted(modes))}) until "
                    f"{until.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC: kept until it expires",
                    found)
        return None, found

    def take_back(self, key: str, etag: str | None) -> tuple[bool, str | None]:
        """After completing an upload answered an error: whether the storage completed
        it all the same (a lost answer, or InternalError after the work), and then
        delete its versions (those with the upload's ``etag``; a locked one refuses,
        nothing here bypasses a lock). Returns whether it did, and None when
        nothing is left under its name, else why it stays (the caller keeps its seal
        then, so that it is recognised and retention deletes it in time). Never
        raises: the upload's own error is what is reported."""
        try:
            head = self._head(key)
        except Exception as exc:
            return False, (f"whether the storage completed the archive all the same could "
                           f"not be checked ({error_reason(exc)}): its seal stays")
        if head is None:
            return False, None
        if etag is None or head.get("ETag") != etag:
            return False, ("an object under the archive's name may be this upload's: it stays, "
                           "with its seal")
        try:
            versions = self._versions(key, etag)
            if not versions:  # no versioning API, or a store that ignored ?versions
                self.client.delete_object(Bucket=self.bucket, Key=key)
            for version_id, _ in versions or ():
                self.client.delete_object(Bucket=self.bucket, Key=key, VersionId=version_id)
        except Exception as exc:
            return True, (f"the storage completed the archive all the same and it could "
                          f"not be deleted ({error_reason(exc)}): it stays, with its seal")
        return True, None

    def lock_problem(self) -> str | None:
        """With BACKUP_S3_OBJECT_LOCK_DAYS set: why archives here are not protected
        (the bucket has no Object Lock, or it cannot be read); None when they are."""
        if not self.lock_days:
            return None
        try:
            answer = self.client.get_object_lock_configuration(Bucket=self.bucket)
        except Exception as exc:
            if error_code(exc) == "ObjectLockConfigurationNotFoundError":
                return f"the bucket {self.bucket} has no Object Lock"
            return f"the Object Lock of the bucket {self.bucket} cannot be read: {error_reason(exc)}"
        if answer.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") != "Enabled":
            return f"the bucket {self.bucket} has no Object Lock"
        return None


__all__ = ["LOCK_MODES", "MAX_LOCK_DAYS", "ObjectLock", "multipart_etag", "object_lock"]
