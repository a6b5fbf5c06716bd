"""One read of an archive, front to back, for a restore (and for ``verify`` of
an encrypted archive): the ciphertext hashed and decrypted as it is read (no
decrypted copy on disk), the ZIP's members taken in the order they come
(:mod:`~guest_backup.archive.zipstream`), each hashed as its consumer reads it,
and the verdict at the end, before anything is committed.

Before the pass, nothing decrypted or inflated: the seal (a trusted key's
signature of the file's name, size, SHA-256, date, installation and engine)
against the file, hashed at disk speed, and for a plain archive its signed
manifest from the central directory; so no byte of a changed archive reaches
the database. An archive without a valid seal (older, or plain and re-signed)
is verified whole first, as before. At the end (:meth:`ArchivePass.verdict`),
against a file changed meanwhile: the ciphertext's hash against the seal, the
streamed manifest and its signature, every member's size and SHA-256, the
dump's completion trailer, and the central directory against the members read."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Iterator, Mapping

from guest_backup.archive.encryption import DecryptingReader, is_encrypted
from guest_backup.archive.format import (DATABASE_MEMBER, MANIFEST_MEMBER, MAX_MEMBERS,
                                        SIGNATURE_MEMBER, read_seal, sidecar_path)
from guest_backup.archive.manifest import (MAX_MANIFEST_BYTES, MAX_SIGNATURE_BYTES, Binding,
                                          member_problem, parse_manifest)
from guest_backup.archive.seal import SealCheck, check_seal
from guest_backup.archive.signing import SignatureError, TrustedKeys
from guest_backup.archive.screening import screen_dump
from guest_backup.archive.verify import (ArchiveRefused, VerifyReport, check_zip, digest_problems,
                                         missing_seal)
from guest_backup.archive.writer import Digest
from guest_backup.archive.zipstream import Member, StreamError, ZipStream
from guest_backup.errors import BackupError

_KEPT = {MANIFEST_MEMBER: MAX_MANIFEST_BYTES, SIGNATURE_MEMBER: MAX_SIGNATURE_BYTES}


class ArchivePass:
    """``with ArchivePass(...) as archive:`` the checks possible before reading
    (raising :class:`ArchiveRefused`); then :meth:`members` (uploads and the
    dump, in archive order) and :meth:`verdict` once they were all read."""

    def __init__(self, path: str | os.PathLike, trusted: TrustedKeys, binding: Binding, *,
                 identities: list | None = None, allow_unsigned: bool = False,
                 engines: Mapping | None = None, verify_first: bool = True) -> None:
        self.path, self.trusted, self.binding = Path(path), trusted, binding
        self.engines, self.verify_first = engines, verify_first
        self.identities, self.allow_unsigned = identities, allow_unsigned
        self.report = VerifyReport(ok=False, encrypted=is_encrypted(path))
        #: the engine the signed seal or manifest names, when known before the pass
        self.engine: str | None = None
        self.digests: dict = {}
        self.order: list[str] = []
        self._seen: set[str] = set()
        self._kept: dict[str, bytes] = {}
        self._seal: dict | None = None
        self._legacy: bytes | None = None
        self._source: DecryptingReader | None = None
        self._file = None
        self._places: list[tuple[str, int]] | None = None  # plain: (name, offset) by the ZIP

    def __enter__(self) -> "ArchivePass":
        if not self.path.is_file():
            raise BackupError(f"{self.path} does not exist")
        if self.report.encrypted:
            self._open_encrypted()
        else:
            self._open_plain()
        return self

    def _open_encrypted(self) -> None:
        if self.identities is None:
            raise BackupError("the archive is encrypted: give --identity FILE (the age "
                              "identity of one of its recipients)")
        if not self._check_seal(required=True) and self.verify_first:
            self._verify_first()
        self._source = DecryptingReader(self.path, self.identities)
        try:  # the identity and the first chunk checked before anything is touched
            self.zip = ZipStream(self._source.read)
            self.zip.source.unread(self.zip.source.exact(4))
        except BaseException as exc:
            self.__exit__(None, None, None)
            if isinstance(exc, StreamError):
                raise ArchiveRefused([str(exc)]) from None
            raise

    def _open_plain(self) -> None:
        check_zip(self.path, None, self.trusted, self.allow_unsigned, self.report,
                  self.binding, members=False)
        if self.report.problems or not self._check_seal(required=False):
            self._verify_first()  # every member before the load (every reason if refused)
        self.engine = self.report.manifest["database"]["engine"]
        self._file = open(self.path, "rb")
        with zipfile.ZipFile(self._file) as zf:  # where each member must be met
            self._places = [(i.filename, i.header_offset) for i in zf.infolist()]
        self._file.seek(0)
        self.zip = ZipStream(self._file.read)

    def _verify_first(self) -> None:
        """No valid seal: the whole archive verified before the pass that loads it
        (for an encrypted one a pass of its own, decrypted as it is read)."""
        if self.report.encrypted:
            report = verify_stream(self.path, self.engines, self.trusted, self.binding,
                                   self.identities, self.allow_unsigned)
        else:
            report = VerifyReport(ok=False)
            check_zip(self.path, self.engines, self.trusted, self.allow_unsigned, report,
                      self.binding)
        if report.problems:
            raise ArchiveRefused(report.problems)
        self.report.notes += [n for n in report.notes if n not in self.report.notes]
        self.report.manifest = self.report.manifest or report.manifest
        self.report.unsigned = self.report.unsigned or report.unsigned
        if self.engine is None and self.report.manifest is not None:
            self.engine = self.report.manifest["database"]["engine"]

    def __exit__(self, *exc_info) -> None:
        if self._source is not None:
            self._source.close()
        if self._file is not None:
            self._file.close()

    # ------------------------------------------------------------------ before

    def _check_seal(self, required: bool) -> bool:
        """Whether the file is the one its seal (the signed ``.sig`` beside it) names:
        signature, name, binding, size and SHA-256 (one read at disk speed; nothing
        decrypted or inflated), so that no byte of a changed archive reaches the
        database. An encrypted archive's wrong or missing seal is refused (missing:
        unless ``allow_unsigned``); a plain archive is then verified whole first."""
        sidecar = sidecar_path(self.path)
        try:
            envelope = read_seal(sidecar)  # at most MAX_SIGNATURE_BYTES
        except OSError:
            if required and not self.allow_unsigned:
                raise ArchiveRefused([missing_seal(sidecar.name)])
            if required:
                self.report.notes.append(f"{sidecar.name} is missing: only the contents were "
                                         f"checked")
            return False
        digest = Digest.of_file(self.path)
        try:
            check = check_seal(envelope, digest.size, digest.sha.hexdigest(), self.trusted,
                               self.binding, self.report.encrypted)
        except SignatureError as exc:
            check = SealCheck([str(exc)])
        if check.problems and required:
            raise ArchiveRefused(check.problems)
        if not check.problems:
            self.report.signed_by, self._seal, self._legacy = check.signer, check.claims, \
                check.legacy
            if check.claims:
                self.engine = check.claims["engine"]
        return not check.problems

    # ------------------------------------------------------------------ during

    def members(self) -> Iterator[Member]:
        """The dump and the uploads as they come (each read to its end, or skipped,
        by the caller); the manifest and its signature are kept for the verdict."""
        try:
            for member in self.zip.members():
                self._admit(member.name)
                self._check_place(member)
                if member.name in _KEPT:
                    self._kept[member.name] = member.read_capped(_KEPT[member.name])
                else:
                    yield member
                    member.skip()
                self.digests[member.name] = member.digest
        except StreamError as exc:
            raise ArchiveRefused([str(exc)]) from None

    def _admit(self, name: str) -> None:
        """Refuse, as soon as it appears, a member no system backup has."""
        if len(self.order) >= MAX_MEMBERS:
            raise ArchiveRefused([f"more than {MAX_MEMBERS} members: an archive holds at most "
                                  f"{MAX_MEMBERS}"])
        if name in self._seen:
            raise ArchiveRefused([f"duplicate members: {name[:200]}"])
        problem = ("a member's name holds a control character" if any(c < " " for c in name)
                   else member_problem(zipfile.ZipInfo(name)))
        if problem:
            raise ArchiveRefused([problem])
        self.order.append(name)
        self._seen.add(name)

    def _check_place(self, member: Member) -> None:
        """A plain archive's member must be the one its central directory (checked with
        the signed manifest before the pass) lists next, where it lists it: a local
        entry hidden from the directory never reaches a consumer. (Encrypted: the
        seal vouched for every byte, or the archive was verified first.)"""
        i = len(self.order) - 1
        if self._places is not None and (i >= len(self._places)
                                         or self._places[i] != (member.name, member.offset)):
            raise ArchiveRefused([f"the ZIP holds a member its central directory does not list "
                                  f"(at offset {member.offset}): bytes hidden from verify"])

    # ------------------------------------------------------------------ after

    def verdict(self, engines: Mapping | None, expect_engine: str | None = None) -> dict:
        """Every check the pass makes possible; the signed manifest, or ArchiveRefused."""
        problems = self._outer_problems()
        if problems:
            raise ArchiveRefused(problems)
        manifest = self._manifest()
        if expect_engine is not None and manifest["database"]["engine"] != expect_engine:
            raise ArchiveRefused([f"the archive holds a {manifest['database']['engine']} dump; "
                                  f"the target is {expect_engine}"])
        problems = digest_problems(manifest, self.digests, engines, _KEPT)
        if problems:
            raise ArchiveRefused(problems)
        self.report.manifest, self.report.ok = manifest, True
        return manifest

    def _outer_problems(self) -> list[str]:
        """The ciphertext against its seal, the central directory against the members."""
        if self.zip.central is None:
            return ["the archive was not read to its end"]
        problems = []
        if self._source is not None:
            self._source.finish()
            size, sha = self._source.ciphertext.size, self._source.ciphertext.sha.hexdigest()
            if self._seal is not None and (self._seal["size"], self._seal["sha256"]) != (size, sha):
                problems.append("the signature does not match the file: it was changed after "
                                "it was signed")
            elif self._legacy is not None:
                try:
                    self.report.signed_by = self.trusted.check_file(
                        self._legacy, self.binding.name, size, sha)
                except SignatureError as exc:
                    problems.append(str(exc))
        central = [name for name, _ in self.zip.central]
        if central != self.order:
            problems.append("the ZIP's central directory does not list the members it holds")
        for name, attr in self.zip.central:
            info = zipfile.ZipInfo(name)
            info.external_attr = attr
            if problem := member_problem(info):
                problems.append(problem)
        return problems[:20]

    def _manifest(self) -> dict:
        """The streamed manifest, signed by a trusted key (or accepted unsigned)."""
        data = self._kept.get(MANIFEST_MEMBER)
        if data is None:
            raise ArchiveRefused(["manifest.json is missing"])
        try:
            manifest = parse_manifest(data)
        except ValueError as exc:
            raise ArchiveRefused([str(exc)]) from None
        if self._file is not None and manifest != self.report.manifest:
            raise ArchiveRefused(["manifest.json changed while the archive was read"])
        envelope = self._kept.get(SIGNATURE_MEMBER)
        if envelope is not None:
            try:
                signer = self.trusted.check_manifest(envelope, data)
            except SignatureError as exc:
                raise ArchiveRefused([str(exc)]) from None
            self.report.signed_by = self.report.signed_by or signer
            problems = self.binding.problems(manifest, signer)
            if problems:
                raise ArchiveRefused(problems)
        elif self.allow_unsigned:
            if not self.report.unsigned:
                self.report.unsigned = True
                self.report.notes.append("the archive is UNSIGNED: its origin cannot be checked")
        else:
            raise ArchiveRefused(["the archive is unsigned (made before archives were signed, "
                                  "or forged); --allow-unsigned accepts it anyway"])
        return manifest


def verify_stream(path: str | os.PathLike, engines: Mapping | None, trusted: TrustedKeys,
                  binding: Binding, identities: list, allow_unsigned: bool) -> VerifyReport:
    """``verify`` of an encrypted archive with an identity: one pass, decrypted as it
    is read (no copy on disk), the dump screened, every problem reported."""
    problems: list[str] = []
    archive = ArchivePass(path, trusted, binding, identities=identities,
                          allow_unsigned=allow_unsigned, engines=engines, verify_first=False)
    try:
        with archive:
            for member in archive.members():
                if member.name == DATABASE_MEMBER:
                    archive.engine, found = screen_dump(member, engines, archive.engine)
                    problems += found
            archive.report.manifest = archive.verdict(engines, archive.engine)
    except ArchiveRefused as exc:
        problems += exc.problems
    except BackupError as exc:
        problems.append(str(exc))
    report = archive.report
    report.problems = problems
    report.ok = not problems
    return report
