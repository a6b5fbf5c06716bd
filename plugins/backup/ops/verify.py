"""``verify`` as an operation: the archive check of :mod:`guest_backup.archive.verify`,
recorded in the audit log."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from guest_backup.archive.encryption import is_encrypted
from guest_backup.archive.manifest import Binding
from guest_backup.archive.onepass import verify_stream
from guest_backup.archive.signing import TrustedKeys
from guest_backup.archive.verify import ScreeningEngine, VerifyReport, verify_archive
from guest_backup.errors import BackupError
from guest_backup.ops.audit import AuditLog
from guest_backup.ops.fetch import is_url
from guest_backup.ops.page_texts import VERDICTS, Text
from guest_backup.ops.schema import archive_revisions


def verify(path: str | os.PathLike, engines: Mapping[str, ScreeningEngine],
           trusted: TrustedKeys, *, audit: AuditLog, audit_engine, actor: str | None, via: str,
           allow_unsigned: bool = False, identities: list | None = None,
           installation: str | None = None, explicit_keys=(),
           target: str | None = None) -> VerifyReport:
    """:func:`verify_archive` (with ``identities``, an encrypted archive's contents too,
    in one pass), recorded in the audit log (``verify``, ok or failed) under ``target``
    (:func:`audit_target`; default: the file's name, for a caller that verifies only
    stored archives). The manifest's schema revisions must be revision names (a
    restore refuses others)."""
    if identities is not None and is_encrypted(path):  # one pass, never a decrypted copy
        report = verify_stream(path, engines, trusted,
                               Binding(os.path.basename(path), installation,
                                       frozenset(explicit_keys)), identities, allow_unsigned)
    else:
        report = verify_archive(path, engines, trusted, allow_unsigned=allow_unsigned,
                                installation=installation, explicit_keys=explicit_keys)
    if report.ok and report.manifest is not None:
        try:
            archive_revisions(report.manifest)
        except BackupError as exc:
            report.ok = False
            report.problems.append(str(exc))
    message = "; ".join(report.problems + report.notes
                        + (["decryption skipped (no identity)"] if report.decryption_skipped
                           else [])) or None
    audit.record(audit_engine, "verify", "ok" if report.ok else "failed", actor=actor, via=via,
                 target=target or os.path.basename(path), message=message)
    return report


def audit_target(archive: str, path: str | os.PathLike, backup_folder: str | os.PathLike) -> str:
    """What a check of ``archive`` (as the operator named it: a path or a storage URL;
    ``path``: the file read) is audited under: the archive's name when the file is a
    stored archive (a storage's object, or the file of that name in BACKUP_FOLDER),
    else its absolute path. Retention (:func:`~guest_backup.ops.retention.failed_checks`),
    health and the Backup page take a check audited under a name as that archive's
    own: a damaged copy on a USB stick or a download, audited under its bare name,
    marked the intact stored archive as failed, and retention kept it as damaged. A
    path holds ``/``, so it never matches an archive's name."""
    name = os.path.basename(path)
    if is_url(archive):
        return name
    try:
        if os.path.samefile(path, Path(backup_folder) / name):
            return name
    except OSError:  # no file of that name in BACKUP_FOLDER (or none at all here)
        pass
    return os.path.abspath(path)


def verdict(report: VerifyReport, name: str, installation: str | None = None) -> Text:
    """What failed, in one phrase a page words in its language (the problems
    themselves are the CLI's and the audit log's): told from the report's facts
    (what was read, who signed, the binding checked again), never from its text."""
    if report.encrypted:
        kind = "seal" if report.signed_by is None else "binding"
    elif report.manifest is None:
        kind = "unreadable"
    elif report.signed_by is None and not report.unsigned:
        kind = "signature"
    elif Binding(name, installation).problems(report.manifest, report.signed_by):
        kind = "binding"
    else:
        try:
            archive_revisions(report.manifest)
            kind = "contents"
        except BackupError:
            kind = "revisions"
    return Text(VERDICTS[kind])
