"""Fixtures in the flaskr style: ``app``, ``client``, ``runner``, ``auth``.

Every test that uses ``app`` runs twice: on a fresh SQLite file and on a
PostgreSQL database created for this test session (``TEST_DATABASE_URL``,
default the local server). Without a server the PostgreSQL half is skipped with
the reason, unless ``REQUIRE_POSTGRES=1``, where a missing server is a failure.

Fixtures only: plain helpers and constants (``ADMIN``, ``make_config``,
``manage`` ...) are in ``tests/helpers.py``; the browser fixtures are in
``tests/browser/conftest.py``.
"""

from __future__ import annotations

import os

import pytest
import sqlalchemy as sa

from guest_registration import create_app
from guest_registration.config import normalise_database_url
from guest_registration.extensions import db
from guest_registration.models import Trip
from tests.helpers import (ADMIN, USER, create_pg_database, csrf_token_from, drop_pg_database,
                           make_config, missing, terminate_open_transactions)

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


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
        missing("REQUIRE_POSTGRES", reason)
    finally:
        engine.dispose()
    return url


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


@pytest.fixture
def app_config(tmp_path, database_url) -> dict:
    """Config for the ``app`` fixture; tests may change it before requesting ``app``."""
    return make_config(tmp_path, database_url)


def drop_everything() -> None:
    """Every table of the models, of the plugins' revisions and Alembic's version
    table (the session's PostgreSQL database is shared by the tests)."""
    import sqlalchemy as sa

    db.drop_all()
    left = sa.MetaData()
    left.reflect(db.engine)
    left.drop_all(db.engine)


@pytest.fixture
def app(app_config, tmp_path):
    app = create_app(app_config, instance_path=str(tmp_path / "instance"))
    with app.app_context():
        drop_everything()
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
            drop_everything()
        db.engine.dispose()
    assert not leaked, f"connections left inside a transaction (a stream not closed?): {leaked}"


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


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


@pytest.fixture
def trip_id(app) -> int:
    """One trip (no dates, two places) in the app's database."""
    with app.app_context():
        trip = Trip(title="Lake Trip", max_guests=2)
        db.session.add(trip)
        db.session.commit()
        return trip.id


REDIS_TEST_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/13")


@pytest.fixture
def redis_url() -> str:
    """This suite's own Redis database (13 unless TEST_REDIS_URL), empty before and
    after each test. Without a server the test is skipped, unless REQUIRE_REDIS=1."""
    import redis

    client = redis.Redis.from_url(REDIS_TEST_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        missing("REQUIRE_REDIS", f"no Redis at {REDIS_TEST_URL}: {exc}")
    client.flushdb()
    yield REDIS_TEST_URL
    client.flushdb()
    client.close()
