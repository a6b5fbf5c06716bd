"""Extension objects, created unbound and ``init_app``'d by the app factory.

Flask-Security's ``Security`` is built per app in the factory instead: it keeps
per-app state (context processors, datastore) on the object itself, so one shared
instance would leak one test app's admin into another's login page.

``db`` (Flask-SQLAlchemy) and ``csrf`` (Flask-WTF) are made on first use.
SQLAlchemy is most of a command's start-up, so the command-line app binds the
database lazily (:func:`bind_database`): ``backup --help`` or ``backup-list``
never import it, and the first ``extensions.db`` (or :func:`database_engine`)
initialises every app that waits for it. The web app binds it at once.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask
    from sqlalchemy.engine import Engine

#: constraint names the migrations rely on (renaming or dropping one needs its name);
#: CHECK constraints are named by hand (``ck_trip_max_guests``)
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

_making = threading.RLock()
#: command-line apps bound to the database before ``db`` existed
_waiting: "weakref.WeakSet[Flask]" = weakref.WeakSet()


def _private(database: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        try:
            os.chmod(database + suffix, 0o600)
        except OSError:
            pass


def configure_engine(engine) -> None:
    """SQLite: WAL (readers such as a long export never block registrations),
    a busy timeout instead of instant "database is locked", foreign keys on, and
    ``secure_delete``: a value replaced or deleted (a guest's name, erased) is
    overwritten in the file, not left in its free space."""
    if engine.dialect.name != "sqlite":
        return
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection, record):
        cur = dbapi_connection.cursor()
        if engine.url.database not in (None, "", ":memory:"):
            cur.execute("PRAGMA journal_mode=WAL")
            _private(engine.url.database)  # guest data: this user only, whatever the umask
        cur.execute("PRAGMA busy_timeout=10000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA secure_delete=ON")
        cur.close()


def _init_database(db, app: "Flask") -> None:
    """Flask-SQLAlchemy on ``app``, its engine configured (no connection is made)."""
    db.init_app(app)
    with app.app_context():
        configure_engine(db.engine)


def _make_db():
    from flask_sqlalchemy import SQLAlchemy
    from sqlalchemy import MetaData

    db = SQLAlchemy(metadata=MetaData(naming_convention=NAMING_CONVENTION))
    for app in list(_waiting):  # bound before ``db`` existed: initialised before it is seen
        _init_database(db, app)
    _waiting.clear()
    return db


def bind_database(app: "Flask", *, now: bool = True) -> None:
    """The app's database: bound at once (``now``, or once ``db`` exists), else on
    the first use of ``db`` in this process."""
    with _making:
        if now or "db" in globals():
            _init_database(__getattr__("db"), app)
        else:
            _waiting.add(app)


def database_engine() -> "Engine":
    """The current app's SQLAlchemy engine (``db.engine``), binding it if need be."""
    return __getattr__("db").engine


def __getattr__(name: str) -> Any:
    """``extensions.db`` and ``extensions.csrf``: each made once, on first use."""
    if name not in ("db", "csrf"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _making:
        if name not in globals():
            if name == "db":
                globals()["db"] = _make_db()
            else:
                from flask_wtf import CSRFProtect

                globals()["csrf"] = CSRFProtect()
    return globals()[name]
