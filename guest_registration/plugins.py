"""Plugin discovery, the plugin manager and plugin settings.

Plugins are found through the entry-point group :data:`ENTRY_POINT_GROUP`. The
built-in ones (declared in this project's ``setup.cfg``) are loaded by the same
code as a third-party distribution's. A plugin manager is built per app and kept
in ``app.extensions["plugin_manager"]``; nothing here is module-global. The
markers and the helpers that call hooks are in :mod:`guest_registration.registry`
(re-exported here).

**Call order.** Every hook is called through ``pm.hook.<name>(...)``. pluggy
calls the most recently registered plugin first, so plugins are registered in
the reverse of the order they should be called in (tox 4 does the same:
external plugins first, internal ones last). The resulting call order is:

1. the built-in plugins (distribution ``guest-registration``), by entry-point name;
2. other installed distributions, by distribution name, then entry-point name;
3. plugins passed in code (``create_app(extra_plugins=...)``), in the order given.

``tryfirst``/``trylast`` and hook wrappers work as pluggy documents them.
"""

from __future__ import annotations

import importlib.metadata
import os
from typing import Any, Iterable, Mapping

import pluggy

from . import hookspecs
from .config import HOST_SETTINGS, ConfigError, as_list, parse_bool
from .registry import (PROJECT_NAME, DuplicateNameError, PluginInfo, PluginLoadError,
                       contributors, hook_items, items_by_plugin, plugin_infos,
                       results_by_plugin, unique_items)

__all__ = ["ENTRY_POINT_GROUP", "HOST_DISTRIBUTION", "DuplicateNameError", "PluginInfo",
           "PluginLoadError", "apply_plugin_settings", "build_plugin_manager", "contributors",
           "hook_items", "items_by_plugin", "plugin_infos", "results_by_plugin", "unique_items"]

ENTRY_POINT_GROUP = "guest_registration"
#: The distribution that ships the built-in plugins; its plugins are called first.
HOST_DISTRIBUTION = "guest-registration"


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-")


def _entry_points() -> list[tuple[importlib.metadata.EntryPoint, str, str]]:
    """Every entry point of our group with its distribution's name and version, in
    call order.

    ``entry_points`` reads each distribution's ``entry_points.txt`` only (and sees
    a distribution found twice on ``sys.path`` once, the first); the metadata is
    read only for the few distributions that declare plugins, once each (every
    ``Distribution.metadata`` parses the file again): reading every installed
    distribution's was a tenth of a command's start-up.
    """
    found, known = [], {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if id(ep.dist) not in known:
            metadata = ep.dist.metadata
            known[id(ep.dist)] = (metadata["Name"] or "?", metadata["Version"] or "?")
        found.append((ep, *known[id(ep.dist)]))
    found.sort(key=lambda item: (_canonical(item[1]) != HOST_DISTRIBUTION,
                                 _canonical(item[1]), item[0].name))
    return found


def _installed_plugins(disabled: set[str], infos: dict[str, PluginInfo]) -> list[tuple[str, Any]]:
    """Load every installed plugin not in ``disabled``, recording each in ``infos``."""
    loaded: list[tuple[str, Any]] = []
    for ep, dist_name, version in _entry_points():
        if ep.name in infos:
            raise DuplicateNameError(
                f"plugin name {ep.name!r} is declared by both {infos[ep.name].distribution!r} "
                f"and {dist_name!r}; uninstall one of them"
            )
        info = infos[ep.name] = PluginInfo(ep.name, ep.value, dist_name, version)
        if ep.name in disabled:
            info.disabled = True
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken plugin must say who it is
            raise PluginLoadError(
                f"plugin {ep.name!r} ({ep.value}) from {dist_name!r} failed to load: {exc}"
            ) from exc
        loaded.append((ep.name, plugin))
    return loaded


def _code_plugins(extra_plugins: Iterable[tuple[str, Any]], disabled: set[str],
                  infos: dict[str, PluginInfo]) -> list[tuple[str, Any]]:
    """The plugins passed in code, recorded in ``infos``; the disabled ones left out."""
    loaded: list[tuple[str, Any]] = []
    for name, plugin in extra_plugins:
        if name in infos:
            raise DuplicateNameError(f"plugin name {name!r} is already taken by an installed plugin")
        infos[name] = PluginInfo(name, getattr(plugin, "__name__", type(plugin).__name__),
                                 "(registered in code)", "-", disabled=name in disabled)
        if name not in disabled:
            loaded.append((name, plugin))
    return loaded


def build_plugin_manager(disabled: Iterable[str] = (),
                         extra_plugins: Iterable[tuple[str, Any]] = ()) -> pluggy.PluginManager:
    """Create a plugin manager with every installed plugin not in ``disabled``.

    ``extra_plugins`` are ``(name, plugin)`` pairs called after the installed
    ones (used by tests and by apps embedding the host). Plugins publish their
    own hooks (``add_hookspecs``), then ``check_pending()`` makes a misspelled
    hook fail at start-up.
    """
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    disabled = set(disabled)
    infos: dict[str, PluginInfo] = {}
    to_register = _installed_plugins(disabled, infos) + _code_plugins(extra_plugins, disabled, infos)
    for name in disabled & set(infos):
        pm.set_blocked(name)
    for name, plugin in reversed(to_register):  # pluggy calls the last registered first
        pm.register(plugin, name=name)
    try:
        pm.hook.add_hookspecs.call_historic(kwargs={"pluginmanager": pm})
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginLoadError(f"plugin {pm.get_name(exc.plugin)!r}: {exc}") from exc
    for name, info in infos.items():
        plugin = pm.get_plugin(name)
        if plugin is not None:
            info.hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
    pm.plugin_infos = list(infos.values())  # type: ignore[attr-defined]
    return pm


# --- settings ------------------------------------------------------------------------

def _from_environment(name: str, raw: str, default: Any) -> Any:
    if isinstance(default, bool):
        return parse_bool(name, raw)
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if isinstance(default, (list, tuple)):
        return as_list(raw)
    return raw


def apply_plugin_settings(config: dict[str, Any], pm: pluggy.PluginManager, instance_path: str,
                          given: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> None:
    """Fill ``config`` with every plugin's settings (see ``register_settings``).

    ``given`` is what the app was created with: it wins over the environment,
    which wins over the plugin's default.
    """
    environ = os.environ if environ is None else environ
    host_names = {k for k in config if k not in given} | HOST_SETTINGS
    declared: dict[str, Any] = {}
    for mapping in pm.hook.register_settings(instance_path=instance_path):
        for name, default in mapping.items():
            if name in host_names or name in declared:
                owners = [plugin for plugin, results in results_by_plugin(
                    pm, "register_settings", instance_path=instance_path).items()
                    if any(name in m for m in results)]
                holders = (["the host"] if name in host_names else []) + [
                    f"plugin {p!r}" for p in owners] + ["itself again"]
                raise DuplicateNameError(f"setting {name!r} is declared by both {holders[0]} "
                                         f"and {holders[1]}")
            declared[name] = default
    for name, default in declared.items():
        if name in given:
            if isinstance(default, (list, tuple)):  # a list setting given as one string
                config[name] = as_list(config[name])
            continue
        if environ.get(name) not in (None, ""):
            config[name] = _from_environment(name, environ[name], default)
        else:
            config[name] = list(default) if isinstance(default, (list, tuple)) else default
