"""The NGSI-LD pull connector against a second, real Urbis acting as a vendor's broker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from urbis.api.app import build_state
from urbis.api.settings import Settings
from urbis.connectors.base import Cursor, NgsiEntity, SourceUnavailable
from urbis.connectors.definition import SourceDefinition
from urbis.connectors.ngsild import NgsiLdConnector
from urbis.connectors.sync import SyncManager
from urbis.testing.server import free_port, running_server
from urbis.twin.outbound import OutboundGuard

LOOPBACK = OutboundGuard(allow_loopback=True)  # the test servers listen on loopback (--open)
TOKEN = "vendor-token"
TENANT = "wastecorp"
CONTAINERS = 310
SDM = "https://smartdatamodels.org/dataModel.WasteManagement/"
VENDOR_CONTEXT = {
    "@context": {
        "WasteContainer": SDM + "WasteContainer",
        "fillingLevel": SDM + "fillingLevel",
        "serialNumber": "https://vendor.example/terms/serialNumber",
        "Truck": "https://vendor.example/terms/Truck",
    }
}


def container(i: int) -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:WasteContainer:wc-{i:04d}",
        "type": "WasteContainer",
        "fillingLevel": {"type": "Property", "value": round((i % 10) / 10 + 0.05, 2)},
        "serialNumber": {"type": "Property", "value": f"SN{i:05d}"},
        "location": {
            "type": "GeoProperty",
            "value": {"type": "Point", "coordinates": [3.87 + i * 1e-4, 43.61]},
        },
    }


@pytest.fixture(scope="module")
def vendor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(broker base URL, the vendor's @context URL hosted on it), loaded with entities."""
    log = tmp_path_factory.mktemp("vendor") / "vendor.log"
    env = {"URBIS_ADMIN_TOKEN": TOKEN, "URBIS_DEMO": "0"}
    with running_server("--memory", env=env, log=log) as base:
        auth = {"Authorization": f"Bearer {TOKEN}", "NGSILD-Tenant": TENANT}
        r = httpx.post(f"{base}/ngsi-ld/v1/jsonldContexts", json=VENDOR_CONTEXT, headers=auth)
        assert r.status_code == 201, r.text
        context = base + r.headers["Location"]
        link = f'<{context}>; rel="http://www.w3.org/ns/json-ld#context"'
        entities = [container(i) for i in range(CONTAINERS)]
        entities += [{"id": f"urn:ngsi-ld:Truck:t{i}", "type": "Truck"} for i in range(7)]
        for start in range(0, len(entities), 100):
            r = httpx.post(
                f"{base}/ngsi-ld/v1/entityOperations/upsert",
                json=entities[start : start + 100],
                headers={**auth, "Link": link},
            )
            assert r.status_code in (201, 204), r.text
        yield base, context


def source(base: str, **options: Any) -> SourceDefinition:
    return SourceDefinition(id="wastecorp", kind="ngsild", endpoint=base, options=options)


def pull(base: str, cursor: Cursor | None = None, **options: Any) -> list[NgsiEntity]:
    connector = NgsiLdConnector(source(base, **options), guard=LOOPBACK)
    try:
        records = list(connector.fetch(cursor or Cursor()))
    finally:
        connector.close()
    assert all(isinstance(r, NgsiEntity) for r in records)
    return [r for r in records if isinstance(r, NgsiEntity)]


def test_every_entity_across_pages_in_the_vendors_context(vendor: tuple[str, str]) -> None:
    base, context = vendor
    cursor = Cursor()
    records = pull(
        base, cursor, type="WasteContainer", context=context, tenant=TENANT, page_size=40
    )
    ids = sorted(r.entity["id"] for r in records)
    assert ids == [f"urn:ngsi-ld:WasteContainer:wc-{i:04d}" for i in range(CONTAINERS)]
    first = next(r for r in records if r.entity["id"].endswith("wc-0003"))
    assert first.entity["fillingLevel"]["value"] == 0.35  # compacted with the vendor's terms
    assert first.entity["serialNumber"]["value"] == "SN00003"
    assert "@context" not in first.entity
    assert context in _as_list(first.context)
    assert cursor.full and cursor.state["entities"] == CONTAINERS


def test_application_json_takes_the_context_from_the_link_header(
    vendor: tuple[str, str],
) -> None:
    base, context = vendor
    records = pull(
        base,
        type="WasteContainer",
        context=context,
        tenant=TENANT,
        accept="application/json",
        page_size=200,
    )
    assert len(records) == CONTAINERS
    assert all(context in _as_list(r.context) for r in records)
    assert "fillingLevel" in records[0].entity


def test_q_filter_and_tenant_are_honoured(vendor: tuple[str, str]) -> None:
    base, context = vendor
    full = pull(
        base,
        type="WasteContainer",
        context=context,
        tenant=TENANT,
        q="fillingLevel>0.8",
        page_size=7,
    )
    assert {r.entity["id"] for r in full} == {
        f"urn:ngsi-ld:WasteContainer:wc-{i:04d}" for i in range(CONTAINERS) if i % 10 >= 8
    }
    assert pull(base, type="WasteContainer", context=context) == []  # the default tenant


def test_a_limit_above_the_brokers_cap_falls_back_to_100(vendor: tuple[str, str]) -> None:
    base, context = vendor
    records = pull(base, type="WasteContainer", context=context, tenant=TENANT, page_size=5000)
    assert len(records) == CONTAINERS  # Urbis caps limit at 1000: 403 TooManyResults, then 100


def test_incremental_pull_by_the_changed_attributes_modified_at(vendor: tuple[str, str]) -> None:
    base, context = vendor
    options = {
        "type": "WasteContainer",
        "context": context,
        "tenant": TENANT,
        "changed_attribute": "serialNumber",
        "page_size": 100,
    }
    cursor = Cursor()
    assert len(pull(base, cursor, **options)) == CONTAINERS
    since = cursor.state["modifiedSince"]
    assert cursor.full and since.endswith("Z")
    time.sleep(0.01)
    changed = ["urn:ngsi-ld:WasteContainer:wc-0007", "urn:ngsi-ld:WasteContainer:wc-0100"]
    for entity_id in changed:
        r = httpx.patch(
            f"{base}/ngsi-ld/v1/entities/{entity_id}/attrs",
            json={"serialNumber": {"type": "Property", "value": "SN-REPLACED"}},
            headers={
                "Authorization": f"Bearer {TOKEN}",
                "NGSILD-Tenant": TENANT,
                "Link": f'<{context}>; rel="http://www.w3.org/ns/json-ld#context"',
            },
        )
        assert r.status_code == 204, r.text
    again = pull(base, cursor, **options)
    assert not cursor.full
    ids = {r.entity["id"] for r in again}
    assert set(changed) <= ids
    # `>=` also brings back the entities changed at the boundary instant (the last upserted
    # batch shares one modifiedAt): harmless for idempotent upserts, and never misses one.
    boundary = [r for r in again if r.entity["id"] not in changed]
    assert all(r.entity["serialNumber"]["modifiedAt"] == since for r in boundary)
    assert len(ids) < 100
    assert cursor.state["modifiedSince"] > since


def test_broker_down_is_source_unavailable() -> None:
    with pytest.raises(SourceUnavailable, match="cannot be reached"):
        pull(f"http://127.0.0.1:{free_port()}", type="WasteContainer")


def test_a_query_the_broker_refuses_is_a_precise_error(vendor: tuple[str, str]) -> None:
    base, _ = vendor
    with pytest.raises(ValueError, match="HTTP 400"):
        pull(base, type="WasteContainer", q="fillingLevel>>>", tenant=TENANT)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "set type, attrs or q"),
        ({"type": "T", "page_size": 0}, "page_size"),
        ({"type": "T", "accept": "text/html"}, "accept"),
        ({"type": "T", "tennant": "x"}, "tennant"),
    ],
)
def test_options_are_validated(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        NgsiLdConnector(source("http://127.0.0.1:1", **options))


def test_endpoint_may_include_the_api_root() -> None:
    connector = NgsiLdConnector(source("http://broker:1026/ngsi-ld/v1/", type="T"))
    assert connector.base == "http://broker:1026"
    connector.close()


def _as_list(context: Any) -> list[Any]:
    return context if isinstance(context, list) else [context]


def test_end_to_end_from_the_vendor_broker_into_the_twin(vendor: tuple[str, str]) -> None:
    base, context = vendor
    state = build_state(Settings(open=True, demo=False))
    try:
        sync = SyncManager(
            state.twin, state.resolver, state.registry, data_dir=None, guard=state.outbound
        )
        definition = {
            "id": "wastecorp",
            "kind": "ngsild",
            "endpoint": base,
            "options": {
                "type": "WasteContainer",
                "context": context,
                "tenant": TENANT,
                "page_size": 100,
            },
        }
        sync.catalog.save(sync.catalog.parse(definition))
        report = sync.sync("wastecorp")
        assert report.status == "ok", report.errors
        assert (report.created, report.quarantined) == (CONTAINERS, 0)
        entity = state.twin.tenant("").get("urn:ngsi-ld:WasteContainer:wc-0003")
        assert entity["type"] == [SDM + "WasteContainer"]  # the vendor's terms, expanded
        assert entity[SDM + "fillingLevel"][0]["value"] == 0.35
    finally:
        state.twin.close()
