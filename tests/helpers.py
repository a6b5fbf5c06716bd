"""Helpers shared by the test modules (plain functions and constants; the
fixtures are in ``conftest.py``)."""

from __future__ import annotations

from flask import Flask

from guest_registration.extensions import db


def db_engine_of(app: Flask):
    """The backup plugin's database engine for the app's own database."""
    from plugins.backup.context import backup_context

    with app.app_context():
        return backup_context(app).engine_for(db.engine.dialect.name)
