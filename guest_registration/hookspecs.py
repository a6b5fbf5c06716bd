"""The plugin contract: every hook the host calls, in one place.

A plugin is any module (or object) with functions decorated by
``guest_registration.hookimpl`` and named like the specs below. Plugins are found
through the entry-point group ``guest_registration``; the built-in ones are
declared there exactly as a third-party distribution would declare its own::

    [options.entry_points]
    guest_registration =
        xlsx = my_package.xlsx_plugin

Registration hooks *return* what they contribute; the host does the side effects
(adding views, building the format registry, rejecting duplicates). Hooks are
always called with keyword arguments, so a hookimpl may accept only the
arguments it needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import pluggy

PROJECT_NAME = "guest_registration"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

if TYPE_CHECKING:  # pragma: no cover
    import click
    from flask import Blueprint, Flask
    from flask_admin import BaseView

    from .exports import ExportFormat
    from .maintenance import StatusCheck
    from plugins.backup.dumpers import DatabaseDumper


@hookspec
def register_admin_views(app: "Flask") -> "Iterable[BaseView] | None":
    """Return Flask-Admin views to add to the panel.

    The host adds them in plugin order and protects nothing for you: derive from
    :class:`guest_registration.admin.SecureBaseView` (or ``SecureModelView``) so
    only admins reach them.

    :param app: the application being built.
    """


@hookspec
def register_export_formats() -> "Iterable[ExportFormat] | None":
    """Return :class:`guest_registration.exports.ExportFormat` objects.

    Each format's ``name`` is what users pass as ``format=``; two plugins
    returning the same name is a start-up error that names both plugins.
    """


@hookspec
def register_blueprints(app: "Flask") -> "Iterable[Blueprint] | None":
    """Return Flask blueprints to register on the app (e.g. an API).

    :param app: the application being built.
    """


@hookspec
def register_commands(cli: "click.Group") -> None:
    """Add click commands to the app's CLI (``python manage.py ...``).

    :param cli: the app's command group; call ``cli.add_command(...)``.
    """


@hookspec
def report_status(app: "Flask") -> "Iterable[StatusCheck] | None":
    """Return :class:`guest_registration.maintenance.StatusCheck` lines for ``manage.py status``.

    Called inside an app context. A check with ``ok=False`` makes ``status``
    exit non-zero; say in ``detail`` what is wrong and how to fix it.

    :param app: the running application.
    """


@hookspec
def register_database_dumpers() -> "Iterable[DatabaseDumper] | None":
    """Return :class:`plugins.backup.dumpers.DatabaseDumper` objects, one per
    database engine (``dialect`` is the SQLAlchemy dialect name, e.g.
    ``"postgresql"``, ``"sqlite"``): how the system backup dumps, checks and
    restores that engine. Two dumpers for one dialect are a start-up error.
    """
