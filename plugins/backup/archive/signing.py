"""Ed25519 signatures: every archive's manifest is signed by the instance's key,
and ``verify``/``restore`` trust only that key and the keys the operator names.

The private key is generated once into the instance folder (mode 0600, PEM) or
read from the file ``BACKUP_SIGNING_KEY`` names (a path, never the key itself);
it is never written into an archive. Public
keys are written ``ed25519:<base64 of the 32 raw bytes>``.

Inside every archive, ``manifest.sig`` signs the exact bytes of
``manifest.json`` (which lists every other member's size and SHA-256). An
encrypted archive also gets a sidecar ``<name>.sig`` that signs the ciphertext
(name, size, SHA-256), so its origin can be checked without the identity.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from guest_backup.archive.format import ENGINE_NAME_RE
from guest_backup.errors import BackupError

KEY_PREFIX = "ed25519:"
#: what an outer (ciphertext) signature covers, so it can't be replayed for a manifest
FILE_CONTEXT = b"guest-registration archive file v1\n"
MANIFEST_CONTEXT = b"guest-registration manifest v1\n"
SEAL_CONTEXT = b"guest-registration archive seal v2\n"
#: what a seal signs about the archive file beside it
SEAL_CLAIMS = ("name", "size", "sha256", "created_at", "installation", "engine")


class SignatureError(BackupError):
    """An archive is unsigned, signed by an unknown key, or its signature is wrong."""


def public_key_text(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return KEY_PREFIX + base64.b64encode(raw).decode("ascii")


def parse_public_key(text: str, where: str = "--trusted-key") -> Ed25519PublicKey:
    """``ed25519:<base64>`` → a public key; a clear error for anything else. Only a
    value that starts like a public key is quoted back: a private key pasted
    (its PEM, or the base64 lines alone) was shown with 11 characters of its
    key material, in the terminal, the audit log and the notifications."""
    text = (text or "").strip()
    if looks_private(text):
        raise BackupError(f"{where} holds a private key or PEM text: give public keys "
                          f"(ed25519:…) only")
    try:
        if not text.startswith(KEY_PREFIX):
            raise ValueError
        raw = base64.b64decode(text[len(KEY_PREFIX):], validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, binascii.Error):
        shown = repr(text[:60]) if text.startswith(KEY_PREFIX) else "a value not starting ed25519:"
        raise BackupError(f"{where}: {shown} is not a public key (expected ed25519:<base64>, "
                          f"as `manage.py backup-key` prints it)") from None


def looks_private(text: str) -> bool:
    """Whether a key setting or option holds more than one public key's text: a PEM
    block, a private key's words, or several lines (never echoed)."""
    return ("-----" in text or "PRIVATE" in text.upper() or "\n" in text or "\r" in text
            or len(text) > 200)


def key_file(setting: str | os.PathLike) -> Path:
    """BACKUP_SIGNING_KEY as the key file's path. The key itself given there (its
    PEM text, or any value of several lines) is refused without being shown: taken
    for a path, it made a new key under folders named after the text."""
    text = os.fspath(setting)
    if "-----BEGIN" in text or "\n" in text or "\r" in text:
        raise BackupError("BACKUP_SIGNING_KEY must be the path of the key file, not the key")
    return Path(text)


def load_or_create_key(path: str | os.PathLike) -> Ed25519PrivateKey:
    """The instance's signing key; created (mode 0600) the first time it is needed,
    written whole before anyone can read it (:func:`guest_backup.files.read_or_create`:
    an empty file, such as a full disk left behind, is replaced)."""
    from guest_backup.files import read_or_create

    path = key_file(path)

    def new_key() -> bytes:
        return Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())

    try:
        data = read_or_create(path, new_key)
    except OSError as exc:
        raise BackupError(f"the signing key {path} cannot be read or written "
                          f"({exc.strerror or type(exc).__name__})") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise BackupError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BackupError(f"{path} is not an Ed25519 key")
    return key


@dataclass
class Signer:
    """Signs manifests and encrypted files with one private key."""

    key: Ed25519PrivateKey

    @property
    def public_key(self) -> str:
        return public_key_text(self.key.public_key())

    def _envelope(self, signature: bytes, **extra) -> bytes:
        return (json.dumps({"algorithm": "ed25519", "public_key": self.public_key,
                            "signature": base64.b64encode(signature).decode("ascii"), **extra},
                           indent=2, sort_keys=True) + "\n").encode()

    def sign_manifest(self, manifest: bytes) -> bytes:
        return self._envelope(self.key.sign(MANIFEST_CONTEXT + manifest))

    def seal(self, claims: dict) -> bytes:
        """The archive's seal (its ``.sig`` sidecar): a signature of the file's name,
        size and SHA-256 together with its creation time, installation and engine,
        so that listings, retention and health can trust an archive's name and date
        without reading it, and a renamed or planted file is not recognised."""
        claims = {k: claims[k] for k in SEAL_CLAIMS}
        return self._envelope(self.key.sign(_seal_message(claims)), claims=claims)


def _file_message(name: str, size: int, sha256: str) -> bytes:
    """What the first encrypted archives' sidecars signed (still accepted)."""
    return FILE_CONTEXT + f"{name}\n{size}\n{sha256}\n".encode()


def _seal_message(claims: dict) -> bytes:
    return SEAL_CONTEXT + json.dumps(claims, sort_keys=True, separators=(",", ":")).encode()


class TrustedKeys:
    """The keys whose signatures are accepted: the instance's own plus named ones."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        for text in keys:
            key = parse_public_key(text)
            self._keys[public_key_text(key)] = key

    def __iter__(self):
        return iter(self._keys)

    def _check(self, envelope: bytes, message: bytes, what: str) -> str:
        try:
            data = json.loads(envelope)
            signer = data["public_key"]
            signature = base64.b64decode(data["signature"], validate=True)
            if data.get("algorithm") != "ed25519":
                raise ValueError
        except Exception:
            raise SignatureError(f"the {what} signature is unreadable") from None
        key = self._keys.get(signer)
        if key is None:
            raise SignatureError(f"the {what} is signed by an unknown key {str(signer)[:60]}; "
                                 f"restore it only if you trust that key (--trusted-key)")
        try:
            key.verify(signature, message)
        except InvalidSignature:
            raise SignatureError(f"the {what} signature does not match: the archive was "
                                 f"changed after it was signed") from None
        return signer

    def check_manifest(self, envelope: bytes, manifest: bytes) -> str:
        """The signer's key if ``envelope`` is a trusted key's signature of ``manifest``."""
        return self._check(envelope, MANIFEST_CONTEXT + manifest, "manifest")

    def check_file(self, envelope: bytes, name: str, size: int, sha256: str) -> str:
        """A sidecar (a seal, or the first version's file signature) of the file
        ``name`` with this size and hash; the signer's key."""
        claims = seal_claims(envelope)
        if claims is None:
            return self._check(envelope, _file_message(name, size, sha256), "encrypted file")
        signer = self.check_seal(envelope)[0]
        if claims["name"] != name:
            raise SignatureError(f"the archive was renamed: its seal is for "
                                 f"{str(claims['name'])[:80]}")
        if (claims["size"], claims["sha256"]) != (size, sha256):
            raise SignatureError("the signature does not match the file: it was changed after "
                                 "it was signed")
        return signer

    def check_seal(self, envelope: bytes) -> tuple[str, dict]:
        """The signer and the signed claims of a seal (SignatureError if it is not
        a trusted key's seal)."""
        claims = seal_claims(envelope)
        if claims is None:
            raise SignatureError("the archive's seal is unreadable")
        return self._check(envelope, _seal_message(claims), "archive seal"), claims


def seal_claims(envelope: bytes) -> dict | None:
    """The claims of a seal envelope as written (not yet checked), or None."""
    try:
        claims = json.loads(envelope)["claims"]
    except Exception:
        return None
    if not isinstance(claims, dict) or set(claims) != set(SEAL_CLAIMS):
        return None
    if not isinstance(claims["engine"], str) or not ENGINE_NAME_RE.fullmatch(claims["engine"]):
        return None  # signed text that ends up in messages: one short word
    return claims
