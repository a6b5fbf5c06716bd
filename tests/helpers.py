"""Helpers shared by the test modules: plain functions, context managers and
constants. Fixtures live in ``conftest.py`` files only; no test module imports
from another test module or from a conftest."""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa
from flask import Flask

from guest_registration.extensions import db

ROOT = Path(__file__).resolve().parent.parent
ADMIN = ("admin@example.com", "admin-password-1")
USER = ("user@example.com", "user-password-1")
API = "/api/backup/guests"  # the monthly guest export


# --------------------------------------------------------------------------- app and database

def required(variable: str) -> bool:
    """Whether CI said a part must be there (``REQUIRE_POSTGRES=1`` and the like)."""
    return os.environ.get(variable, "").lower() in {"1", "true", "yes"}


def missing(variable: str, reason: str) -> None:
    """A real part (server, browser, CLI) is missing: skip with the reason, or fail
    with it when ``variable`` (set by ``.ci/run``) requires the part."""
    if required(variable):
        pytest.fail(f"{reason} ({variable}=1)", pytrace=False)
    pytest.skip(reason)


def reset_moto() -> None:
    """Empty moto's buckets. Its servers keep them in this process, shared by every
    server a test starts; resetting here, not over HTTP, needs no server's answer
    (a first request on a loaded machine once took longer than its timeout)."""
    from moto.moto_api._internal.models import moto_api_backend

    moto_api_backend.reset()


def make_config(tmp_path: Path, database_url: str, **extra) -> dict:
    cfg = {
        "TESTING": True,
        "DATABASE_URL": database_url,
        "UPLOAD_FOLDER": str(tmp_path / "uploads"),
        "BACKUP_FOLDER": str(tmp_path / "backups"),
        "SECRET_KEY": "test-secret-key",
        "SECURITY_PASSWORD_SALT": "test-salt",
        "MAX_PHOTO_BYTES": 200 * 1024,
        # argon2 stays the scheme; cheaper parameters keep the suite fast
        "SECURITY_PASSWORD_HASH_PASSLIB_OPTIONS": {"argon2__rounds": 1,
                                                   "argon2__memory_cost": 1024},
    }
    cfg.update(extra)
    return cfg


def csrf_token_from(html: str) -> str:
    m = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html) or re.search(
        r'value="([^"]+)"[^>]*name="csrf_token"', html)
    assert m, "no csrf_token in page"
    return m.group(1)


def create_pg_database(server_url: str, prefix: str = "gr_test") -> str:
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return sa.engine.make_url(server_url).set(database=name).render_as_string(hide_password=False)


def drop_pg_database(server_url: str, url: str) -> None:
    name = sa.engine.make_url(url).database
    engine = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def waiting_exclusive(url: str, table: str = "guest") -> bool:
    """Whether a session is waiting for an ACCESS EXCLUSIVE lock on ``table`` (a
    rewrite queued behind someone's lock)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return bool(conn.execute(sa.text(
                "SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' "
                "AND NOT granted AND relation = to_regclass(:table)"), {"table": table}
            ).scalar_one())
    finally:
        engine.dispose()


def terminate_open_transactions(engine) -> list[str]:
    """End (and report) other sessions of this database still inside a transaction,
    so a leaked connection fails its test instead of hanging the suite."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT pid, left(query, 60) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND xact_start IS NOT NULL")).all()
        for pid, _ in rows:
            conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        conn.commit()
    return [q for _, q in rows]


def db_engine_of(app: Flask):
    """The backup plugin's database engine for the app's own database."""
    from guest_backup.wiring import backup_context

    with app.app_context():
        return backup_context(app).engine_for(db.engine.dialect.name)


# --------------------------------------------------------------------------- subprocesses

def manage(*args: str, env: dict | None = None, tmp_path: Path) -> subprocess.CompletedProcess:
    """``python manage.py ARGS`` in a subprocess on an SQLite database in ``tmp_path``."""
    full_env = {**os.environ, "INSTANCE_PATH": str(tmp_path / "instance"),
                "DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", **(env or {})}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=120)


def pip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m pip ARGS`` of the interpreter running the tests (no cache); with
    ``check`` a failure fails the test with pip's output."""
    proc = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check",
                           "--no-cache-dir", *args],
                          capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, f"pip {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}"
    return proc


def pythonpath_env(*dirs: Path) -> dict[str, str]:
    """Environment for a subprocess that should also import from ``dirs`` (first)."""
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"PYTHONPATH": os.pathsep.join([*map(str, dirs), *inherited])}


@contextlib.contextmanager
def installed_distribution(source: Path, tmp_dir: Path) -> Iterator[Path]:
    """Install the distribution at ``source`` for one test (or one class, one module) only.

    pip installs it with ``--target`` into a new directory under ``tmp_dir``
    (never into the environment running the tests, so a killed run leaves
    nothing behind but that temporary directory), from a copy of ``source``
    (so the build leaves no ``build/`` or ``*.egg-info`` in the repository).
    Yields the target directory. While the context is open the target is first
    on ``sys.path``: importlib.metadata, and so the app's entry-point discovery,
    sees the distribution in-process. Subprocesses see it only when given
    ``pythonpath_env(target)``. On exit ``sys.path`` is restored and every module
    imported from the target is removed from ``sys.modules``.
    """
    tmp_dir = Path(tmp_dir)
    copy = tmp_dir / f"src-{source.name}"
    shutil.copytree(source, copy,
                    ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__"))
    target = tmp_dir / f"site-{source.name}"
    pip("install", "-q", "--no-build-isolation", "--no-deps", "--target", str(target), str(copy))
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.syspath_prepend(str(target))
            importlib.invalidate_caches()
            yield target
    finally:
        prefix = str(target) + os.sep  # module paths start with the sys.path entry
        for name, module in list(sys.modules.items()):
            if (getattr(module, "__file__", None) or "").startswith(prefix):
                del sys.modules[name]
        importlib.invalidate_caches()


def add_guest_with_photo(app, name: str = "0b0e6c1e-3c52-4a43-9a6f-2f0f0b1b7d11.png") -> int:
    """One trip, registration and guest whose document photo is ``name`` (written to
    the upload folder unless the name has a path in it); returns the guest id."""
    from guest_registration.extensions import db
    from guest_registration.models import Guest, Registration, Trip

    with app.app_context():
        trip = Trip(title="T", max_guests=3)
        reg = Registration(trip=trip, email="g@example.com", language="en")
        guest = Guest(registration=reg, first_name="A", last_name="B", age_category="adult",
                      document_type="passport", document_number="X1", document_photo=name,
                      gdpr_consent=True)
        db.session.add_all([trip, reg, guest])
        db.session.commit()
        folder = Path(app.config["UPLOAD_FOLDER"])
        folder.mkdir(parents=True, exist_ok=True)
        if "/" not in name:
            (folder / name).write_bytes(b"\x89PNG\r\n\x1a\n-fake-photo")
        return guest.id


def make_backup(runner, *args: str) -> Path:
    """``manage.py backup`` through the app's CLI runner; the archive's path."""
    result = runner.invoke(args=["backup", *args])
    assert result.exit_code == 0, result.output
    path = Path(result.output.strip().splitlines()[-1])
    assert path.is_file()
    return path


def trusted_of(app: Flask):
    """The keys the app's backups trust (its own signing key and BACKUP_TRUSTED_KEYS)."""
    from guest_backup.wiring import backup_context

    return backup_context(app).settings.trusted()


def resign(app: Flask, path: Path) -> Path:
    """Sign ``path``'s manifest again with the app's own key, as an attacker who
    stole the key would after forging members: what is left to catch it are the
    checks behind the signature (checksums, the dump screen, member rules)."""
    import zipfile

    from guest_backup.wiring import backup_context

    signer = backup_context(app).settings.signer()
    tmp = path.with_name(path.name + ".resigning")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
        for info in src.infolist():
            if info.filename != "manifest.sig":
                out.writestr(info, src.read(info))
        out.writestr("manifest.sig", signer.sign_manifest(src.read("manifest.json")))
    tmp.replace(path)
    return path


def table_contents(url: str, skip=("audit_log",)) -> dict[str, list[tuple]]:
    """Every table's rows (sorted), to compare two databases."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        meta = sa.MetaData()
        meta.reflect(engine)
        out = {}
        with engine.connect() as conn:
            for name, table in sorted(meta.tables.items()):
                if name in skip:
                    continue
                rows = conn.execute(sa.select(table)).all()
                out[name] = sorted((tuple(r) for r in rows), key=repr)
        return out
    finally:
        engine.dispose()


def restore_target(request, backend, tmp_path) -> str:
    """An empty database of the backend to restore into."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'restored.db'}"
    return request.getfixturevalue("new_pg_database")()


def insert_bulk_guests(engine, rows: int, year: int, month: int, tag: str) -> None:
    """``rows`` guests of the first registration, created in ``year-month``, in one
    ``INSERT … SELECT generate_series`` (PostgreSQL)."""
    import sqlalchemy as sa

    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO guest (registration_id, first_name, last_name, age_category,"
            " document_type, document_number, gdpr_consent, created_at) "
            "SELECT (SELECT min(id) FROM registration), :tag || ' ' || i, repeat('x', 55),"
            " 'adult', 'passport', :tag || i, true,"
            " make_timestamp(:year, :month, 1 + i % 28, 1, 2, 3) "
            "FROM generate_series(1, :n) AS i"),
            {"n": rows, "year": year, "month": month, "tag": tag})


def sealed(app, folder: Path, names, size: int = 2) -> None:
    """Archive-named files (junk content) with a valid seal of this app: what
    listings, retention and health recognise without reading the file."""
    import hashlib

    from guest_backup.archive.format import name_time, sidecar_path
    from guest_backup.wiring import backup_context

    settings = backup_context(app).settings
    signer, installation = settings.signer(), settings.installation()
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        data = b"P" * size
        (folder / name).write_bytes(data)
        sidecar_path(folder / name).write_bytes(signer.seal({
            "name": name, "size": size, "sha256": hashlib.sha256(data).hexdigest(),
            "created_at": name_time(name).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "installation": installation, "engine": "sqlite"}))


def login_from(client, email: str, password: str, address: str = "10.0.0.1"):
    """A login through the form (with its CSRF token) from ``address``."""
    page = client.get("/login", environ_overrides={"REMOTE_ADDR": address})
    return client.post("/login", data={"email": email, "password": password,
                                       "csrf_token": csrf_token_from(page.get_data(as_text=True))},
                       environ_overrides={"REMOTE_ADDR": address})
