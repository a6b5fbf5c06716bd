"""The pages in their users' languages (Flask-Babel): English, Czech, Slovak, German.

The page's language is the one asked for with ``?lang=xx`` on any page, else the
one picked before (with the language picker or ``?lang``, kept in the session),
else the best match of the browser's ``Accept-Language``, else English. A
``?lang`` that is not one of ours is ignored. The API (``/api/...``) is always
English: it is an interface, not a page.

Catalogues, merged into one lookup (on a message two of them translate, the
later one wins, so the host's, merged last, win):

* every plugin's own, from its ``register_translations`` hook (a directory laid
  out ``<language>/LC_MESSAGES/<domain>.mo`` and its gettext domain);
* the host's, ``guest_registration/translations/*/LC_MESSAGES/messages.mo``.

Flask-Admin (domain ``admin``) and WTForms (through Flask-WTF, domain
``wtforms``) use the catalogues they ship; Flask-Security-Too ships German but
no Czech or Slovak, so the host's translation folder also holds a
``flask_security`` catalogue for those two (``SECURITY_I18N_DIRNAME``).

Each language maps to a locale with a territory (``cs`` → ``cs_CZ``): gettext
then finds both ``cs_CZ`` and ``cs`` folders, which is how the libraries name
theirs (WTForms ``cs_CZ``, Flask-Security ``de_DE``, Flask-Admin ``cs``).

Page formatting (:func:`page_timestamp`, :func:`page_size`, :func:`page_decimal`,
:func:`page_yes_no`)
follows the page's locale; in English it is exactly
:mod:`guest_registration.formatting`, which the CLI keeps using.

Flask-Babel and Babel are imported where they are used: the command-line app
(which has no Babel) imports this module for :class:`Catalog` and :func:`N_` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from flask import (Blueprint, Flask, abort, current_app, g, has_request_context, redirect,
                   request, session, url_for)
from werkzeug.routing import BuildError

from .formatting import human_size, timestamp, yes_no
from .registry import unique_items

#: The page languages, in the picker's order: code → its own name (also the
#: choices of a registration's language, stored as the code).
LANGUAGES = {"en": "English", "cs": "Čeština", "sk": "Slovenčina", "de": "Deutsch"}
#: code → Babel locale
LOCALES = {"en": "en", "cs": "cs_CZ", "sk": "sk_SK", "de": "de_DE"}
DEFAULT_LANGUAGE = "en"
SESSION_KEY = "language"
#: the query parameter that picks a page's language, like the picker (``?lang=cs``)
QUERY_KEY = "lang"
TRANSLATIONS = Path(__file__).resolve().parent / "translations"
HOST_DOMAIN = "messages"
#: gettext domains that belong to someone else: a plugin may not claim them
RESERVED_DOMAINS = {HOST_DOMAIN: "the host", "admin": "Flask-Admin", "wtforms": "WTForms",
                    "flask_security": "Flask-Security-Too"}
API_PREFIX = "/api/"


def N_(message: str) -> str:
    """Mark ``message`` for extraction only; translate it where it is shown."""
    return message


@dataclass(frozen=True)
class Catalog:
    """A plugin's message catalogue: ``directory/<language>/LC_MESSAGES/<domain>.mo``."""

    directory: str | Path
    domain: str


def page_language() -> str:
    """The code (``en``, ``cs``, ``sk``, ``de``) of this request's page language."""
    if not has_request_context() or request.path.startswith(API_PREFIX):
        return DEFAULT_LANGUAGE
    if "page_language" not in g:
        chosen = _asked_language() or session.get(SESSION_KEY)
        g.page_language = chosen if chosen in LOCALES else _browser_language()
    return g.page_language


def _asked_language() -> str | None:
    """The language of ``?lang=xx`` when it is one of ours, else ``None``."""
    code = request.args.get(QUERY_KEY)
    return code if code in LOCALES else None


def _keep_asked_language() -> None:
    """``?lang=xx`` on a page is kept in the session, exactly as the picker's choice."""
    code = _asked_language()
    if code and not request.path.startswith(API_PREFIX) and session.get(SESSION_KEY) != code:
        session[SESSION_KEY] = code


def _browser_language() -> str:
    """The first of ours in ``Accept-Language`` by quality, by primary subtag
    (``sk-SK`` is ``sk``: ``sk-SK, en;q=0.5`` means Slovak, not English)."""
    for value, quality in request.accept_languages:  # highest quality first
        code = value.replace("_", "-").split("-")[0].lower()
        if code in LOCALES and quality > 0:
            return code
    return DEFAULT_LANGUAGE


def _select_locale() -> str:
    return LOCALES[page_language()]


# --- page formatting -----------------------------------------------------------------

def _english() -> bool:
    return page_language() == DEFAULT_LANGUAGE


def page_timestamp(value: Any) -> str:
    """A date or a UTC timestamp to the second, in the page's locale."""
    if value is None or _english():
        return timestamp(value)
    from flask_babel import format_date, format_datetime

    if isinstance(value, datetime):
        return format_datetime(value, "medium")
    return format_date(value, "medium")


def page_size(n: int | float | None) -> str:
    """``7.2 KiB`` with the page locale's decimal separator (``7,2 KiB``)."""
    from babel.numbers import get_decimal_symbol
    from flask_babel import get_locale

    text = human_size(n)
    return text if _english() else text.replace(".", get_decimal_symbol(get_locale()))


def page_decimal(value: float | None, places: int = 1) -> str:
    """A number with ``places`` decimals (a duration in seconds, say) in the page's
    locale: ``1.5`` in English, ``1,5`` in Czech, Slovak and German."""
    if value is None:
        return ""
    if _english():
        return f"{value:.{places}f}"
    from flask_babel import format_decimal

    return format_decimal(round(value, places), "#,##0." + "0" * places if places else "#,##0")


def choices(labels: dict[str, str]) -> list[tuple[str, Any]]:
    """``(stored value, label)`` pairs whose labels translate when shown."""
    from flask_babel import lazy_gettext

    return [(value, lazy_gettext(label)) for value, label in labels.items()]


#: ``app.extensions[AUDIT_LABELS]``: an audit log column (``action``, ``outcome``) →
#: stored code → its label (an English message id, translated when shown). The
#: plugins fill it: the host names none of their actions. A code without a label is
#: shown as it is.
AUDIT_LABELS = "audit_labels"


def audit_label(view: Any, context: Any, model: Any, name: str) -> str:
    """An audit log column's code as its label in the page's language (a list formatter)."""
    code = getattr(model, name) or ""
    label = current_app.extensions.get(AUDIT_LABELS, {}).get(name, {}).get(code)
    if label is None:
        return code
    from flask_babel import gettext

    return gettext(str(label))


def page_yes_no(value: Any) -> str:
    if _english():
        return yes_no(value)
    from flask_babel import gettext

    return "" if value is None else (gettext("Yes") if value else gettext("No"))


# --- the language picker ---------------------------------------------------------------

bp = Blueprint("i18n", __name__)


def local_path(target: str | None) -> str:
    """``target`` when it is a path on this site, else ``/`` (no open redirect)."""
    if (not target or not target.startswith("/") or target.startswith("//")
            or "\\" in target or any(ord(c) < 32 for c in target)):
        return "/"
    parts = urlsplit(target)
    return target if not (parts.scheme or parts.netloc) else "/"


@bp.post("/language")
def set_language():
    """The picker's form: keep the language in the session, go back to the page."""
    from .extensions import csrf

    csrf.protect()
    code = request.form.get("language", "")
    if code not in LOCALES:
        abort(400)
    session[SESSION_KEY] = code
    return redirect(local_path(request.form.get("next")))


def same_site_path(url: str | None) -> str | None:
    """The path and query of ``url`` (a referrer) when it is a page of this site, else
    ``None``: where to send someone back after a POST, never elsewhere."""
    parts = urlsplit(url or "")
    if not parts.path or parts.scheme not in ("", "http", "https") or (
            parts.netloc and parts.netloc != request.host):
        return None
    path = parts.path + ("?" + parts.query if parts.query else "")
    return path if local_path(path) == path else None


def _without_lang(path: str, query: list) -> str:
    kept = [(k, v) for k, v in query if k != QUERY_KEY]
    return path + ("?" + urlencode(kept) if kept else "")


def _this_page() -> str:
    """This page's path and query, without ``lang``: where the picker comes back to
    (a ``?lang`` kept there would undo the choice). A page that answers a POST has
    no address to come back to (a GET there is a 405): the page the form was on,
    else the view's first page."""
    if request.method in ("GET", "HEAD"):
        return _without_lang(request.path, list(request.args.items(multi=True)))
    back = same_site_path(request.referrer)
    if back:
        parts = urlsplit(back)
        return _without_lang(parts.path, parse_qsl(parts.query, keep_blank_values=True))
    for endpoint in ("index", "index_view"):  # a page's, an admin list's first page
        try:
            return url_for(f"{request.blueprint}.{endpoint}") if request.blueprint else "/"
        except BuildError:
            continue
    return "/"


def _template_context() -> dict:
    return {"page_language": page_language(), "page_languages": LANGUAGES,
            "language_next": _this_page(), "language_url": url_for("i18n.set_language")}


def _vary(response):
    if not request.path.startswith(API_PREFIX) and SESSION_KEY not in session:
        response.vary.add("Accept-Language")
    return response


def plugin_catalogs(app: Flask) -> list[Catalog]:
    """Every plugin's catalogue (``register_translations``), in call order; a domain
    two plugins (or a plugin and the host or a library) claim stops start-up."""
    return list(unique_items(app.extensions["plugin_manager"], "register_translations",
                             kind="translation domain", key=lambda c: c.domain,
                             expect=Catalog, reserved=RESERVED_DOMAINS).values())


def init_app(app: Flask):
    """Flask-Babel with the plugins' catalogues and the host's, the picker, page
    formatters (returns the ``Babel``). Called before Flask-Security is set up (it
    reads its folders)."""
    from flask_babel import Babel

    catalogs = plugin_catalogs(app) + [Catalog(TRANSLATIONS, HOST_DOMAIN)]
    app.config.setdefault("SECURITY_I18N_DIRNAME", ["builtin", str(TRANSLATIONS)])
    babel = Babel(app, locale_selector=_select_locale, default_locale=DEFAULT_LANGUAGE,
                  default_timezone="UTC")
    config = app.extensions["babel"]
    config.translation_directories = [str(Path(c.directory).resolve()) for c in catalogs]
    config.default_domain = ";".join(c.domain for c in catalogs)
    app.register_blueprint(bp)
    app.before_request(_keep_asked_language)
    app.context_processor(_template_context)
    app.jinja_env.filters.update(page_timestamp=page_timestamp, page_size=page_size,
                                 page_decimal=page_decimal, page_yes_no=page_yes_no)
    app.after_request(_vary)
    return babel
