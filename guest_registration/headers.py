"""Security headers on every response: a Content-Security-Policy with a fresh
script nonce per request, HSTS and ``Secure`` cookies when the request came over
HTTPS, no caching of pages with personal data.

Behind a reverse proxy, ``TRUSTED_PROXIES`` (how many proxies stand in front)
lets the proxy's ``X-Forwarded-For/-Proto/-Host`` count, so HTTPS is recognised
and rate limits see the client's address; with 0 (the default) those headers
are ignored, since any client could send them.
"""

from __future__ import annotations

import secrets

from flask import Flask, current_app, g, request
from markupsafe import Markup
from flask.sessions import SecureCookieSessionInterface
from werkzeug.middleware.proxy_fix import ProxyFix

#: Responses under these prefixes carry personal data or secrets: never cache them.
NO_STORE_PREFIXES = ("/admin", "/api", "/login", "/logout", "/trips")

#: Scripts only from this site or inline with this request's nonce; styles may be
#: inline (Flask-Admin's and our templates use style attributes); nothing framed,
#: no plugins, forms post only here.
CSP_TEMPLATE = ("default-src 'self'; script-src 'self' 'nonce-{nonce}'; "
                "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; "
                "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; "
                "frame-ancestors 'none'")


def csp_nonce() -> str:
    """This request's script nonce (the same for every script of one page)."""
    nonce = g.get("csp_nonce")
    if nonce is None:
        nonce = g.csp_nonce = secrets.token_urlsafe(18)
    return nonce


def nonce_attribute() -> Markup:
    """``nonce="…"`` for a ``<script>`` tag (Flask-Admin's ``admin_csp_nonce_attribute``)."""
    return Markup(f'nonce="{csp_nonce()}"')


def _secure_cookies(response) -> None:
    cookies = response.headers.getlist("Set-Cookie")
    if not cookies:
        return
    response.headers.remove("Set-Cookie")
    for cookie in cookies:
        attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
        response.headers.add("Set-Cookie", cookie if "secure" in attributes else cookie + "; Secure")


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, the cookie ``Secure`` whenever the request
    came over HTTPS (Flask saves the session after every after-request function)."""

    def get_cookie_secure(self, app) -> bool:
        return bool(super().get_cookie_secure(app) or request.is_secure)


def _security_headers(response):
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "same-origin")
    headers.setdefault("Content-Security-Policy", CSP_TEMPLATE.format(nonce=csp_nonce()))
    if request.path.startswith(NO_STORE_PREFIXES):
        headers["Cache-Control"] = "no-store"
    if request.is_secure:
        _secure_cookies(response)
        max_age = int(current_app.config["HSTS_MAX_AGE"])
        if max_age > 0:
            headers.setdefault("Strict-Transport-Security", f"max-age={max_age}")
    return response


def init_app(app: Flask) -> None:
    proxies = int(app.config["TRUSTED_PROXIES"])
    if proxies > 0:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=proxies,
                                x_port=proxies, x_prefix=proxies)
    app.session_interface = SessionInterface()
    app.jinja_env.globals["csp_nonce"] = csp_nonce
    # Flask runs after-request functions last-registered-first: put ours first in
    # the list so it runs after all others (Flask-Login's remember cookie included)
    app.after_request_funcs.setdefault(None, []).insert(0, _security_headers)
