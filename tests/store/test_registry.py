"""Store backends by name (twin/store/registry.py): built-ins in code, plugins by entry point."""

from __future__ import annotations

import subprocess
import sys
import types
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from urbis.api.app import build_state, create_app
from urbis.api.settings import Settings
from urbis.testing.sparql_servers import Engine
from urbis.twin.errors import ConfigError
from urbis.twin.store.base import StoreBackend
from urbis.twin.store.oxigraph import OxigraphBackend
from urbis.twin.store.registry import GROUP, StoreRegistry, UnknownStore, default_registry
from urbis.twin.store.sparql import SparqlBackend

PLUGIN_MODULE = "urbis_test_store_plugin"


class PluginBackend(OxigraphBackend):
    """A third-party backend: the embedded store under another name, built from settings."""

    name = "plugin"

    @classmethod
    def from_settings(cls, settings: Any) -> PluginBackend:
        return cls(settings.data_dir)


def plugin_factory(settings: Any) -> StoreBackend:
    return PluginBackend(settings.data_dir)


def not_a_backend(settings: Any) -> object:
    return object()


@pytest.fixture
def plugin_module() -> Iterator[str]:
    module = types.ModuleType(PLUGIN_MODULE)
    module.PluginBackend = PluginBackend  # type: ignore[attr-defined]
    module.plugin_factory = plugin_factory  # type: ignore[attr-defined]
    module.not_a_backend = not_a_backend  # type: ignore[attr-defined]
    sys.modules[PLUGIN_MODULE] = module
    yield PLUGIN_MODULE
    del sys.modules[PLUGIN_MODULE]


def point(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=GROUP)


def test_builtins_need_no_entry_point_metadata(tmp_path: Path, oxigraph_engine: Engine) -> None:
    registry = StoreRegistry(plugins=[])
    assert registry.names() == {"oxigraph": "built-in", "sparql": "built-in"}
    backend = registry.create("oxigraph", Settings(data_dir=tmp_path, open=True))
    try:
        assert isinstance(backend, OxigraphBackend) and backend.data_dir == tmp_path
    finally:
        backend.close()
    remote = registry.create(
        "sparql",
        Settings(
            store="sparql",
            sparql_url=oxigraph_engine.query_url,
            sparql_update_url=oxigraph_engine.update_url,
            open=True,
        ),
    )
    try:
        assert isinstance(remote, SparqlBackend)
        assert "" in remote.tenants()  # it talks to the real engine it was configured with
    finally:
        remote.close()


def test_an_entry_point_adds_a_backend_by_name(plugin_module: str, tmp_path: Path) -> None:
    registry = StoreRegistry(
        plugins=[
            point("plugin", f"{plugin_module}:plugin_factory"),
            point("plugin-class", f"{plugin_module}:PluginBackend"),
        ]
    )
    assert registry.names()["plugin"] == f"entry point {plugin_module}:plugin_factory"
    assert registry.names()["oxigraph"] == "built-in"  # the built-ins stay
    for name in ("plugin", "plugin-class"):
        settings = Settings(store=name, data_dir=tmp_path / name, open=True)
        state = build_state(settings, stores=registry)
        try:
            assert type(state.twin.backend) is PluginBackend
            assert (tmp_path / name / "tenants").is_dir()  # built from the settings it was given
        finally:
            state.twin.close()


def test_an_unknown_name_is_a_startup_error_listing_the_known_ones(plugin_module: str) -> None:
    registry = StoreRegistry(plugins=[point("plugin", f"{plugin_module}:plugin_factory")])
    with pytest.raises(UnknownStore) as error:
        build_state(Settings(store="quadstore", open=True), stores=registry)
    assert "'quadstore'" in error.value.detail
    assert "known: oxigraph, plugin, sparql" in error.value.detail
    with pytest.raises(UnknownStore, match="known: oxigraph, sparql"):
        create_app(Settings(store="quadstore", open=True))  # the installed registry


def test_a_broken_plugin_fails_only_when_chosen(plugin_module: str) -> None:
    registry = StoreRegistry(
        plugins=[
            point("missing", "urbis_no_such_module:Backend"),
            point("wrong", f"{plugin_module}:not_a_backend"),
        ]
    )
    assert set(registry.names()) == {"oxigraph", "sparql", "missing", "wrong"}
    backend = registry.create("oxigraph", Settings(open=True))  # unaffected
    backend.close()
    with pytest.raises(ConfigError, match=r"'missing' .* does not load: ModuleNotFoundError"):
        registry.create("missing", Settings(open=True))
    with pytest.raises(ConfigError, match="'wrong' made a object, not a StoreBackend"):
        registry.create("wrong", Settings(open=True))


def test_an_entry_point_may_replace_a_builtin(plugin_module: str) -> None:
    registry = StoreRegistry(plugins=[point("oxigraph", f"{plugin_module}:plugin_factory")])
    backend = registry.create("oxigraph", Settings(open=True))
    try:
        assert type(backend) is PluginBackend
    finally:
        backend.close()


def test_the_default_registry_has_the_builtins() -> None:
    assert {"oxigraph", "sparql"} <= set(default_registry().names())


def test_create_app_takes_an_injected_backend() -> None:
    """As stac-fastapi injects a backend: the app uses it, whatever URBIS_STORE says."""
    injected = PluginBackend(None)
    app = create_app(Settings(open=True, demo=False), backend=injected)
    with TestClient(app) as client:
        assert client.get("/health").json()["store"] == "plugin"
        created = client.post("/ngsi-ld/v1/entities", json={"id": "urn:ngsi-ld:T:1", "type": "T"})
        assert created.status_code == 201
    assert injected._tenants == {}  # the lifespan closed the backend it was given


def test_urbis_serve_refuses_an_unknown_store_clearly(tmp_path: Path) -> None:
    answered = subprocess.run(
        [sys.executable, "-m", "urbis", "serve", "--store", "quadstore", "--memory", "--open"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert answered.returncode == 2
    assert "cannot start: unknown store backend 'quadstore'" in answered.stderr
    assert "known: oxigraph, sparql" in answered.stderr
    assert "Traceback" not in answered.stderr
