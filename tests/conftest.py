"""Fixtures in the flaskr style: ``app``, ``client``, ``runner``, ``auth``.

Every test that uses ``app`` runs twice: on a fresh SQLite file and on a
PostgreSQL database created for this test session (``TEST_DATABASE_URL``,
default the local server). Without a server the PostgreSQL half is skipped with
the reason, unless ``REQUIRE_POSTGRES=1``, where a missing server is a failure.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from guest_registration import create_app
from guest_registration.config import normalise_database_url
from guest_registration.extensions import db

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
ADMIN = ("admin@example.com", "admin-password-1")
USER = ("user@example.com", "user-password-1")


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").lower() in {"1", "true", "yes"}


@pytest.fixture(scope="session")
def pg_server() -> str:
    """URL of a PostgreSQL maintenance database we may create databases from."""
    url = normalise_database_url(os.environ.get("TEST_DATABASE_URL", DEFAULT_PG))
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT",
                              connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
    except Exception as exc:
        reason = f"PostgreSQL not reachable at {url}: {str(exc).splitlines()[0]}"
        if _truthy("REQUIRE_POSTGRES"):
            pytest.fail(reason + " (REQUIRE_POSTGRES=1)", pytrace=False)
        pytest.skip(reason)
    finally:
        engine.dispose()
    return url


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


@pytest.fixture(scope="session")
def pg_database(pg_server):
    """One PostgreSQL database for the session; each test gets fresh tables in it."""
    url = create_pg_database(pg_server)
    yield url
    drop_pg_database(pg_server, url)


@pytest.fixture
def new_pg_database(pg_server):
    """A new empty PostgreSQL database for one test (e.g. a restore target)."""
    made = []

    def make() -> str:
        made.append(create_pg_database(pg_server, "gr_target"))
        return made[-1]

    yield make
    for url in made:
        drop_pg_database(pg_server, url)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def database_url(request, backend, tmp_path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    return request.getfixturevalue("pg_database")


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


@pytest.fixture
def app_config(tmp_path, database_url) -> dict:
    """Config for the ``app`` fixture; tests may change it before requesting ``app``."""
    return make_config(tmp_path, database_url)


@pytest.fixture
def app(app_config, tmp_path):
    app = create_app(app_config, instance_path=str(tmp_path / "instance"))
    with app.app_context():
        db.drop_all()
        from guest_registration.maintenance import setup

        list(setup(app, *ADMIN))
        datastore = app.extensions["security"].datastore
        from flask_security.utils import hash_password

        datastore.create_user(email=USER[0], password=hash_password(USER[1]), active=True)
        db.session.commit()
    yield app
    with app.app_context():
        db.session.remove()
        leaked = []
        if db.engine.dialect.name == "postgresql":
            leaked = terminate_open_transactions(db.engine)
            db.drop_all()
        db.engine.dispose()
    assert not leaked, f"connections left inside a transaction (a stream not closed?): {leaked}"


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


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


def csrf_token_from(html: str) -> str:
    m = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html) or re.search(
        r'value="([^"]+)"[^>]*name="csrf_token"', html)
    assert m, "no csrf_token in page"
    return m.group(1)


class AuthActions:
    def __init__(self, client):
        self._client = client

    def login(self, email: str = ADMIN[0], password: str = ADMIN[1]):
        page = self._client.get("/login")
        token = csrf_token_from(page.get_data(as_text=True))
        return self._client.post("/login", data={"email": email, "password": password,
                                                 "csrf_token": token})

    def logout(self):
        """Forget the session (the real POST /logout is tested in test_admin.py)."""
        self._client.delete_cookie("session")

    def token(self, email: str = ADMIN[0], password: str = ADMIN[1]) -> str:
        """An API token the way Flask-Security hands it out: JSON login with CSRF."""
        csrf = self._client.get("/login", headers={"Accept": "application/json"}).get_json()[
            "response"]["csrf_token"]
        resp = self._client.post("/login?include_auth_token",
                                 json={"email": email, "password": password},
                                 headers={"X-CSRF-Token": csrf})
        assert resp.status_code == 200, resp.get_data(as_text=True)
        token = resp.get_json()["response"]["user"]["authentication_token"]
        self.logout()
        return token


@pytest.fixture
def auth(client):
    return AuthActions(client)
