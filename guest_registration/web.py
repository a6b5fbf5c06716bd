"""Cross-cutting web glue: security headers (:mod:`.headers`), login pages inside the admin layout,
error pages that never show a stack trace, and the site's icon."""

from __future__ import annotations

import re

from flask import Flask, abort, current_app, jsonify, render_template, request, url_for
from flask_admin import helpers as admin_helpers
from flask_babel import gettext as _
from flask_wtf.csrf import CSRFError
from sqlalchemy.exc import DataError
from werkzeug.exceptions import ClientDisconnected

from . import headers
from .availability import UNAVAILABLE, unavailable_response
from .headers import nonce_attribute
from .i18n import N_

API_PREFIX = "/api/"
MAX_LIST_PAGE = 1_000_000
#: a list page number: ASCII digits only (``str.isdigit`` also takes "²", "①", "٣")
LIST_PAGE = re.compile(r"[0-9]{1,9}")
#: Flask-Security's query-string name for tokens, refused here
TOKEN_QUERY_KEY = "auth_token"
#: WSGI environ key: the client stalled mid-body; its connection is not kept alive
CLIENT_STALLED = "guest_registration.client_stalled"
#: the bound of a body that is not multipart when MAX_FORM_MEMORY_SIZE is unset
PLAIN_BODY_LIMIT = 500_000
#: the site's icon, in the package's ``static/`` (the pages link it)
FAVICON = "favicon.svg"


def favicon():
    """``/favicon.ico``, which browsers ask for on their own: the site's SVG icon."""
    return current_app.send_static_file(FAVICON)


def _admin_template_context() -> dict:
    admin = current_app.extensions["guest_admin"]
    return {
        "admin_base_template": admin.theme.base_template,
        "admin_view": admin.index_view,
        "theme": admin.theme,
        "h": admin_helpers,
        "get_url": url_for,
        "admin_csp_nonce_attribute": nonce_attribute(),
    }


def _bound_unparsed_body() -> None:
    """413 for a body that is not multipart and larger than any form of ours sends
    (``MAX_FORM_MEMORY_SIZE``): Werkzeug bounds only multipart by that setting and
    parsed an urlencoded or JSON body of up to ``MAX_CONTENT_LENGTH`` (photos
    included) whole, anonymously (100 MiB: 30 s and 3.8 GiB). A body without a
    length (chunked) is read no further than the bound."""
    if request.mimetype == "multipart/form-data":
        return  # photos: Werkzeug bounds each non-file field by MAX_FORM_MEMORY_SIZE
    limit = current_app.config.get("MAX_FORM_MEMORY_SIZE") or PLAIN_BODY_LIMIT
    if request.content_length is not None and request.content_length > limit:
        abort(413)
    request.max_content_length = limit  # before the stream is made: it stops there


def _refuse_odd_input():
    """Read the form body first (bounded: :func:`_bound_unparsed_body`), then 400 before any database work for what no form
    or link of ours sends: a NUL
    byte in any parameter or form field (PostgreSQL cannot store one), a JSON body
    that is not an object, a list page number that is not a small whole number,
    and a token in the query string (tokens go in the Authentication-Token header
    only: URLs end up in logs)."""
    if TOKEN_QUERY_KEY in request.args:
        abort(400)
    fields = [request.args]
    if request.method in ("POST", "PUT", "PATCH"):
        _bound_unparsed_body()
        try:
            fields.append(request.form)
        except (OSError, ClientDisconnected):  # the client stopped sending (a timeout)
            request.environ[CLIENT_STALLED] = True  # the server drops the connection
            abort(408)
    for multi in fields:
        for key, value in multi.items(multi=True):
            if "\x00" in key or "\x00" in value:
                abort(400)
    if request.method in ("POST", "PUT", "PATCH") and request.is_json:
        body = request.get_json(silent=True)  # malformed: the view's own 400
        if body is not None and not isinstance(body, dict):
            abort(400)  # every JSON body taken here (Flask-Security's too) is an object
    if request.path.startswith("/admin/"):
        for key in ("page", "page_size"):
            value = request.args.get(key)
            if value is not None and not (LIST_PAGE.fullmatch(value)
                                          and int(value) <= MAX_LIST_PAGE):
                abort(400)


def _bearer_token():
    """``Authorization: Bearer TOKEN`` on an ``/api/`` request is the same token as
    the ``Authentication-Token`` header (which wins when both are sent): copied
    into that header before anything looks the user up. The one place for every API."""
    scheme, _sp, token = request.headers.get("Authorization", "").partition(" ")
    header = current_app.config["SECURITY_TOKEN_AUTHENTICATION_HEADER"]
    if (request.path.startswith(API_PREFIX) and scheme.lower() == "bearer" and token.strip()
            and header not in request.headers):
        request.environ["HTTP_" + header.upper().replace("-", "_")] = token.strip()


def init_app(app: Flask) -> None:
    # Flask-Security's pages (login, logout, ...) extend the admin master template.
    app.extensions["security"].context_processor(_admin_template_context)
    headers.init_app(app)
    # first of all before-request hooks (before Flask-Principal looks the user up): a
    # form body is read, and size-checked, before any database work, so a client that
    # stalls mid-upload holds a thread, never a pooled connection
    app.before_request_funcs.setdefault(None, []).insert(0, _refuse_odd_input)
    app.before_request_funcs[None].insert(0, _bearer_token)
    app.add_url_rule("/favicon.ico", "favicon", favicon)

    @app.errorhandler(UNAVAILABLE[0])
    @app.errorhandler(UNAVAILABLE[1])
    def database_unavailable(exc):
        app.logger.warning("database unavailable for %s: %s", request.path, type(exc).__name__)
        from .extensions import db

        db.session.rollback()
        return unavailable_response()

    @app.errorhandler(CSRFError)
    def csrf_error(exc: CSRFError):
        return render_template("error.html", code=400,
                               message=_("The form expired or was not sent from this site. "
                                         "Reload the page and try again.")), 400

    for code in MESSAGES:
        app.register_error_handler(code, lambda exc, code=code: error_page(code))
    app.register_error_handler(DataError, refused_value)
    app.register_error_handler(OverflowError, refused_value)


MESSAGES = {  # English in the API's JSON, translated on pages
    400: N_("The request was malformed."),
    403: N_("You do not have access to this page."),
    404: N_("Page not found."),
    405: N_("Method not allowed."),
    408: N_("The request took too long to arrive. Try again."),
    413: N_("The upload is too large."),
    429: N_("Too many attempts. Wait a little and try again."),
    500: N_("Something went wrong on our side. The error was logged."),
}


def error_page(code: int):
    if request.path.startswith(API_PREFIX):  # an API answers JSON, never HTML
        response = jsonify(error=MESSAGES[code].rstrip(".").lower())
        response.status_code = code
        return response
    return render_template("error.html", code=code, message=_(MESSAGES[code])), code


def refused_value(exc: DataError | OverflowError):
    """The database refused a value from the request (a record id PostgreSQL's
    integer cannot hold, text where a number goes; a list filter's number SQLite's
    64 bits cannot hold, which its driver raises as OverflowError): 400, not 500."""
    if isinstance(exc, OverflowError) and "SQLite" not in str(exc):
        current_app.logger.error("error on %s", request.path, exc_info=exc)  # ours: a bug
        return error_page(500)
    current_app.logger.warning("the database refused a value for %s: %s", request.path,
                               type(getattr(exc, "orig", None) or exc).__name__)
    from .extensions import db

    db.session.rollback()
    return error_page(400)
