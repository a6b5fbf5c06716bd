"""Verifying an archive: a readable ZIP, only members a system backup has (no
links, no paths leaving the folder, no duplicates, no ZIP bombs), every member's
size and SHA-256 as the manifest says, and a complete dump. Reading only."""

from __future__ import annotations

import json
import os
import re
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Mapping

from sqlalchemy.engine import Engine

from guest_registration import audit

from .archive import DATABASE_MEMBER, FORMAT_VERSION, MANIFEST_MEMBER, UPLOADS_PREFIX
from .engines import DatabaseEngine
from .writer import CHUNK, Digest

#: a member inflating more than this ratio *and* beyond BOMB_MIN_BYTES is refused
BOMB_RATIO = 200
BOMB_MIN_BYTES = 64 * 1024 * 1024
MAX_MANIFEST_BYTES = 16 * 1024 * 1024


@dataclass
class VerifyReport:
    ok: bool
    problems: list[str] = field(default_factory=list)
    manifest: dict | None = None


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
    if not (name in (DATABASE_MEMBER, MANIFEST_MEMBER) or name.startswith(UPLOADS_PREFIX)):
        return f"{name!r} is not a member a system backup has"
    return None


def _structure_problems(infos: list[zipfile.ZipInfo]) -> list[str]:
    problems = []
    names = [i.filename for i in infos]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        problems.append(f"duplicate members: {', '.join(sorted(dupes))[:200]}")
    for info in infos:
        problem = member_problem(info)
        if problem:
            problems.append(problem)
        elif (info.file_size > BOMB_MIN_BYTES
              and info.file_size > BOMB_RATIO * max(info.compress_size, 1)):
            problems.append(f"{info.filename!r} inflates {info.file_size // max(info.compress_size, 1)}"
                            f"-fold: refused as a possible ZIP bomb")
    if not problems and MANIFEST_MEMBER not in names:
        problems.append("manifest.json is missing")
    return problems


def _read_manifest(zf: zipfile.ZipFile) -> dict:
    if zf.getinfo(MANIFEST_MEMBER).file_size > MAX_MANIFEST_BYTES:
        raise ValueError("manifest.json is implausibly large")
    try:
        manifest = json.loads(zf.read(MANIFEST_MEMBER))
        if not isinstance(manifest["members"], dict) or not manifest["database"]["engine"]:
            raise TypeError
    except Exception:
        raise ValueError("manifest.json is not a valid manifest") from None
    return manifest


def _member_digest(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> Digest:
    """Read a member to its end, refusing to inflate past ``limit`` bytes."""
    digest = Digest()
    with zf.open(info) as member:
        while chunk := member.read(CHUNK):
            if digest.size + len(chunk) > limit:
                raise ValueError("member inflates beyond its declared size")
            digest.update(chunk)
    return digest


def verify_archive(path: str | os.PathLike,
                   engines: Mapping[str, DatabaseEngine] | None = None) -> VerifyReport:
    """Check an archive without writing anything; the report lists every problem."""
    report = VerifyReport(ok=False)
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        report.problems.append(f"not a readable ZIP archive ({type(exc).__name__})")
        return report
    with zf:
        infos = zf.infolist()
        report.problems = _structure_problems(infos)
        if report.problems:
            return report
        try:
            manifest = report.manifest = _read_manifest(zf)
        except ValueError as exc:
            report.problems.append(str(exc))
            return report
        listed: dict = manifest["members"]
        if manifest.get("format_version") != FORMAT_VERSION:
            report.problems.append(f"unsupported archive format {manifest.get('format_version')!r}")
        names = {i.filename for i in infos}
        report.problems += [f"{name} is listed in the manifest but missing"
                            for name in listed if name not in names]
        for info in infos:
            if info.filename == MANIFEST_MEMBER:
                continue
            expected = listed.get(info.filename)
            if not isinstance(expected, dict):
                report.problems.append(f"{info.filename} is not in the manifest")
                continue
            if info.file_size != expected.get("size"):
                report.problems.append(f"{info.filename}: size differs from the manifest")
                continue
            try:
                digest = _member_digest(zf, info, expected["size"])
            except Exception as exc:  # zlib.error, BadZipFile, EOFError, our ValueError ...
                report.problems.append(f"{info.filename}: damaged ({exc.__class__.__name__})")
                continue
            if digest.sha.hexdigest() != expected.get("sha256"):
                report.problems.append(f"{info.filename}: checksum mismatch")
            if info.filename == DATABASE_MEMBER:
                engine = (engines or {}).get(manifest["database"]["engine"])
                if engine is None:
                    report.problems.append(
                        f"no database engine for the archive's {manifest['database']['engine']!r}")
                elif not engine.is_complete(digest.tail):
                    report.problems.append("database.sql is incomplete (no completion trailer)")
    report.ok = not report.problems
    return report


def verify(path: str | os.PathLike, engines: Mapping[str, DatabaseEngine], *,
           audit_engine: Engine, actor: str | None, via: str) -> VerifyReport:
    """:func:`verify_archive`, recorded in the audit log (``verify``, ok or failed)."""
    report = verify_archive(path, engines)
    audit.record(audit_engine, "verify", "ok" if report.ok else "failed", actor=actor, via=via,
                 target=os.path.basename(path), message="; ".join(report.problems) or None)
    return report
