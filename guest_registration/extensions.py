"""Extension objects, created unbound and ``init_app``'d by the app factory.

Flask-Security's ``Security`` is built per app in the factory instead: it keeps
per-app state (context processors, datastore) on the object itself, so one shared
instance would leak one test app's admin into another's login page.
"""

from __future__ import annotations

from flask_sqlalchemy import SQLAlchemy
from flask_wtf import CSRFProtect
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
csrf = CSRFProtect()
