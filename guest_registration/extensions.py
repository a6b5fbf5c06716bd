"""Extension objects, created unbound and ``init_app``'d by the app factory.

Flask-Security's ``Security`` is built per app in the factory instead: it keeps
per-app state (context processors, datastore) on the object itself, so one shared
instance would leak one test app's admin into another's login page.

``csrf`` is made on first use (the web app's factory, a view module's import):
Flask-WTF, and the Babel it imports, is for pages, and commands run without it.
"""

from __future__ import annotations

import threading
from typing import Any

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import MetaData

#: constraint names the migrations rely on (renaming or dropping one needs its name);
#: CHECK constraints are named by hand (``ck_trip_max_guests``)
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

db = SQLAlchemy(metadata=MetaData(naming_convention=NAMING_CONVENTION))
_making = threading.Lock()


def __getattr__(name: str) -> Any:
    """``extensions.csrf``: the one ``CSRFProtect``, made on first use."""
    if name != "csrf":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _making:
        if "csrf" not in globals():
            from flask_wtf import CSRFProtect

            globals()["csrf"] = CSRFProtect()
    return globals()["csrf"]
