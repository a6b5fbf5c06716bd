"""Plugin discovery and hook calls: the one place that talks to pluggy.

Plugins are found through the entry-point group :data:`ENTRY_POINT_GROUP`. The
built-in ones (``plugins.backup``, ``plugins.export_formats.*``) are declared in
this project's ``setup.cfg`` exactly the way a third-party distribution declares
its own, and are loaded by the same code. A plugin manager is built per app and
kept in ``app.extensions["plugin_manager"]``; nothing here is module-global.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from typing import Any, Iterable

import pluggy

from . import hookspecs
from .hookspecs import PROJECT_NAME

ENTRY_POINT_GROUP = "guest_registration"
#: The distribution that ships the built-in plugins; its plugins load first.
HOST_DISTRIBUTION = "guest-registration"


class PluginLoadError(RuntimeError):
    """A plugin could not be loaded or two plugins claim the same name."""


@dataclass
class PluginInfo:
    """What ``manage.py plugins`` and ``status`` show about one plugin."""

    name: str
    module: str
    distribution: str
    version: str
    hooks: list[str] = field(default_factory=list)
    disabled: bool = False


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-")


def _entry_points() -> list[tuple[importlib.metadata.EntryPoint, importlib.metadata.Distribution]]:
    """Every entry point of our group with its distribution, host distribution first."""
    found = []
    seen_dists: set[str] = set()
    for dist in importlib.metadata.distributions():
        dist_name = dist.metadata["Name"] or "?"
        key = _canonical(dist_name)
        if key in seen_dists:  # the same distribution visible twice on sys.path
            continue
        seen_dists.add(key)
        for ep in dist.entry_points:
            if ep.group == ENTRY_POINT_GROUP:
                found.append((ep, dist))
    found.sort(key=lambda pair: (
        _canonical(pair[1].metadata["Name"] or "") != HOST_DISTRIBUTION,
        _canonical(pair[1].metadata["Name"] or ""),
        pair[0].name,
    ))
    return found


def build_plugin_manager(disabled: Iterable[str] = (),
                         extra_plugins: Iterable[tuple[str, Any]] = ()) -> pluggy.PluginManager:
    """Create a plugin manager with every installed plugin not in ``disabled``.

    ``extra_plugins`` are ``(name, plugin)`` pairs registered after the entry
    points (used by tests and by apps embedding the host). Ends with
    ``check_pending()`` so a misspelled hook fails at start-up.
    """
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    disabled = set(disabled)
    infos: dict[str, PluginInfo] = {}
    for ep, dist in _entry_points():
        dist_name = dist.metadata["Name"] or "?"
        if ep.name in infos:
            raise PluginLoadError(
                f"plugin name {ep.name!r} is declared by both {infos[ep.name].distribution!r} "
                f"and {dist_name!r}; uninstall one of them"
            )
        info = PluginInfo(ep.name, ep.value, dist_name, dist.version or "?")
        infos[ep.name] = info
        if ep.name in disabled:
            info.disabled = True
            pm.set_blocked(ep.name)
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken plugin must say who it is
            raise PluginLoadError(
                f"plugin {ep.name!r} ({ep.value}) from {dist_name!r} failed to load: {exc}"
            ) from exc
        pm.register(plugin, name=ep.name)
    for name, plugin in extra_plugins:
        if name in disabled:
            infos[name] = PluginInfo(name, getattr(plugin, "__name__", repr(plugin)),
                                     "(registered in code)", "-", disabled=True)
            continue
        pm.register(plugin, name=name)
        infos[name] = PluginInfo(name, getattr(plugin, "__name__", repr(plugin)),
                                 "(registered in code)", "-")
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginLoadError(f"plugin {exc.plugin!r}: {exc}") from exc
    for name, info in infos.items():
        plugin = pm.get_plugin(name)
        if plugin is not None:
            info.hooks = sorted(
                caller.name for caller in pm.get_hookcallers(plugin) or []
            )
    pm.plugin_infos = list(infos.values())  # type: ignore[attr-defined]
    return pm


def plugin_infos(pm: pluggy.PluginManager) -> list[PluginInfo]:
    """Loaded and disabled plugins, in load order."""
    return list(getattr(pm, "plugin_infos", []))


def call_each(pm: pluggy.PluginManager, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
    """Call ``hook_name`` and return ``(plugin_name, result)`` in load order.

    Unlike a plain ``pm.hook.X()`` call this keeps track of which plugin
    returned what, so the host can name the plugins in error messages.
    """
    caller = getattr(pm.hook, hook_name)
    results = []
    for impl in caller.get_hookimpls():  # registration order
        args = {name: kwargs[name] for name in impl.argnames}
        results.append((impl.plugin_name, impl.function(**args)))
    return results


def collect(pm: pluggy.PluginManager, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
    """Like :func:`call_each` for hooks returning iterables: flatten to ``(plugin, item)``."""
    items = []
    for name, result in call_each(pm, hook_name, **kwargs):
        for item in result or ():
            items.append((name, item))
    return items
