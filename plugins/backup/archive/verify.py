"""Verifying an archive, reading only: for an encrypted one the signature of the
ciphertext and, with an identity, everything inside; for the ZIP a manifest
signed by a trusted key, only members a system backup has (no links, no paths
leaving the folder, no duplicates, no ZIP bombs, no guest-photo names), every
member's size and SHA-256 as the signed manifest says, and a complete dump that
holds nothing but what the engine's dump tool writes (the screen)."""

from __future__ import annotations

import os
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Protocol

from guest_backup.archive.encryption import is_age_file
from guest_backup.archive.format import (DATABASE_MEMBER, FORMAT_VERSION, MANIFEST_MEMBER,
                                        MAX_MEMBERS, SIGNATURE_MEMBER, read_seal, sidecar_path)
from guest_backup.archive.manifest import (MAX_SIGNATURE_BYTES, Binding, member_problem,
                                          parse_manifest, read_manifest_bytes, shown)
from guest_backup.archive.signing import SignatureError, TrustedKeys, seal_claims
from guest_backup.archive.writer import CHUNK, Digest
from guest_backup.archive.zipcheck import directory_problem, layout_problem
from guest_backup.archive.zipstream import BOMB_MIN_BYTES, BOMB_RATIO, StreamError, member_at
from guest_backup.errors import BackupError, EngineError


class ScreeningEngine(Protocol):
    """What verification needs of a database engine (:mod:`guest_backup.engines`
    implements it): a screen for its dump and the dump's completion check."""

    def screen(self): ...

    def is_complete(self, tail: bytes) -> bool: ...


class ArchiveRefused(BackupError):
    """The archive did not verify (before the pass, or at its end)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("the archive did not verify: " + "; ".join(problems[:5]))
        self.problems = problems


@dataclass
class VerifyReport:
    ok: bool
    problems: list[str] = field(default_factory=list)
    manifest: dict | None = None
    signed_by: str | None = None
    unsigned: bool = False            # no signature, accepted with allow_unsigned
    encrypted: bool = False
    decryption_skipped: bool = False  # encrypted, and no identity to look inside
    notes: list[str] = field(default_factory=list)


def _structure_problems(infos: list[zipfile.ZipInfo]) -> list[str]:
    if len(infos) > MAX_MEMBERS:
        return [f"{len(infos)} members: an archive holds at most {MAX_MEMBERS}"]
    problems = []
    counts = Counter(i.filename for i in infos)
    dupes = sorted(n for n, c in counts.items() if c > 1)
    if dupes:
        problems.append(f"duplicate members: {', '.join(dupes)[:200]}")
    for info in infos:
        if problem := member_problem(info):
            problems.append(problem)
        elif (info.file_size > BOMB_MIN_BYTES
              and info.file_size > BOMB_RATIO * max(info.compress_size, 1)):
            problems.append(f"{info.filename!r} inflates {info.file_size // max(info.compress_size, 1)}"
                            f"-fold: refused as a possible ZIP bomb")
        if len(problems) > 20:  # enough to refuse; a hostile archive may have thousands
            break
    if not problems and MANIFEST_MEMBER not in counts:
        problems.append("manifest.json is missing")
    return problems


def _member_digest(f, info: zipfile.ZipInfo, end: int, limit: int, screen=None) -> Digest:
    """Read a member of the open file ``f`` as the one-pass restore reads it (to the
    real end of its data, never past ``end``), refusing to inflate past ``limit``
    bytes; feed ``screen`` (a dump screen) as it goes. Its data must end where the
    central directory says: bytes hidden inside a member's claimed compressed size
    (the directory stays contiguous; zipfile would skip them) are refused."""
    member = member_at(f, info.header_offset, end)
    while chunk := member.read(CHUNK):
        if member.digest.size > limit:
            raise ValueError("member inflates beyond its declared size")
        if screen is not None:
            screen.feed(chunk)
    if (member.name, member.compressed, member.digest.size) != (
            info.filename, info.compress_size, info.file_size):
        raise StreamError("its data does not end where the ZIP's central directory says "
                          "(bytes hidden from verify)")
    if screen is not None:
        screen.finish()
    return member.digest


def verify_archive(path: str | os.PathLike, engines: Mapping[str, ScreeningEngine] | None,
                   trusted: TrustedKeys, *, allow_unsigned: bool = False,
                   installation: str | None = None,
                   explicit_keys=(), name: str | None = None) -> VerifyReport:
    """Check an archive without writing anything; the report lists every problem.

    An encrypted archive (``.zip.age``) is checked against its seal (the ``.sig``
    beside it, required unless ``allow_unsigned``); its contents need an identity
    (:func:`guest_backup.archive.onepass.verify_stream`: one pass, decrypted as
    it is read, no copy on disk).
    The signed name, date and installation must match the file's name and
    ``installation`` (see :class:`Binding`); ``name`` is the archive's name when
    ``path`` has another (a downloaded copy).
    """
    report = VerifyReport(ok=False)
    binding = Binding(name or Path(path).name, installation, frozenset(explicit_keys))
    if str(path).endswith(".age") or is_age_file(path):
        report.encrypted = True
        _check_ciphertext(Path(path), trusted, report, binding, required=not allow_unsigned)
        report.decryption_skipped = True
        report.ok = not report.problems
        return report
    else:
        check_zip(path, engines, trusted, allow_unsigned, report, binding)
    report.ok = not report.problems
    return report


def _check_ciphertext(path: Path, trusted: TrustedKeys, report: VerifyReport, binding: Binding,
                      required: bool) -> None:
    sidecar = sidecar_path(path)
    try:
        envelope = read_seal(sidecar)
    except OSError:
        if required:
            report.problems.append(missing_seal(sidecar.name))
        else:
            report.notes.append(f"{sidecar.name} is missing: only the contents were checked")
        return
    digest = Digest.of_file(path)
    try:
        report.signed_by = trusted.check_file(envelope, path.name, digest.size,
                                              digest.sha.hexdigest())
    except SignatureError as exc:
        report.problems.append(str(exc))
        return
    claims = seal_claims(envelope)  # None for the first version's file signature
    if claims is not None:
        report.problems += binding.problems(claims, report.signed_by)


def missing_seal(sidecar: str) -> str:
    """The refusal of an encrypted archive without its seal, saying what to do: a
    Download (page or API) delivers the ``.zip.age`` alone, and the copy was
    refused elsewhere with no way out named."""
    return (f"{sidecar} (the seal of the encrypted archive) is missing: an encrypted "
            f"archive without it is refused; copy the .sig from the backup folder or remote "
            f"beside it, or give --identity and --allow-unsigned (the signed manifest inside "
            f"is then still checked)")


def check_zip(path, engines, trusted: TrustedKeys, allow_unsigned: bool,
              report: VerifyReport, binding: Binding, members: bool = True) -> None:
    """The ZIP's structure, signed manifest and binding from its central directory;
    with ``members`` every member read and checked too (a one-pass restore checks
    them as it loads them)."""
    try:
        if problem := directory_problem(path):
            report.problems.append(problem)
            return
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        report.problems.append(f"not a readable ZIP archive ({type(exc).__name__})")
        return
    with zf:
        infos = zf.infolist()
        report.problems += _structure_problems(infos)
        if not report.problems and (problem := layout_problem(path, infos, zf.start_dir)):
            report.problems.append(problem)
        if report.problems:
            return
        try:
            manifest_bytes = read_manifest_bytes(zf)
            manifest = report.manifest = parse_manifest(manifest_bytes)
        except ValueError as exc:
            report.problems.append(str(exc))
            return
        names = {i.filename for i in infos}
        if SIGNATURE_MEMBER in names:
            signature = zf.getinfo(SIGNATURE_MEMBER)
            envelope = zf.read(signature) if signature.file_size <= MAX_SIGNATURE_BYTES else b""
            try:
                report.signed_by = trusted.check_manifest(envelope, manifest_bytes)
            except SignatureError as exc:
                report.problems.append(str(exc))
                return  # nothing in an untrusted archive is worth reading
            report.problems += binding.problems(manifest, report.signed_by)
        elif allow_unsigned:
            report.unsigned = True
            report.notes.append("the archive is UNSIGNED: its origin cannot be checked")
        else:
            report.problems.append("the archive is unsigned (made before archives were signed, "
                                   "or forged); --allow-unsigned accepts it anyway")
            return
        if members:
            _check_members(path, zf, infos, manifest, engines, report)


def _check_members(path, zf: zipfile.ZipFile, infos, manifest: dict, engines,
                   report: VerifyReport) -> None:
    """Every member read in place (:func:`_member_digest`), then checked against the
    signed manifest as a one-pass read's are (:func:`digest_problems`)."""
    ordered = sorted(infos, key=lambda i: i.header_offset)  # back to back (layout_problem)
    ends = dict(zip([i.filename for i in ordered],
                    [i.header_offset for i in ordered[1:]] + [zf.start_dir]))
    engine = (engines or {}).get(manifest["database"]["engine"])
    digests: dict = {}
    unread = {MANIFEST_MEMBER, SIGNATURE_MEMBER}  # read for their ends only
    with open(path, "rb") as f:
        for info in infos:
            problem, screen = _unreadable(info, manifest, engine), None
            if problem is None and info.filename == DATABASE_MEMBER:
                screen = engine.screen()
            try:
                if problem is None:
                    digests[info.filename] = _member_digest(f, info, ends[info.filename],
                                                            info.file_size, screen)
                    continue
            except EngineError as exc:
                problem = f"{info.filename}: {exc}"
            except StreamError as exc:  # its entry or data is not what the directory says
                problem = f"{info.filename}: {shown(exc, 200)}"
            except Exception as exc:  # zlib.error, EOFError, our ValueError ...
                problem = f"{info.filename}: damaged ({exc.__class__.__name__})"
            report.problems.append(problem)
            digests[info.filename] = None
            unread.add(info.filename)
    report.problems += digest_problems(manifest, digests, engines, skip=unread)


def _unreadable(info: zipfile.ZipInfo, manifest: dict, engine) -> str | None:
    """Why a member is not read at all (None: it is)."""
    expected = manifest["members"].get(info.filename)
    if isinstance(expected, dict) and info.file_size != expected.get("size"):
        return f"{info.filename}: size differs from the manifest"
    if info.filename == DATABASE_MEMBER and engine is None:
        return f"no database engine for the archive's {manifest['database']['engine']!r}"
    return None


def digest_problems(manifest: dict, digests: dict, engines: Mapping | None,
                    skip=()) -> list[str]:
    """Members read elsewhere (``digests``: name → Digest, in a one-pass read) against
    the signed manifest: sizes, SHA-256, none missing or extra, a complete dump."""
    listed: dict = manifest["members"]
    problems = []
    if manifest.get("format_version") != FORMAT_VERSION:
        problems.append(f"unsupported archive format {str(manifest.get('format_version'))[:20]!r}")
    problems += [f"{name} is listed in the manifest but missing"
                 for name in listed if name not in digests]
    for name, digest in digests.items():
        if name in skip:
            continue
        expected = listed.get(name)
        if not isinstance(expected, dict):
            problems.append(f"{name} is not in the manifest")
        elif digest.size != expected.get("size"):
            problems.append(f"{name}: size differs from the manifest")
        elif digest.sha.hexdigest() != expected.get("sha256"):
            problems.append(f"{name}: checksum mismatch")
    engine = (engines or {}).get(manifest["database"]["engine"])
    dump = digests.get(DATABASE_MEMBER)
    if not problems and dump is not None and engine is not None \
            and not engine.is_complete(dump.tail):
        problems.append("database.sql is incomplete (no completion trailer)")
    return problems
