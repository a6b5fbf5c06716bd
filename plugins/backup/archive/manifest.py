"""What an archive's manifest and names claim, parsed and checked: the members a
system backup may have, the manifest (size-capped, its shape checked), and the
name, creation time and installation an archive was signed with (Binding).
Signed text is hostile until checked: :func:`shown` is how a message shows it."""

from __future__ import annotations

import json
import re
import stat
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import PurePosixPath

from guest_backup.archive.format import (DATABASE_MEMBER, ENGINE_NAME_RE, MANIFEST_MEMBER,
                                        MAX_MEMBERS, MAX_SEAL_BYTES, PHOTO_MEMBER_RE,
                                        SIGNATURE_MEMBER, UPLOADS_PREFIX, is_archive_name,
                                        name_time)

MAX_MANIFEST_BYTES = 64 * 1024 * 1024
MAX_SIGNATURE_BYTES = MAX_SEAL_BYTES  # a manifest's signature and a seal: one limit
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def member_problem(info: zipfile.ZipInfo) -> str | None:
    """Why a ZIP member name or type is unsafe to extract (None if it is fine)."""
    name = info.filename
    mode = (info.external_attr >> 16) & 0o170000
    if mode and stat.S_ISLNK(mode):
        return f"{name!r} is a symbolic link"
    if name.startswith("/") or "\\" in name or re.match(r"^[A-Za-z]:", name):
        return f"{name!r} is an absolute or non-portable path"
    parts = PurePosixPath(name).parts
    if ".." in parts or "." in parts or "" in name.split("/")[:-1]:
        return f"{name!r} leaves the archive's folder"
    if not (name in (DATABASE_MEMBER, MANIFEST_MEMBER, SIGNATURE_MEMBER)
            or name.startswith(UPLOADS_PREFIX)):
        return f"{name!r} is not a member a system backup has"
    if name.startswith(UPLOADS_PREFIX) and PHOTO_MEMBER_RE.match(PurePosixPath(name).name):
        return f"{name!r} has a guest-photo name: photos are never in an archive"
    return None


@dataclass(frozen=True)
class Binding:
    """What an archive must say about itself to be accepted here: its file name,
    this installation's id, and the keys given explicitly for this check (an
    archive of another installation is accepted only when signed by one of them)."""

    name: str
    installation: str | None = None
    explicit_keys: frozenset = frozenset()

    def problems(self, signed: dict, signer: str | None) -> list[str]:
        """What is wrong with the signed ``name``, ``created_at`` and ``installation``
        (absent in the first archives' manifests: then only the date is checked)."""
        found = []
        if signed.get("name") not in (None, self.name):
            found.append(f"the file is named {self.name} but was signed as "
                         f"{shown(signed['name'], 80)}: renamed archives are refused")
        claimed, created = name_time(self.name), parse_time(signed.get("created_at"))
        if is_archive_name(self.name) and (created is None or claimed != created):
            found.append(f"the date in the name {self.name} differs from the signed creation "
                         f"time {shown(signed.get('created_at'), 40)}")
        theirs = signed.get("installation")
        if (theirs and self.installation and theirs != self.installation
                and signer not in self.explicit_keys):
            found.append(f"the archive comes from another installation ({shown(theirs, 40)}); "
                         f"give its signing key with --trusted-key to restore it here")
        return found


def shown(value, limit: int) -> str:
    """Signed (so possibly hostile) text as a message may show it: one short line."""
    return _CONTROL.sub("?", str(value)[:limit])


#: how archives (and everything beside them) write a time: ``2025-06-01T02:00:00Z``
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def format_time(when: datetime | None) -> str | None:
    """``when`` as the archives sign times: ``2025-06-01T02:00:00Z`` (UTC; a naive
    time is taken as UTC; None stays None). :func:`parse_time` reads it back. The
    one writer of this form: job states, the ledger, browse sessions, health, the
    API and pgBackRest's times all use it."""
    if when is None:
        return None
    if when.tzinfo is not None:
        when = when.astimezone(timezone.utc)
    return when.strftime(TIME_FORMAT)


def now_text() -> str:
    """Now, as :func:`format_time` writes it."""
    return datetime.now(timezone.utc).strftime(TIME_FORMAT)


def parse_time(text) -> datetime | None:
    """A signed ``2025-06-01T02:00:00Z`` as an aware UTC datetime (None if malformed)."""
    try:
        return datetime.strptime(str(text), TIME_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def read_manifest_bytes(zf: zipfile.ZipFile) -> bytes:
    if zf.getinfo(MANIFEST_MEMBER).file_size > MAX_MANIFEST_BYTES:
        raise ValueError("manifest.json is implausibly large")
    try:
        return zf.read(MANIFEST_MEMBER)
    except Exception:
        raise ValueError("manifest.json is damaged") from None


def parse_manifest(data: bytes) -> dict:
    try:
        manifest = json.loads(data)
        engine = manifest["database"]["engine"]
        if not isinstance(manifest["members"], dict) or not ENGINE_NAME_RE.fullmatch(engine):
            raise TypeError
        if len(manifest["members"]) > MAX_MEMBERS:
            raise TypeError
    except Exception:
        raise ValueError("manifest.json is not a valid manifest") from None
    return manifest
