"""Extension objects, created unbound and ``init_app``'d by the app factory.

Flask-Security's ``Security`` is built per app in the factory instead: it keeps
per-app state (context processors, datastore) on the object itself, so one shared
instance would leak one test app's admin into another's login page.
"""

from __future__ import annotations

from flask_sqlalchemy import SQLAlchemy
from flask_wtf import CSRFProtect

db = SQLAlchemy()
csrf = CSRFProtect()
