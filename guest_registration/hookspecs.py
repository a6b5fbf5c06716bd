"""The plugin contract: every hook the host calls, in one place.

A plugin is any module (or object) with functions decorated by
``guest_registration.hookimpl`` and named like the specs below. Plugins are found
through the entry-point group ``guest_registration``; the built-in ones are
declared there exactly as a third-party distribution would declare its own::

    [options.entry_points]
    guest_registration =
        xlsx = my_package.xlsx_plugin

Registration hooks *return* what they contribute; the host does the side effects
(adding views, commands and formats, rejecting a name two plugins claim). Hooks
are always called through ``pm.hook`` with keyword arguments, so a hookimpl may
accept only the arguments it needs, and pluggy's wrappers, ``tryfirst``/
``trylast`` and tracing all apply.

Call order (see :mod:`guest_registration.plugins`): the built-in plugins by
entry-point name, then installed distributions by distribution and entry-point
name, then plugins passed to ``create_app(extra_plugins=...)``.

Order of the calls while an app is built:

1. ``add_hookspecs`` (plugins publish their own hooks; ``check_pending`` follows)
2. ``register_settings`` (defaults, then the environment, then the app's config)
   and ``register_translations`` (the plugin's message catalogue)
3. ``init_app`` (per-app state, start-up checks)
4. ``register_export_formats``, ``register_blueprints``, ``register_admin_views``,
   ``register_commands``

``setup_app`` and ``report_status`` run later, inside ``manage.py setup`` and
``manage.py status``.

Most commands run on the *command-line app* (``create_app(web=False)``, see
:mod:`guest_registration.cli`): there ``register_translations``,
``register_blueprints`` and ``register_admin_views`` are not called, and
Flask-Security, Flask-Babel and Flask-Admin are not set up. Keep the imports of a
hook's module light (import views, forms and heavy libraries inside the hooks and
commands that use them): every command's start-up pays for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Any, Iterable, Mapping

import pluggy

# the markers live in .registry (which imports nothing of the host): the modules
# whose types the specs name below build on it, never on this module
from .registry import PROJECT_NAME, hookimpl, hookspec  # noqa: F401  (re-exported)

if TYPE_CHECKING:  # pragma: no cover
    import click
    from flask import Blueprint, Flask
    from flask_admin import BaseView

    from .exports import ExportFormat
    from .i18n import Catalog
    from .maintenance import StatusCheck


@hookspec(historic=True)
def add_hookspecs(pluginmanager: pluggy.PluginManager) -> None:
    """Publish this plugin's own hook specifications (pytest's ``pytest_addhooks``).

    Call ``pluginmanager.add_hookspecs(my_package.hookspecs)``. Called once all
    plugins are registered and before ``check_pending()``, so implementations of
    the new hooks are validated at start-up like the host's. Use the markers
    ``guest_registration.hookspec`` / ``hookimpl`` (project name
    ``guest_registration``) in the published module.

    :param pluginmanager: the app's plugin manager.
    """


@hookspec
def register_settings(instance_path: str) -> "Mapping[str, Any] | None":
    """Return this plugin's settings as ``{NAME: default}``.

    The host fills ``app.config`` for each name: the value given to
    ``create_app(config)`` wins, else the environment variable of that name
    (converted to the type of the default: ``int``, ``bool``, ``list`` from a
    comma-separated string, else ``str``), else the default. A name already used
    by the host or by another plugin is a start-up error naming both.

    :param instance_path: the app's instance folder, for defaults under it.
    """


@hookspec
def register_translations() -> "Iterable[Catalog] | None":
    """Return this plugin's message catalogues as :class:`guest_registration.i18n.Catalog`.

    ``Catalog(directory, domain)``: ``directory`` holds compiled catalogues laid
    out ``<language>/LC_MESSAGES/<domain>.mo`` (``cs``, ``sk``, ``de``; English is
    the source language). The host merges them into the pages' one lookup, so
    ``flask_babel.gettext`` / ``lazy_gettext`` in the plugin's code and ``_()`` in
    its templates find the plugin's words with nothing else to do. Use a domain
    of your own (your plugin's name): one the host (``messages``), a library
    (``admin``, ``wtforms``, ``flask_security``) or another plugin uses is a
    start-up error naming both.
    """


@hookspec
def init_app(app: "Flask") -> None:
    """Set up per-app state once the configuration is complete.

    Keep what you build in ``app.extensions`` (never in module globals), and
    raise an exception to refuse start-up (e.g. two plugins claiming one name of
    your own registry), with a message that names the plugins. Also called for
    the command-line app (``app.extensions["guest_web"]`` is then ``False``).

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
def register_admin_views(app: "Flask") -> "Iterable[BaseView] | None":
    """Return Flask-Admin views to add to the panel.

    The host adds them in call order and protects nothing for you: derive from
    :class:`guest_registration.admin.SecureBaseView` (or ``SecureModelView``) so
    only admins reach them.

    :param app: the application being built.
    """


@hookspec
def register_commands() -> "Iterable[click.Command] | None":
    """Return click commands for the app's CLI (``python manage.py NAME``).

    The host adds them. A name the host (or Flask, or Flask-Security) already
    uses, or that another plugin returned, is a start-up error naming both.
    They run on the command-line app; a command that needs the web app's parts
    (Flask-Security's datastore, translations, the pages' URLs) sets the
    attribute ``web_app = True`` on its ``click.Command``.
    """


@hookspec
def register_migrations() -> "Iterable[str] | None":
    """Return the folders of this plugin's Alembic revisions (its own branch).

    Each plugin ships its migrations inside its package: a first revision with
    ``down_revision = None`` and ``branch_labels = ("<plugin>",)`` (add
    ``depends_on`` a host revision when its tables refer to the host's), then one
    revision per change. ``setup`` runs ``upgrade heads``, so a plugin installed
    later gets its tables, and a disabled plugin keeps them. Write them for SQLite
    and PostgreSQL alike (batch mode, named constraints).
    """


@hookspec
def register_job_functions() -> "Iterable[Callable] | None":
    """Return the functions this plugin queues as background jobs (RQ).

    ``manage.py worker`` runs only these (an allow-list by dotted name): a job
    that anyone with write access to Redis planted naming any other function is
    refused without being run. Their arguments and results must be JSON (jobs are
    stored with RQ's JSON serializer, never pickle).
    """


@hookspec
def setup_app(app: "Flask") -> "Iterable[str] | None":
    """Prepare what this plugin needs during ``manage.py setup`` (folders, files).

    Called inside an app context after the host created the tables (every model
    imported by a loaded plugin included). Must be idempotent. Return (or yield)
    one line per thing done, for the command to print. Raise ``ValueError`` to
    stop ``setup`` with its message, in one line (a setting it cannot work with).

    :param app: the running application.
    """


@hookspec
def report_status(app: "Flask") -> "Iterable[StatusCheck] | None":
    """Return :class:`guest_registration.maintenance.StatusCheck` lines for ``manage.py status``.

    Called inside an app context. A check with ``ok=False`` makes ``status``
    exit non-zero; say in ``detail`` what is wrong and how to fix it.

    :param app: the running application.
    """
