"""The contract suite's backends: embedded (memory, disk) and remote (Oxigraph server, Virtuoso).

A remote engine is started once per session; every test gets a tenant of its own there, so
tests never see each other's data.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from urbis.testing.sparql_servers import Engine, oxigraph_engine, virtuoso_engine
from urbis.twin.store.base import StoreBackend, TenantStore
from urbis.twin.store.oxigraph import OxigraphBackend
from urbis.twin.store.sparql import SparqlBackend

__all__ = ["oxigraph_engine", "virtuoso_engine"]

BACKENDS = ["memory", "disk", "oxigraph-server", "virtuoso"]


def sparql_backend(engine: Engine) -> SparqlBackend:
    return SparqlBackend(
        engine.query_url,
        engine.update_url,
        engine.store_url,
        user=engine.user,
        password=engine.password,
    )


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreBackend]:
    kind: str = request.param
    found: StoreBackend
    if kind == "memory":
        found = OxigraphBackend(None)
    elif kind == "disk":
        found = OxigraphBackend(tmp_path / "twin")
    elif kind == "oxigraph-server":
        found = sparql_backend(request.getfixturevalue("oxigraph_engine"))
    else:
        found = sparql_backend(request.getfixturevalue("virtuoso_engine"))
    yield found
    found.close()


@pytest.fixture
def tenant_name() -> str:
    """Unique per test: the remote engines are shared by the whole session."""
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
def store(backend: StoreBackend, tenant_name: str) -> TenantStore:
    return backend.tenant(tenant_name, create=True)
