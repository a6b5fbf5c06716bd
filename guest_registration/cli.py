"""The command line's entry point: ``manage.py`` (in a checkout), ``guest-registration``
and ``python -m guest_registration`` all run ``FlaskGroup(create_app=load_app)``.

The commands themselves are in :mod:`guest_registration.commands`.
"""

from __future__ import annotations

from flask import Flask
from flask.cli import NoAppException

from .app import create_app
from .registry import PluginLoadError


def load_app() -> Flask:
    """``create_app`` for ``manage.py``: a plugin that stops start-up is reported
    in one line naming it (and the command exits non-zero), not as a traceback."""
    try:
        return create_app()
    except PluginLoadError as exc:
        raise NoAppException(f"the app cannot start: {exc}") from None
