"""The host's modules import one another without a cycle (counted as import-linter
and grimp count: imports inside functions and under ``TYPE_CHECKING`` too, the
package itself a module of its own), and every name the plugins import from the
host is still where they import it from."""

from __future__ import annotations

import importlib

import grimp
import pytest

#: module → the names the plugins (backup, export formats) import from it
PLUGIN_IMPORTS = {
    "guest_registration": ("hookimpl", "hookspec", "__version__", "create_app"),
    "guest_registration.audit": ("start", "finish", "record", "recent", "cli_actor"),
    "guest_registration.models": ("Guest", "Registration", "Trip", "AuditEntry",
                                  "AUDIT_OUTCOMES", "User"),
    "guest_registration.extensions": ("db", "csrf"),
    "guest_registration.admin": ("is_admin", "SecureBaseView"),
    "guest_registration.availability": ("database_unavailable", "unavailable_response"),
    "guest_registration.exports": ("ExportFormat", "FormatRegistry", "UnknownFormatError",
                                   "Row", "pg_copy_chunks"),
    "guest_registration.i18n": ("Catalog", "N_", "page_size", "page_timestamp"),
    "guest_registration.redis_link": ("redis_client", "redis_key"),
    "guest_registration.tasks": ("task_queue",),
    "guest_registration.formatting": ("human_size",),
    "guest_registration.maintenance": ("StatusCheck", "folder_check", "safe_url"),
    "guest_registration.config": ("normalise_database_url",),
    "guest_registration.plugins": ("DuplicateNameError", "unique_items", "hook_items",
                                   "PluginLoadError", "build_plugin_manager", "plugin_infos"),
    "guest_registration.cli": ("load_app",),
}


def cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    modules = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m) & set(modules))
             for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in edges[module]:
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in modules:
        if module not in index:
            visit(module)
    return found


def test_the_host_has_no_import_cycle():
    graph = grimp.build_graph("guest_registration", cache_dir=None)
    assert "guest_registration.registry" in graph.modules
    assert cycles(graph) == []


def test_the_markers_module_imports_nothing_of_the_host():
    graph = grimp.build_graph("guest_registration", cache_dir=None)
    assert graph.find_modules_directly_imported_by("guest_registration.registry") == set()
    assert not graph.find_modules_that_directly_import("guest_registration")


def test_the_cycle_finder_finds_one():
    graph = grimp.ImportGraph()
    for module in ("a", "a.b", "a.c", "a.d"):
        graph.add_module(module)
    graph.add_import(importer="a.b", imported="a.c")
    graph.add_import(importer="a.c", imported="a.b")
    graph.add_import(importer="a.c", imported="a.d")
    assert cycles(graph) == [["a.b", "a.c"]]


@pytest.mark.parametrize("module", PLUGIN_IMPORTS)
def test_what_plugins_import_is_still_there(module):
    imported = importlib.import_module(module)
    missing = [name for name in PLUGIN_IMPORTS[module] if not hasattr(imported, name)]
    assert missing == []


def test_the_markers_are_one_pair_everywhere():
    import guest_registration
    from guest_registration import hookspecs, plugins, registry

    assert guest_registration.hookimpl is registry.hookimpl is hookspecs.hookimpl
    assert guest_registration.hookspec is registry.hookspec is hookspecs.hookspec
    assert plugins.DuplicateNameError is registry.DuplicateNameError
