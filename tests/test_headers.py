"""Security headers: a Content-Security-Policy with a per-request script nonce on
every page, HSTS and ``Secure`` cookies over HTTPS only, and proxy headers that
count only when ``TRUSTED_PROXIES`` says a proxy is in front."""

from __future__ import annotations

import re

import pytest

from guest_registration import create_app
from tests.helpers import ADMIN, csrf_token_from

NONCE_RE = re.compile(r"script-src 'self' 'nonce-([A-Za-z0-9_-]+)'")


def _nonce(response) -> str:
    match = NONCE_RE.search(response.headers.get("Content-Security-Policy", ""))
    assert match, response.headers.get("Content-Security-Policy")
    return match.group(1)


def test_every_page_has_a_csp_and_every_script_its_nonce(client, auth, trip_id):
    pages = ["/", f"/trips/{trip_id}/register", "/login", "/nowhere"]
    for url in pages:
        response = client.get(url)
        nonce = _nonce(response)
        csp = response.headers["Content-Security-Policy"]
        assert "object-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
        for tag in re.findall(r"<script\b[^>]*>", response.get_data(as_text=True)):
            assert f'nonce="{nonce}"' in tag, (url, tag)
    auth.login()
    for url in ["/admin/", "/admin/guest/", "/admin/trip/", "/admin/audit/", "/admin/backup/"]:
        response = client.get(url)
        assert response.status_code == 200, url
        nonce = _nonce(response)
        html = response.get_data(as_text=True)
        scripts = re.findall(r"<script\b[^>]*>", html)
        assert scripts, url
        for tag in scripts:
            assert f'nonce="{nonce}"' in tag or 'type="application/json"' in tag, (url, tag)
        # inline handlers would be refused by the policy (the "With selected" menu had one)
        assert not re.search(r"\son[a-z]+=", html), url
    api = client.get("/api/backup/guests?year=2026&month=1")
    api.close()
    assert "Content-Security-Policy" in api.headers


def test_the_nonce_is_new_for_each_request(client):
    assert _nonce(client.get("/")) != _nonce(client.get("/"))


def _login(client, base_url: str, headers=None):
    headers = dict(headers or {})
    page = client.get("/login", base_url=base_url, headers=headers)
    token = csrf_token_from(page.get_data(as_text=True))
    # over HTTPS Flask-WTF wants the same-origin Referer browsers send
    headers["Referer"] = "https://localhost/login"
    response = client.post("/login", base_url=base_url, headers=headers, data={
        "email": ADMIN[0], "password": ADMIN[1], "remember": "y", "csrf_token": token})
    assert response.status_code == 302, response.get_data(as_text=True)[:300]
    return response


def _cookies(response) -> dict[str, str]:
    return {c.split("=", 1)[0]: c for c in response.headers.getlist("Set-Cookie")}


def test_plain_http_has_no_hsts_and_no_secure_cookies(client):
    response = _login(client, "http://localhost")
    cookies = _cookies(response)
    assert {"session", "remember_token"} <= set(cookies)
    assert not any("secure" in c.lower() for c in cookies.values())
    assert "Strict-Transport-Security" not in response.headers


def test_https_sets_hsts_and_secure_cookies(client):
    response = _login(client, "https://localhost")
    assert response.status_code == 302
    cookies = _cookies(response)
    assert {"session", "remember_token"} <= set(cookies)
    for name, cookie in cookies.items():
        assert "; Secure" in cookie, cookie
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000"
    # and the secure session works over HTTPS
    assert client.get("/admin/", base_url="https://localhost").status_code == 200


def test_forwarded_proto_is_ignored_without_a_trusted_proxy(client):
    response = _login(client, "http://localhost",
                      headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"})
    assert "Strict-Transport-Security" not in response.headers
    assert not any("secure" in c.lower() for c in _cookies(response).values())


@pytest.fixture
def proxied_app(app_config, tmp_path):
    app = create_app(dict(app_config, TRUSTED_PROXIES=1, LOGIN_LIMIT_PER_ADDRESS="3 per minute"),
                     instance_path=str(tmp_path / "instance"))
    yield app
    from guest_registration.extensions import db

    with app.app_context():
        db.engine.dispose()


def test_a_trusted_proxy_gives_https_and_the_client_address(app, proxied_app):
    client = proxied_app.test_client()
    response = _login(client, "http://localhost", headers={"X-Forwarded-Proto": "https"})
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000"
    assert all("; Secure" in c for c in _cookies(response).values())

    # rate limits see the forwarded client address, so one client is limited
    # without locking out everyone behind the same proxy
    def wrong(address: str) -> int:
        c = proxied_app.test_client()
        page = c.get("/login", headers={"X-Forwarded-For": address})
        return c.post("/login", headers={"X-Forwarded-For": address}, data={
            "email": "nobody@example.com", "password": "wrong",
            "csrf_token": csrf_token_from(page.get_data(as_text=True))}).status_code

    assert [wrong("203.0.113.7") for _ in range(4)][-1] == 429
    assert wrong("198.51.100.2") == 200
