"""Recognising an archive cheaply, without reading it: its seal (the signed
``.sig`` beside it) must be a trusted key's, for this file name and size, with a
creation time that matches the name and this installation. Listings, retention
and health count only recognised archives, dated by the signed time; anything
else is "unrecognised": never counted as a backup, never deleted by retention.

Archives made before seals existed are recognised too: an encrypted one by the
file signature it carried (name and size checked here, the hash by ``verify``),
a plain one on this machine by its signed manifest.

:func:`check_seal` is the full check, against the file's SHA-256, that a restore
makes before it reads an archive (:class:`~guest_backup.archive.onepass.ArchivePass`).
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from guest_backup.archive.format import MANIFEST_MEMBER, SIGNATURE_MEMBER, name_time
from guest_backup.archive.signing import SignatureError, TrustedKeys, seal_claims
from guest_backup.archive.manifest import (MAX_MANIFEST_BYTES, MAX_SIGNATURE_BYTES, Binding,
                                          parse_time, shown)
from guest_backup.archive.zipcheck import directory_problem

SHA256_RE = re.compile(r"[0-9a-f]{64}", re.ASCII)


def _json_object(envelope: bytes) -> dict | None:
    """A sidecar's JSON if it is an object, else None: a planted one may be any JSON
    (``[1]``, ``"x"``), or nested deeper than the parser recurses (RecursionError),
    and was then a crash of every listing, health check, retention run and verify."""
    try:
        data = json.loads(envelope)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _claimed(envelope: bytes, key: str):
    """One claim of a seal (or of the first encrypted archives' file signature),
    parsed, NOT checked; None when it has none."""
    if len(envelope) > MAX_SIGNATURE_BYTES:
        return None
    return (seal_claims(envelope) or _json_object(envelope) or {}).get(key)


def sealed_sha256(envelope: bytes) -> str | None:
    """The file SHA-256 a seal claims, parsed, NOT checked: call it on an envelope
    :func:`recognise` or ``TrustedKeys.check_file`` accepted."""
    sha = _claimed(envelope, "sha256")
    return sha if isinstance(sha, str) and SHA256_RE.fullmatch(sha) else None


def sealed_size(envelope: bytes) -> int | None:
    """The file size a seal claims, parsed, NOT checked (enough to bound a copy:
    a false one can only make it fail, which the seal's check would too)."""
    size = _claimed(envelope, "size")
    return size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None


def recognise(name: str, size: int, sidecar: bytes | None, trusted: TrustedKeys,
              installation: str | None, local_zip: Path | None = None) -> datetime | None:
    """The signed creation time of archive ``name`` (``size`` bytes), or None when
    it is not recognised. ``local_zip``: the file, when it is on this machine."""
    binding = Binding(name, installation)
    try:
        if sidecar is not None:
            return _from_sidecar(sidecar[:MAX_SIGNATURE_BYTES], name, size, trusted, binding)
        if local_zip is not None and not name.endswith(".age"):
            return _from_manifest(local_zip, trusted, binding)
    except (SignatureError, ValueError, KeyError, TypeError, OSError, RecursionError,
            zipfile.BadZipFile):
        return None
    return None


def _from_sidecar(envelope: bytes, name: str, size: int, trusted: TrustedKeys,
                  binding: Binding) -> datetime | None:
    claims = seal_claims(envelope)
    if claims is None:  # the first encrypted archives' file signature
        data = _json_object(envelope)
        if data is None or data.get("file") != name or data.get("size") != size:
            return None
        trusted.check_file(envelope, name, size, data["sha256"])
        return name_time(name)
    signer, claims = trusted.check_seal(envelope)
    if claims["name"] != name or claims["size"] != size or binding.problems(claims, signer):
        return None
    return parse_time(claims["created_at"])


def _from_manifest(path: Path, trusted: TrustedKeys, binding: Binding) -> datetime | None:
    if directory_problem(path):  # never handed to zipfile (every listing reads this)
        return None
    with zipfile.ZipFile(path) as zf:
        manifest_info = zf.getinfo(MANIFEST_MEMBER)
        signature_info = zf.getinfo(SIGNATURE_MEMBER)
        if (manifest_info.file_size > MAX_MANIFEST_BYTES
                or signature_info.file_size > MAX_SIGNATURE_BYTES):
            return None
        manifest_bytes, envelope = zf.read(manifest_info), zf.read(signature_info)
    signer = trusted.check_manifest(envelope, manifest_bytes)
    manifest = json.loads(manifest_bytes)
    if binding.problems(manifest, signer):
        return None
    return parse_time(manifest["created_at"])


@dataclass
class SealCheck:
    """What :func:`check_seal` found: problems, or who signed and what."""

    problems: list[str] = field(default_factory=list)
    signer: str | None = None
    #: a seal's claims (name, size, sha256, engine, ...), when it checked out
    claims: dict | None = None
    #: the first encrypted archives' file signature (the caller checks its hash
    #: against the ciphertext it reads)
    legacy: bytes | None = None


def check_seal(envelope: bytes, size: int, sha256: str, trusted: TrustedKeys, binding: Binding,
               encrypted: bool) -> SealCheck:
    """The seal against the file it sits beside (``size`` bytes, ``sha256``):
    a trusted signature, the name and the binding; raises SignatureError."""
    if seal_claims(envelope) is None:  # the first encrypted archives' file signature
        if not encrypted:
            return SealCheck(["not a seal"])
        return SealCheck(signer=trusted.check_file(envelope, binding.name, size, sha256),
                         legacy=envelope)
    signer, claims = trusted.check_seal(envelope)
    problems = binding.problems(claims, signer)
    if claims["name"] != binding.name:
        problems.insert(0, f"the archive was renamed: its seal is for {shown(claims['name'], 80)}")
    elif (claims["size"], claims["sha256"]) != (size, sha256):
        problems.insert(0, "the signature does not match the file: it was changed after it was "
                           "signed")
    return SealCheck(problems, signer, None if problems else claims)
