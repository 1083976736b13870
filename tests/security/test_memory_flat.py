"""Issue 8, item 6: updates on an on-disk store reach the flush of the write buffers.

RocksDB keeps every write in its in-memory write buffers until they are flushed; the update
path (DELETE DATA + INSERT DATA) never reached the periodic flush of the insert path, so a
server under PATCHes grew by kilobytes a request (bench/soak_bench.py measures the RSS). These
tests count what the store was given between two flushes: structural, not timed, not RSS.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pyoxigraph import Store

import urbis.twin.store.oxigraph as oxigraph
from urbis.api.app import create_app
from urbis.api.settings import Settings
from urbis.twin.changes import WriteContext
from urbis.twin.context import ContextResolver
from urbis.twin.core import Twin
from urbis.twin.entities import EntityService
from urbis.twin.model import EntityReader
from urbis.twin.store.oxigraph import OxigraphBackend, OxigraphTenant

TERMS = ContextResolver().resolve(None)
BUDGET = 512 * 1024  # a small flush budget, so that a few hundred updates must flush
ENTITIES = 20
UPDATES = 1000
WRITER = WriteContext(reason="test")


class CountingStore:
    """A pyoxigraph Store that records what was written to it since its last flush."""

    def __init__(self, store: Store) -> None:
        self.inner = store
        self.flushes = 0
        self.total_text = 0  # SPARQL update text given to the store
        self.pending_text = 0  # ... since the last flush
        self.pending_quads = 0  # quads extended since the last flush
        self.most_text = 0
        self.most_quads = 0
        self.largest_update = 0

    def update(self, text: str, *args: Any, **kwargs: Any) -> None:
        self.inner.update(text, *args, **kwargs)
        self.total_text += len(text)
        self.pending_text += len(text)
        self.largest_update = max(self.largest_update, len(text))
        self.most_text = max(self.most_text, self.pending_text)

    def extend(self, quads: list[Any]) -> None:
        self.inner.extend(quads)
        self.pending_quads += len(quads)
        self.most_quads = max(self.most_quads, self.pending_quads)

    def flush(self) -> None:
        self.inner.flush()
        self.flushes += 1
        self.pending_text = self.pending_quads = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def assert_flushed_within_budget(spy: CountingStore) -> None:
    assert spy.total_text > 2 * BUDGET, "the test must write several budgets of updates"
    # Before the fix: megabytes of update text and not one flush.
    assert spy.flushes >= spy.total_text // (BUDGET + spy.largest_update)
    # What the write buffers hold between two flushes stays within one budget and one update.
    assert spy.most_text < BUDGET + spy.largest_update


def counting(service: EntityService) -> CountingStore:
    tenant = service.store
    assert isinstance(tenant, OxigraphTenant) and tenant.path is not None  # on disk
    spy = CountingStore(tenant.store)
    tenant.store = spy  # type: ignore[assignment]
    return spy


@pytest.fixture
def small_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(oxigraph, "FLUSH_TEXT", BUDGET)


@pytest.fixture
def service(tmp_path: Path, small_budget: None) -> Iterator[EntityService]:
    twin = Twin(OxigraphBackend(tmp_path))
    service = twin.tenant("", create=True)
    reader = EntityReader(TERMS)
    for i in range(ENTITIES):
        service.create(reader.entity(container(i, 0.0)), context=WRITER)
    yield service
    twin.close()


def container(i: int, level: float) -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:WasteContainer:{i}",
        "type": "WasteContainer",
        "description": {"type": "Property", "value": "x" * 1500},  # a document of kilobytes
        "fillingLevel": {"type": "Property", "value": level},
        "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [3.8, 43.6]}},
    }


def patch_attrs(service: EntityService, n: int) -> None:
    attrs = EntityReader(TERMS).attributes(
        {"fillingLevel": {"type": "Property", "value": n}}, allow_null=False
    )
    service.update_attributes(
        f"urn:ngsi-ld:WasteContainer:{n % ENTITIES}",
        attrs,
        context=WRITER,
        now="2026-01-15T09:00:00Z",
    )


def merge_patch(service: EntityService, n: int) -> None:
    patch = EntityReader(TERMS).attributes(
        {"fillingLevel": {"type": "Property", "value": n}}, allow_null=False
    )
    service.merge(
        f"urn:ngsi-ld:WasteContainer:{n % ENTITIES}",
        patch,
        context=WRITER,
        now="2026-01-15T09:00:00Z",
    )


def replace(service: EntityService, n: int) -> None:
    doc = EntityReader(TERMS).entity(container(n % ENTITIES, float(n)))
    service.replace(doc["id"], doc, context=WRITER)


def batch_upsert(service: EntityService, n: int) -> None:
    reader = EntityReader(TERMS)
    items = [(d["id"], d) for d in (reader.entity(container(i, float(n))) for i in range(2))]
    service.upsert_many(items, context=WRITER, mode="replace")


UPDATE_PATHS: dict[str, Callable[[EntityService, int], None]] = {
    "patch_attrs": patch_attrs,
    "merge_patch": merge_patch,
    "replace": replace,
    "batch_upsert_existing": batch_upsert,
}


@pytest.mark.parametrize("operation", UPDATE_PATHS.values(), ids=UPDATE_PATHS.keys())
def test_updates_reach_the_flush_and_never_pile_up_unflushed(
    service: EntityService, operation: Callable[[EntityService, int], None]
) -> None:
    spy = counting(service)
    for n in range(1, UPDATES + 1):
        operation(service, n)
    assert_flushed_within_budget(spy)
    assert service.get("urn:ngsi-ld:WasteContainer:0")  # the entities are still there


def test_admin_sparql_updates_are_counted_by_their_text(service: EntityService) -> None:
    spy = counting(service)
    filler = "y" * 4000
    for n in range(400):  # 1.6 MB of text, counted as 1 quad each before the fix
        service.store.sparql_update(
            f'INSERT DATA {{ GRAPH <urn:g> {{ <urn:s{n}> <urn:p> "{filler}{n}" }} }}'
        )
    assert_flushed_within_budget(spy)


def test_patch_over_http_on_disk_reaches_the_flush(tmp_path: Path, small_budget: None) -> None:
    """The path of the report: PATCH /entities/{id}/attrs on `urbis serve --data-dir`."""
    app = create_app(Settings(open=True, demo=False, data_dir=tmp_path))
    headers = {"Content-Type": "application/json"}
    with TestClient(app, headers=headers) as client:
        for i in range(ENTITIES):
            created = client.post("/ngsi-ld/v1/entities", json=container(i, 0.0))
            assert created.status_code == 201, created.text
        spy = counting(app.state.urbis.twin.tenant(""))
        for n in range(500):
            entity = f"urn:ngsi-ld:WasteContainer:{n % ENTITIES}"
            body = {"fillingLevel": {"type": "Property", "value": n}}
            patched = client.patch(f"/ngsi-ld/v1/entities/{entity}/attrs", json=body)
            assert patched.status_code == 204, patched.text
        assert_flushed_within_budget(spy)
        level = client.get(f"/ngsi-ld/v1/entities/{entity}").json()["fillingLevel"]["value"]
        assert level == 499
