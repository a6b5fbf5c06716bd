"""The erasure ledger's format: the key, keyed hashes, the canonical line and its
mac, checking a chain and merging copies (see :mod:`guest_backup.ops.ledger`)."""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import unicodedata
from datetime import timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from guest_backup.errors import BackupError
from guest_backup.files import owned_like_folder

log = logging.getLogger(__name__)

LEDGER_NAME = "erasure-ledger.jsonl"
KEY_NAME = "erasure_ledger_key"
KINDS = ("guest", "registration", "email", "retention")
VERSION = 1
GENESIS = "0" * 64
FIELDS = frozenset({"v", "seq", "prev", "time", "kind", "guest_ids", "registration_ids",
                    "hashes", "mac"})
_HEX64 = re.compile(r"[0-9a-f]{64}")
_FIELD_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")


class LedgerBroken(BackupError):
    """A ledger copy's chain is broken (the message names the copy and line)."""


# -- the key and the keyed hashes ---------------------------------------------------

def read_key(path: str | os.PathLike) -> bytes | None:
    """The key in ``path`` (64 hex characters), None if there is no such file."""
    try:
        text = Path(path).read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BackupError(f"the erasure ledger key {path} cannot be read "
                          f"({exc.strerror})") from None
    if not _HEX64.fullmatch(text.lower()):
        raise BackupError(f"the erasure ledger key {path} is not 64 hex characters")
    return bytes.fromhex(text)


def create_key(path: str | os.PathLike) -> bytes:
    """A new random key written to ``path`` (0600, complete before it appears there);
    the other process's when one made it first."""
    file = Path(path)
    key = secrets.token_bytes(32)
    tmp = None
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{file.name}.", dir=file.parent)  # 0600
        with os.fdopen(fd, "w") as out:
            owned_like_folder(out.fileno(), file.parent)  # made by root: the service's
            out.write(key.hex() + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.link(tmp, file)  # fails if the file is there
    except FileExistsError:
        key = read_key(file) or b""
    except OSError as exc:
        raise BackupError(f"the erasure ledger key {file} cannot be written "
                          f"({exc.strerror})") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    if not key:
        raise BackupError(f"the erasure ledger key {file} cannot be read")
    return key


def normalise(field: str, value: str) -> str:
    """E-mail: trimmed, lower-case; document numbers: upper-case without any
    whitespace; anything else (names): whitespace collapsed, case-folded."""
    text = str(value)
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    if field == "email":
        return text.strip().lower()
    if field == "document_number":
        return "".join(text.split()).upper()
    return " ".join(text.split()).casefold()


def keyed_hash(key: bytes, field: str, value: str) -> str:
    """HMAC-SHA256(key, field NUL normalised value), hex."""
    inner, outer = _pads(key)
    inner, outer = inner.copy(), outer.copy()
    inner.update(f"{field}\0{normalise(field, value)}".encode())
    outer.update(inner.digest())
    return outer.hexdigest()


#: the keyed hashes of the erased records' own creation times ("guest_created",
#: "registration_created"): what says that a row, at whatever id, is that record
#: (a restore keeps ``created_at``; a selective restore takes it as a row's identity)
RECORD_FIELDS = {"guest": "guest_created", "registration": "registration_created"}


def created_text(when) -> str:
    """A record's ``created_at`` as its keyed hash takes it: naive UTC, microseconds
    (as PostgreSQL and SQLite hand it back alike); empty for none."""
    if when is None:
        return ""
    if getattr(when, "tzinfo", None) is not None:
        when = when.astimezone(timezone.utc).replace(tzinfo=None)
    return when.isoformat(sep=" ", timespec="microseconds")


@functools.lru_cache(maxsize=4)
def _pads(key: bytes):
    """HMAC-SHA256's keyed inner and outer states (RFC 2104), made once per key: a
    restore that matches by keyed hash hashes every guest, and ``hmac.new`` costs
    three times as much per value. (The key is in this process's memory anyway.)"""
    block = hashlib.sha256(key).digest() if len(key) > 64 else key
    block = block.ljust(64, b"\0")
    return (hashlib.sha256(bytes(b ^ 0x36 for b in block)),
            hashlib.sha256(bytes(b ^ 0x5C for b in block)))


# -- lines and chains ---------------------------------------------------------------

def canonical(record: Mapping[str, Any]) -> bytes:
    """The one serialisation of a line: sorted keys, no spaces, ASCII."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def line_mac(key: bytes, record: Mapping[str, Any]) -> str:
    """HMAC-SHA256(key, canonical JSON of the line without ``mac``), hex."""
    body = {k: v for k, v in record.items() if k != "mac"}
    return hmac.new(key, canonical(body), hashlib.sha256).hexdigest()


def serialise(records: Iterable[Mapping[str, Any]]) -> bytes:
    return b"".join(canonical(r) + b"\n" for r in records)


def _parse(raw: bytes | str) -> dict | None:
    if isinstance(raw, bytes):
        raw = raw[:-1] if raw.endswith(b"\n") else raw
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    else:
        raw = raw[:-1] if raw.endswith("\n") else raw
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(record, dict) or set(record) != FIELDS:
        return None
    if not isinstance(record["mac"], str) or not _HEX64.fullmatch(record["mac"]):
        return None
    if not isinstance(record["seq"], int) or isinstance(record["seq"], bool):
        return None
    return record


def _problem(record: dict | None, key: bytes, number: int, prev: str) -> str | None:
    """Why line ``number`` does not continue the chain after ``prev`` (or None)."""
    if record is None:
        return "is not a ledger line"
    if not hmac.compare_digest(record["mac"], line_mac(key, record)):
        return "does not match its mac (edited, or written with another ledger key)"
    if record["seq"] != number:
        return f"has seq {record['seq']}, not {number} (a line is missing or out of order)"
    if record["prev"] != prev:
        return "does not follow the line before it (a line is missing or out of order)"
    if record["v"] != VERSION or record["kind"] not in KINDS:
        return "has an unknown version or kind"
    return None


def iter_verified(lines: Iterable[bytes | str], key: bytes, source: str = "ledger"
                  ) -> Iterator[dict]:
    """The lines of one copy, each checked before it is yielded (streaming)."""
    prev, number = GENESIS, 0
    for number, raw in enumerate(lines, start=1):
        record = _parse(raw)
        problem = _problem(record, key, number, prev)
        if problem is not None:
            raise LedgerBroken(f"the erasure ledger in {source} is broken: line {number} "
                               f"{problem}")
        prev = record["mac"]
        yield record


def verify_lines(lines: Iterable[bytes | str], key: bytes, source: str = "ledger") -> list[dict]:
    """Every line of one copy, checked (LedgerBroken naming ``source`` and the line)."""
    return list(iter_verified(lines, key, source))


def _split(data: bytes) -> list[bytes]:
    return data.split(b"\n")[:-1] if data.endswith(b"\n") else data.split(b"\n")


def merge(copies: Mapping[str, bytes | None], key: bytes) -> list[dict]:
    """The union of several copies (None: no copy there): each is checked first,
    then they must agree line by line; the longest wins. A fork: LedgerBroken."""
    checked = {name: verify_lines(_split(data), key, name)
               for name, data in copies.items() if data}
    return merge_verified(checked)


def merge_verified(checked: Mapping[str, Sequence[dict]]) -> list[dict]:
    """:func:`merge` of copies already checked."""
    if not checked:
        return []
    longest = max(checked, key=lambda name: len(checked[name]))
    best = checked[longest]
    for name, lines in checked.items():
        for mine, theirs in zip(best, lines):
            if mine["mac"] != theirs["mac"]:
                raise LedgerBroken(
                    f"the erasure ledger copies in {longest} and in {name} differ from line "
                    f"{mine['seq']} on (a fork: both were written to separately)")
    return list(best)


# -- the local file -----------------------------------------------------------------
