"""The NGSI-LD API on a remote SPARQL engine (URBIS_STORE=sparql): Oxigraph server, Virtuoso.

Each test works in a tenant of its own (NGSILD-Tenant), since the engines live for the session.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.api.test_entities import bin_entity
from urbis.api.app import create_app
from urbis.api.settings import Settings
from urbis.testing.server import running_server
from urbis.testing.sparql_servers import Engine, oxigraph_engine, virtuoso_engine

__all__ = ["oxigraph_engine", "virtuoso_engine"]

TOKEN = "remote-store-token"
ENTITIES = "/ngsi-ld/v1/entities"
OPS = "/ngsi-ld/v1/entityOperations"


@pytest.fixture(params=["oxigraph-server", "virtuoso"])
def engine(request: pytest.FixtureRequest) -> Engine:
    name = "oxigraph_engine" if request.param == "oxigraph-server" else "virtuoso_engine"
    found: Engine = request.getfixturevalue(name)
    return found


def remote_app(engine: Engine) -> TestClient:
    settings = Settings(admin_token=TOKEN, demo=False, **engine.settings())  # type: ignore[arg-type]
    return TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"})


@pytest.fixture
def tenant() -> dict[str, str]:
    return {"NGSILD-Tenant": "api" + uuid.uuid4().hex[:10]}


@pytest.fixture
def client(engine: Engine) -> Iterator[TestClient]:
    with remote_app(engine) as c:
        yield c


def bins(n: int) -> list[dict[str, Any]]:
    """n bins along a line east of Montpellier's centre, 0.001 degree (about 80 m) apart."""
    items = []
    for i in range(n):
        e = bin_entity(i, fill=round(i / n, 2))
        e["location"]["value"]["coordinates"] = [3.87 + i * 0.001, 43.61]
        items.append(e)
    return items


NEAR = {
    "type": "WasteContainer",
    "georel": "near;maxDistance==250",
    "geometry": "Point",
    "coordinates": "[3.87,43.61]",
    "limit": 100,
}


def ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return sorted(e["id"] for e in response.json())


def test_create_get_patch_query(client: TestClient, tenant: dict[str, str]) -> None:
    assert client.post(OPS + "/create", json=bins(10), headers=tenant).status_code == 201
    got = client.get(f"{ENTITIES}/urn:ngsi-ld:WasteContainer:3", headers=tenant)
    assert got.status_code == 200, got.text
    assert got.json()["fillingLevel"]["value"] == 0.3
    assert got.json()["name"]["languageMap"] == {"fr": "Bac", "en": "Bin"}
    patch = {"fillingLevel": {"type": "Property", "value": 0.99}}
    patched = client.patch(
        f"{ENTITIES}/urn:ngsi-ld:WasteContainer:3/attrs", json=patch, headers=tenant
    )
    assert patched.status_code == 204, patched.text
    full = client.get(
        ENTITIES,
        params={"type": "WasteContainer", "q": "fillingLevel>0.85", "count": "true"},
        headers=tenant,
    )
    assert ids(full) == ["urn:ngsi-ld:WasteContainer:3", "urn:ngsi-ld:WasteContainer:9"]
    assert full.headers["NGSILD-Results-Count"] == "2"
    # geoQ from the twin's own spatial index: bins 0..3 lie within 250 m
    assert ids(client.get(ENTITIES, params=NEAR, headers=tenant)) == [
        f"urn:ngsi-ld:WasteContainer:{i}" for i in range(4)
    ]
    deleted = client.delete(f"{ENTITIES}/urn:ngsi-ld:WasteContainer:0", headers=tenant)
    assert deleted.status_code == 204
    assert "urn:ngsi-ld:WasteContainer:0" not in ids(
        client.get(ENTITIES, params=NEAR, headers=tenant)
    )


def test_batch_upsert_and_tenants_isolated(client: TestClient, tenant: dict[str, str]) -> None:
    first = client.post(OPS + "/upsert", json=bins(5), headers=tenant)
    assert first.status_code == 201, first.text
    changed = bins(7)
    changed[0]["status"]["value"] = "broken"
    again = client.post(OPS + "/upsert", params={"options": "update"}, json=changed, headers=tenant)
    assert again.status_code in (201, 204), again.text
    broken = client.get(
        ENTITIES, params={"type": "WasteContainer", "q": 'status=="broken"'}, headers=tenant
    )
    assert ids(broken) == ["urn:ngsi-ld:WasteContainer:0"]
    count = client.get(
        ENTITIES, params={"type": "WasteContainer", "count": "true", "limit": 0}, headers=tenant
    )
    assert count.headers["NGSILD-Results-Count"] == "7"
    elsewhere = {"NGSILD-Tenant": tenant["NGSILD-Tenant"] + "x"}
    client.post(OPS + "/upsert", json=bins(1), headers=elsewhere)
    other = client.get(
        ENTITIES, params={"type": "WasteContainer", "count": "true"}, headers=elsewhere
    )
    assert other.headers["NGSILD-Results-Count"] == "1"


def test_restart_sees_the_data_and_rebuilds_the_index(
    engine: Engine, tenant: dict[str, str]
) -> None:
    with remote_app(engine) as first:
        assert first.post(OPS + "/create", json=bins(6), headers=tenant).status_code == 201
    with remote_app(engine) as second:
        got = second.get(f"{ENTITIES}/urn:ngsi-ld:WasteContainer:5", headers=tenant)
        assert got.status_code == 200 and got.json()["fillingLevel"]["value"] == 0.83
        assert ids(second.get(ENTITIES, params=NEAR, headers=tenant)) == [
            f"urn:ngsi-ld:WasteContainer:{i}" for i in range(4)
        ]


def test_urbis_serve_with_a_remote_store(oxigraph_engine: Engine, tmp_path: Path) -> None:
    args = ["--store", "sparql", "--sparql-url", oxigraph_engine.query_url]
    args += ["--sparql-update-url", oxigraph_engine.update_url, "--open"]
    tenant = {"NGSILD-Tenant": "cli" + uuid.uuid4().hex[:10]}
    with running_server(*args, log=tmp_path / "serve.log") as base:
        created = httpx.post(base + ENTITIES, json=bin_entity(77), headers=tenant, timeout=30)
        assert created.status_code == 201, created.text
        got = httpx.get(f"{base}{ENTITIES}/urn:ngsi-ld:WasteContainer:77", headers=tenant)
        assert got.status_code == 200 and got.json()["status"]["value"] == "ok"
    assert "(twin: " + oxigraph_engine.query_url in (tmp_path / "serve.log").read_text()
