"""The per-account login limit counts every spelling of an address that logs in
as the same user under that user, on SQLite and PostgreSQL.

Flask-Security finds the user with ``lower(email) = lower(value)`` after its own
e-mail normalisation. PostgreSQL's lower() maps U+0130 'İ' to 'i' (Python's
casefold() makes it 'i' + U+0307), so 'admİn@example.com' logs in as the admin:
the review of the per-account limit found that spelling counted under a key of
its own, a fresh budget of guesses for each 'i' in the address. Other letters
checked: the KELVIN SIGN (U+212A) becomes 'K' in the e-mail normalisation (both
databases); U+017F long s, U+0131 dotless i and fullwidth letters in the local
part log in nowhere; a fullwidth letter in the domain is normalised away.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from guest_registration.extensions import db
from tests.helpers import ADMIN, login_from

LIMIT = 3
KIOSK = ("Kiosk@example.com", "kiosk-password-1")  # stored with a capital letter

#: (address, password) spellings that log in, on both databases
BOTH = [
    ("ADMIN@example.com", ADMIN),
    ("admin@EXAMPLE.COM", ADMIN),
    ("admin@\uff45xample.com", ADMIN),  # fullwidth 'ｅ' in the domain
    ("kiosk@example.com", KIOSK),
    ("\u212aiosk@example.com", KIOSK),  # KELVIN SIGN
    ("KIOSK@EXAMPLE.COM", KIOSK),
]
#: spellings that log in on PostgreSQL only (its lower() maps U+0130 to 'i')
POSTGRES_ONLY = [
    ("adm\u0130n@example.com", ADMIN),
    ("ADM\u0130N@example.com", ADMIN),
    ("adm\u0130n@\uff45xample.com", ADMIN),
]
#: spellings that log in nowhere
NOWHERE = ["adm\u0131n@example.com", "\uff41dmin@example.com", "\uff21DMIN@example.com",
           "kio\u017fk@example.com"]


@pytest.fixture
def app_config(app_config):
    app_config.update(LOGIN_LIMIT_PER_ACCOUNT=f"{LIMIT} per 10 minutes",
                      LOGIN_LIMIT_PER_ADDRESS="1000 per 10 minutes")
    return app_config


@pytest.fixture
def users(app):
    from flask_security.utils import hash_password

    with app.app_context():
        datastore = app.extensions["security"].datastore
        datastore.create_user(email=KIOSK[0], password=hash_password(KIOSK[1]), active=True)
        db.session.commit()
    return app


def _variants(backend: str) -> list[tuple[str, tuple[str, str]]]:
    return BOTH + (POSTGRES_ONLY if backend == "postgresql" else [])


_addresses = iter(f"10.{a}.{b}.{c}" for a in range(20, 250) for b in range(256)
                  for c in range(1, 255))


def _form(app, email: str, password: str):
    return login_from(app.test_client(), email, password, address=next(_addresses))


def _json(app, email, password: str):
    client, address = app.test_client(), {"REMOTE_ADDR": next(_addresses)}
    csrf = client.get("/login", headers={"Accept": "application/json"},
                      environ_overrides=address).get_json()["response"]["csrf_token"]
    return client.post("/login", json={"email": email, "password": password},
                       headers={"X-CSRF-Token": csrf}, environ_overrides=address)


def _logged_in(response) -> bool:
    return response.status_code in (200, 302) and (
        response.headers.get("Location", "").endswith("/admin/")
        or "authentication_token" in response.get_data(as_text=True)
        or (response.is_json and "user" in (response.get_json().get("response") or {})))


def _lock(app, email: str) -> None:
    statuses = [_form(app, email, "wrong-guess").status_code for _ in range(LIMIT)]
    assert 429 not in statuses, statuses
    assert _form(app, email, "wrong-guess").status_code == 429


def test_every_variant_in_the_list_logs_in_when_nothing_is_limited(users, backend):
    """The premise: each spelling below really logs in (and the others do not)."""
    for email, (_plain, password) in _variants(backend):
        assert _logged_in(_form(users, email, password)), email
        assert _logged_in(_json(users, email, password)), email
    assert _logged_in(_json(users, [ADMIN[0]], ADMIN[1]))  # a list: its first value
    for email in NOWHERE + ([] if backend == "postgresql" else [p[0] for p in POSTGRES_ONLY]):
        users.extensions["guest_limiter"].reset()  # these may share a key: a fresh budget
        response = _form(users, email, ADMIN[1] if "dm" in email.lower() else KIOSK[1])
        assert not _logged_in(response) and response.status_code == 200, email


def test_a_variant_of_a_locked_account_is_refused_even_with_the_right_password(users, backend):
    _lock(users, ADMIN[0])
    _lock(users, KIOSK[0])
    for email, (_plain, password) in _variants(backend):
        assert _form(users, email, "wrong-again").status_code == 429, email
        right = _form(users, email, password)
        assert right.status_code == 429 and not _logged_in(right), email
        right = _json(users, email, password)
        assert right.status_code == 429 and not _logged_in(right), email


@pytest.mark.parametrize("account", [ADMIN, KIOSK], ids=["admin", "kiosk"])
def test_the_plain_address_and_its_variants_share_one_budget(users, backend, account):
    spellings = [account[0]] + [e for e, (plain, _p) in _variants(backend) if plain == account[0]]
    statuses = [(_json if i % 2 else _form)(users, spellings[i % len(spellings)],
                                            "wrong-guess").status_code
                for i in range(LIMIT)]
    assert 429 not in statuses, statuses
    for email in spellings:
        assert _form(users, email, account[1]).status_code == 429, email
        assert _json(users, email, account[1]).status_code == 429, email


def test_json_and_form_logins_are_counted_together(users, backend):
    for _ in range(LIMIT):
        assert _json(users, ADMIN[0], "wrong-guess").status_code == 400
    assert _form(users, ADMIN[0], ADMIN[1]).status_code == 429
    assert _json(users, ADMIN[0], ADMIN[1]).status_code == 429


def test_a_list_valued_json_address_is_counted_under_its_user(users, backend):
    """A JSON list becomes the form field's first value: that spelling is the user too."""
    for _ in range(LIMIT):
        assert _form(users, ADMIN[0], "wrong-guess").status_code == 200
    for email in ([ADMIN[0]], [ADMIN[0], "someone@example.com"]):
        response = _json(users, email, ADMIN[1])
        assert response.status_code == 429 and not _logged_in(response), email


def test_the_variants_of_an_unknown_address_are_limited_together(users, backend):
    spellings = ["missing@example.com", "MISSING@example.com", "miss\u0130ng@example.com",
                 "missing@\uff45xample.com", "\uff4dissing@example.com",
                 "mi\u017f\u017fing@example.com", " missing@example.com"]
    statuses = [_form(users, spellings[i], "wrong-guess").status_code for i in range(LIMIT)]
    assert 429 not in statuses, statuses
    for email in spellings:
        assert _form(users, email, "wrong-guess").status_code == 429, email
        assert _json(users, email, "wrong-guess").status_code == 429, email


def test_the_account_key_costs_one_query(users, backend):
    from guest_registration import limits

    with users.app_context():
        admin_id = users.extensions["security"].datastore.find_user(email=ADMIN[0]).id
        db.session.remove()
    queries = []

    def count(conn, cursor, statement, *args):
        queries.append(statement)

    with users.app_context():
        sa.event.listen(db.engine, "before_cursor_execute", count)
        try:
            for email, (plain, _p) in _variants(backend):
                with users.test_request_context("/login", method="POST",
                                                data={"email": email, "password": "x"}):
                    key = limits._account()
                if plain == ADMIN[0]:
                    assert key == f"user:{admin_id}", email
                assert len(queries) == 1, (email, queries)
                queries.clear()
                db.session.remove()
        finally:
            sa.event.remove(db.engine, "before_cursor_execute", count)
