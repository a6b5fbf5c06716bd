"""The Restore-a-selection page's requests as values (every field may be
hostile: a bad one is a clear message, never a 500) and its texts in the page's
language."""

from __future__ import annotations

from datetime import date, datetime

from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l

from guest_registration.admin import LABELS
from guest_registration.i18n import LANGUAGES, page_timestamp, page_yes_no
from guest_registration.models import AGE_CATEGORIES, DOCUMENT_TYPES, REGISTRATION_STATUSES

from guest_backup.ops.browse_search import MAX_PAGE, PAGE, Search
from guest_backup.ops.selection import Selection, SelectionError

#: ids one form may name (a whole trip is one id, however large)
MAX_IDS = 5000
#: the largest id (the tables' ids are 32-bit integers): a larger number is an error
MAX_ID = 2**31 - 1

KIND_TEXT = {"archive_only": _l("deleted since"), "live_only": _l("added since"),
             "changed": _l("changed since"), "same": _l("same today")}
REASON_TEXT = {
    "missing": _l("not in today's database: comes back with its id"),
    "id-taken": _l("its id holds another record today: comes back with a new id"),
    "id-ahead": _l("its id is beyond those this database has handed out: comes back with a "
                   "new id"),
    "unchanged": _l("exists today as in the archive"),
    "changed": _l("exists today, changed since the archive (overwrite not chosen)"),
    "overwrite": _l("exists today, changed since the archive: overwrite chosen"),
    "trip-exists": _l("the trip exists today (trips are never overwritten)"),
    "erased": _l("erased (the erasure ledger): never restored"),
    "registration-erased": _l("its registration was erased: never restored"),
    "all-guests-erased": _l("every guest of it was erased: never restored"),
}
PHOTO_TEXT = {
    "kept": _l("had a document photo; the file is still in the upload folder and is linked "
               "again"),
    "missing": _l("had a document photo; photos are not in system archives: restored "
                  "without it"),
}


def when(value) -> str:
    """A timestamp as the page shows them (SQLite hands text back as it is)."""
    if value is None or value == "":
        return ""
    if isinstance(value, (datetime, date)):
        return page_timestamp(value)
    return str(value)[:19]


#: stored value → label, for the columns that hold a code (as the host's pages show them)
CODES = {"document_type": DOCUMENT_TYPES, "age_category": AGE_CATEGORIES,
         "status": REGISTRATION_STATUSES}


def field_label(name: str) -> str:
    """A column's name as the rest of the app labels it (``first_name``: First name)."""
    label = LABELS.get(name)
    return str(label) if label is not None else name


def field_value(name: str, value) -> str:
    """A stored value as the host's pages show it: a code by its label, a flag as
    Yes/No, a time in the page's language."""
    if name in CODES and value in CODES[name]:
        return _(CODES[name][value])
    if name == "language" and value in LANGUAGES:
        return LANGUAGES[value]
    if name == "gdpr_consent":
        return page_yes_no(value)
    if isinstance(value, (datetime, date)) or name.endswith(("_at", "_date")):
        return when(value)
    return "" if value is None else str(value)


def chosen(selection: Selection) -> str:
    """What a selection brings back, in the page's language (``describe`` is the
    CLI's and the audit log's)."""
    return ", ".join([_("trip %(id)s", id=i) for i in selection.trip_ids]
                     + [_("registration %(id)s", id=i) for i in selection.registration_ids])


def _int(text: str | None) -> int | None:
    text = (text or "").strip()
    if not text:
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 10 or int(text) > MAX_ID:
        raise ValueError(text)
    return int(text)


def _day(text: str | None) -> date | None:
    text = (text or "").strip()
    return date.fromisoformat(text) if text else None


def parse_search(args) -> tuple[Search, str | None]:
    """The search of the query string, or the empty search and what was wrong."""
    try:
        limit = _int(args.get("n")) or PAGE
        search = Search(text=(args.get("q") or "").strip()[:200], trip_id=_int(args.get("trip")),
                        date_from=_day(args.get("from")), date_to=_day(args.get("to")),
                        after=_int(args.get("after")) or 0, limit=min(limit, MAX_PAGE))
    except ValueError:
        return Search(), _("Give numbers for the trip and the page, and dates as YYYY-MM-DD.")
    return search, None


def _ids(form, name: str) -> tuple[int, ...]:
    values = form.getlist(name)
    if len(values) > MAX_IDS:
        raise ValueError(name)
    found = [_int(v) for v in values]
    return tuple(i for i in found if i is not None)


def parse_selection(form) -> tuple[Selection | None, str | None]:
    """What the form chose to restore, or what was wrong."""
    try:
        selection = Selection(trip_ids=_ids(form, "trip"),
                              registration_ids=_ids(form, "registration"),
                              overwrite_guest_ids=_ids(form, "overwrite_guest"),
                              overwrite_registration_ids=_ids(form, "overwrite_registration"))
    except ValueError:
        return None, _("The selection names something that is not an id.")
    except SelectionError:
        return None, _("Choose a trip or at least one registration.")
    return selection, None
