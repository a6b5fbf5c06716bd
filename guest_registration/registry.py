"""The plugin markers and the helpers that read a plugin manager's hooks.

This module imports nothing of the host, so the hook contract
(:mod:`guest_registration.hookspecs`), the modules whose types it names
(``exports``, ``i18n``, ``maintenance``) and the manager's builder
(:mod:`guest_registration.plugins`) all build on it without importing one
another in a ring.

``hookimpl`` and ``hookspec`` are the markers plugins use (re-exported as
``guest_registration.hookimpl`` / ``hookspec``). A plugin manager is built per app
by :func:`guest_registration.plugins.build_plugin_manager` and kept in
``app.extensions["plugin_manager"]``; the helpers here call its hooks and turn
what the plugins return into name-checked registries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import pluggy

PROJECT_NAME = "guest_registration"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


class PluginLoadError(RuntimeError):
    """A plugin could not be loaded, or its contribution is refused at start-up."""


class DuplicateNameError(PluginLoadError):
    """Two plugins (or a plugin and the host) claim the same name."""


@dataclass
class PluginInfo:
    """What ``manage.py plugins`` and ``status`` show about one plugin."""

    name: str
    module: str
    distribution: str
    version: str
    hooks: list[str] = field(default_factory=list)
    disabled: bool = False


def plugin_infos(pm: pluggy.PluginManager) -> list[PluginInfo]:
    """Loaded and disabled plugins, in call order."""
    return list(getattr(pm, "plugin_infos", []))


def hook_items(pm: pluggy.PluginManager, hook_name: str, **kwargs: Any) -> list[Any]:
    """Call a registration hook through ``pm.hook`` and flatten the iterables
    its implementations return (``None`` contributes nothing), in call order."""
    items: list[Any] = []
    for result in getattr(pm.hook, hook_name)(**kwargs):
        items.extend(result)
    return items


def results_by_plugin(pm: pluggy.PluginManager, hook_name: str,
                      **kwargs: Any) -> dict[str, list[Any]]:
    """Each plugin's raw results for ``hook_name``, in call order.

    Each plugin's implementation is called through a pluggy subset caller that
    holds only that plugin: used to name plugins in errors, for settings and in
    ``manage.py plugins``, never on a request's path.
    """
    caller = getattr(pm.hook, hook_name)
    impls = [i for i in caller.get_hookimpls()
             if not (getattr(i, "hookwrapper", False) or getattr(i, "wrapper", False))]
    found: dict[str, list[Any]] = {}
    for impl in reversed(impls):  # pluggy's call order
        others = {i.plugin for i in impls if i.plugin is not impl.plugin}
        found[impl.plugin_name] = list(
            pm.subset_hook_caller(hook_name, remove_plugins=others)(**kwargs))
    return found


def items_by_plugin(pm: pluggy.PluginManager, hook_name: str,
                    **kwargs: Any) -> dict[str, list[Any]]:
    """What each plugin contributes to a registration hook (flattened), in call order."""
    return {plugin: [item for result in results for item in result]
            for plugin, results in results_by_plugin(pm, hook_name, **kwargs).items()}


def contributors(pm: pluggy.PluginManager, hook_name: str, match: Callable[[Any], bool],
                 **kwargs: Any) -> list[str]:
    """Names of the plugins whose contribution to ``hook_name`` has an item matching."""
    return [plugin for plugin, items in items_by_plugin(pm, hook_name, **kwargs).items()
            for item in items if match(item)]


def unique_items(pm: pluggy.PluginManager, hook_name: str, *, kind: str,
                 key: Callable[[Any], str], expect: type | tuple[type, ...] | None = None,
                 reserved: Mapping[str, str] | None = None,
                 error: type[DuplicateNameError] = DuplicateNameError,
                 **kwargs: Any) -> dict[str, Any]:
    """A registration hook's items keyed by name, in call order.

    An item of the wrong type, a name in ``reserved`` (name → who holds it, e.g.
    ``"the host"``) or a name two plugins return is a start-up error that names
    the plugins.
    """
    reserved = reserved or {}
    found: dict[str, Any] = {}
    for item in hook_items(pm, hook_name, **kwargs):
        if expect is not None and not isinstance(item, expect):
            who = contributors(pm, hook_name, lambda i: not isinstance(i, expect), **kwargs)
            raise PluginLoadError(f"plugin {', '.join(map(repr, who)) or '?'} returned {item!r} "
                                  f"from {hook_name}, not a {kind}")
        name = key(item)
        if name in reserved or name in found:
            who = [f"plugin {p!r}" for p in
                   contributors(pm, hook_name, lambda i: key(i) == name, **kwargs)]
            holders = ([reserved[name]] if name in reserved else []) + who
            if len(holders) < 2:
                holders.append("itself again")
            raise error(f"{kind} {name!r} is registered by both {holders[0]} and {holders[1]}; "
                        f"uninstall or disable (DISABLED_PLUGINS) one of them")
        found[name] = item
    return found
