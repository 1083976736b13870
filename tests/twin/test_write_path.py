"""The one write path: every write mode through EntityService, with a WriteContext, as events.

Each write mode is driven through the HTTP API (or the connector, or the demo, as in production)
and the Twin's listeners must hear exactly the entities it changed: the kind, the documents
before and after, the dataset graph, who wrote, committed before the listener runs.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import TOKEN
from tests.connectors.test_framework import ScriptedConnector, add, light, manager
from urbis.api.app import create_app
from urbis.api.settings import Settings
from urbis.connectors.base import NgsiEntity
from urbis.connectors.definition import SourceDefinition
from urbis.connectors.live import LiveReport, LiveSink
from urbis.connectors.mqtt import MeasureUpdate
from urbis.connectors.quarantine import Quarantine
from urbis.connectors.sync import SyncManager
from urbis.ontology import ns
from urbis.twin.changes import ChangeEvent, WriteContext
from urbis.twin.context import ContextResolver
from urbis.twin.core import Twin
from urbis.twin.errors import ResourceNotFound
from urbis.twin.store.oxigraph import OxigraphBackend

__all__ = ["manager"]  # the connectors' fixture, shared

CORE = ContextResolver().resolve(None)
E = "/ngsi-ld/v1/entities"
B = "/ngsi-ld/v1/entityOperations"
ADMIN = WriteContext(party="admin")
BIN = "urn:ngsi-ld:WasteContainer:1"


def term(name: str) -> str:
    return CORE.expand(name)


def value(doc: dict[str, Any] | None, name: str) -> Any:
    assert doc is not None
    instances = doc.get(term(name))
    return None if instances is None else instances[0].get("value")


class Recorder:
    """A listener that keeps every call (one transaction each)."""

    def __init__(self) -> None:
        self.calls: list[list[ChangeEvent]] = []
        self.lock = threading.Lock()

    def __call__(self, events: Sequence[ChangeEvent]) -> None:
        with self.lock:
            self.calls.append(list(events))

    def take(self) -> list[ChangeEvent]:
        """The events heard since the last take, in commit order."""
        with self.lock:
            events = [e for call in self.calls for e in call]
            self.calls.clear()
        return events


def twin_of(client: TestClient) -> Twin:
    twin: Twin = client.app.state.urbis.twin  # type: ignore[attr-defined]
    return twin


@pytest.fixture
def heard(client: TestClient) -> Iterator[Recorder]:
    recorder = Recorder()
    twin_of(client).listen(recorder)
    yield recorder
    twin_of(client).unlisten(recorder)


def container(entity_id: str = BIN, level: float = 0.5, **attrs: Any) -> dict[str, Any]:
    return {
        "id": entity_id,
        "type": "WasteContainer",
        "fillingLevel": {"type": "Property", "value": level},
        **attrs,
    }


def ok(answer: Any, status: int) -> None:
    assert answer.status_code == status, answer.text


def one(events: list[ChangeEvent], kind: str) -> ChangeEvent:
    assert [e.kind for e in events] == [kind], events
    event = events[0]
    assert event.tenant == "" and event.context == ADMIN
    assert event.graph == ns.DEFAULT_DATASET
    assert event.committed_at.endswith("Z")
    return event


# -- every single-entity mode, through the API ---------------------------------------------------


def test_every_entity_mode_emits_its_event_with_the_callers_context(
    client: TestClient, heard: Recorder
) -> None:
    ok(client.post(E, json=container(status={"type": "Property", "value": "ok"})), 201)
    created = one(heard.take(), "created")
    assert created.old is None and created.entity_id == BIN
    assert value(created.new, "fillingLevel") == 0.5

    ok(client.put(f"{E}/{BIN}", json=container(level=0.6)), 204)  # replace: status goes
    replaced = one(heard.take(), "updated")
    assert replaced.old == created.new
    assert value(replaced.new, "fillingLevel") == 0.6 and term("status") not in replaced.new
    assert replaced.new["createdAt"] == created.new["createdAt"]  # type: ignore[index]

    patch = {"fillingLevel": {"type": "Property", "value": 0.7}}
    ok(client.patch(f"{E}/{BIN}/attrs", json=patch), 204)  # update attributes
    updated = one(heard.take(), "updated")
    assert updated.old == replaced.new and value(updated.new, "fillingLevel") == 0.7

    extra = {"status": {"type": "Property", "value": "full"}}
    ok(client.post(f"{E}/{BIN}/attrs", json=extra), 204)  # append
    appended = one(heard.take(), "updated")
    assert value(appended.old, "status") is None and value(appended.new, "status") == "full"

    ok(client.post(f"{E}/{BIN}/attrs?options=noOverwrite", json=extra), 207)
    kept = one(heard.take(), "updated")  # modifiedAt only: the attribute was kept
    assert value(kept.new, "status") == "full" and kept.new != kept.old

    ok(client.patch(f"{E}/{BIN}/attrs/status", json={"value": "emptied"}), 204)  # partial
    partial = one(heard.take(), "updated")
    assert value(partial.new, "status") == "emptied"

    ok(client.put(f"{E}/{BIN}/attrs/status", json={"type": "Property", "value": "x"}), 204)
    assert value(one(heard.take(), "updated").new, "status") == "x"  # replace attribute

    ok(client.delete(f"{E}/{BIN}/attrs/status"), 204)  # delete attribute
    dropped = one(heard.take(), "updated")
    assert value(dropped.old, "status") == "x" and term("status") not in dropped.new  # type: ignore[operator]

    merge = {"fillingLevel": {"type": "Property", "value": 0.9}}
    ok(client.patch(f"{E}/{BIN}", json=merge), 204)  # merge-patch
    merged = one(heard.take(), "updated")
    assert value(merged.old, "fillingLevel") == 0.7 and value(merged.new, "fillingLevel") == 0.9

    ok(client.delete(f"{E}/{BIN}"), 204)
    deleted = one(heard.take(), "deleted")
    assert deleted.old == merged.new and deleted.new is None

    ok(client.delete(f"{E}/{BIN}"), 404)  # nothing written, nothing heard
    assert heard.take() == []


def test_every_batch_mode_emits_one_event_per_entity_written(
    client: TestClient, heard: Recorder
) -> None:
    a, b = "urn:ngsi-ld:WasteContainer:a", "urn:ngsi-ld:WasteContainer:b"
    ok(client.post(f"{B}/create", json=[container(a), container(b)]), 201)
    created = heard.take()
    assert [(e.kind, e.entity_id) for e in created] == [("created", a), ("created", b)]
    assert len(heard.calls) == 0 and len({e.committed_at for e in created}) == 1  # one commit

    status = {"status": {"type": "Property", "value": "ok"}}
    ok(client.post(f"{B}/upsert?options=update", json=[container(a, 0.1, **status)]), 204)
    upserted = one(heard.take(), "updated")
    assert value(upserted.new, "fillingLevel") == 0.1 and value(upserted.new, "status") == "ok"

    ok(client.post(f"{B}/upsert?options=replace", json=[container(a, 0.2)]), 204)
    replaced = one(heard.take(), "updated")
    assert value(replaced.old, "status") == "ok" and term("status") not in replaced.new  # type: ignore[operator]

    c = "urn:ngsi-ld:WasteContainer:c"
    ok(client.post(f"{B}/upsert", json=[container(c)]), 201)
    assert one(heard.take(), "created").entity_id == c

    level = {"fillingLevel": {"type": "Property", "value": 0.3}}
    ok(client.post(f"{B}/update", json=[{"id": a, **level}, {"id": b, **level}]), 204)
    assert [(e.kind, value(e.new, "fillingLevel")) for e in heard.take()] == [
        ("updated", 0.3),
        ("updated", 0.3),
    ]

    ok(client.post(f"{B}/merge", json=[{"id": b, "fillingLevel": {"value": 0.4}}]), 204)
    assert value(one(heard.take(), "updated").new, "fillingLevel") == 0.4

    ok(client.post(f"{B}/delete", json=[a, b, c]), 204)
    assert [(e.kind, e.entity_id, e.new) for e in heard.take()] == [
        ("deleted", a, None),
        ("deleted", b, None),
        ("deleted", c, None),
    ]


def test_a_batch_with_failing_entities_emits_events_for_the_written_ones_only(
    client: TestClient, heard: Recorder
) -> None:
    ok(client.post(E, json=container()), 201)
    heard.take()
    fresh = "urn:ngsi-ld:WasteContainer:fresh"
    answer = client.post(f"{B}/create", json=[container(fresh), container(), {"id": "not a uri"}])
    ok(answer, 207)
    assert answer.json()["success"] == [fresh] and len(answer.json()["errors"]) == 2
    assert one(heard.take(), "created").entity_id == fresh

    missing = "urn:ngsi-ld:WasteContainer:missing"
    level = {"fillingLevel": {"type": "Property", "value": 0.1}}
    ok(client.post(f"{B}/update", json=[{"id": missing, **level}, {"id": BIN, **level}]), 207)
    assert one(heard.take(), "updated").entity_id == BIN

    ok(client.post(f"{B}/delete", json=[missing]), 207)  # nothing written at all
    assert heard.take() == []


def test_anonymous_writers_of_an_open_server_and_later_tenants_are_heard() -> None:
    settings = Settings(open=True, admin_token=TOKEN, demo=False)
    with TestClient(create_app(settings)) as anonymous:
        recorder = Recorder()
        twin_of(anonymous).listen(recorder)
        ok(anonymous.post(E, json=container()), 201)
        ok(anonymous.post(E, json=container(), headers={"NGSILD-Tenant": "later"}), 201)
        admin = {"Authorization": f"Bearer {TOKEN}"}
        ok(anonymous.delete(f"{E}/{BIN}", headers=admin), 204)
        events = recorder.take()
    assert [(e.tenant, e.kind, e.context.party) for e in events] == [
        ("", "created", "anonymous"),
        ("later", "created", "anonymous"),  # a tenant opened after the listener registered
        ("", "deleted", "admin"),
    ]


# -- listeners: after the commit, isolated from each other, in commit order ----------------------


def test_a_listener_that_raises_never_fails_the_write_and_the_next_one_runs(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(events: Sequence[ChangeEvent]) -> None:
        raise RuntimeError("listener bug")

    after = Recorder()
    twin = twin_of(client)
    twin.listen(broken)
    twin.listen(after)
    with caplog.at_level(logging.ERROR, logger="urbis"):
        ok(client.post(E, json=container()), 201)
    assert [e.kind for e in after.take()] == ["created"]
    assert client.get(f"{E}/{BIN}").status_code == 200  # committed
    assert any("change listener" in r.message and r.exc_info for r in caplog.records)


def test_listeners_run_after_the_commit_and_see_the_new_state(
    client: TestClient, heard: Recorder
) -> None:
    service = twin_of(client).tenant("", create=True)
    seen: list[Any] = []

    def reader(events: Sequence[ChangeEvent]) -> None:
        for event in events:
            try:
                seen.append(value(service.get(event.entity_id), "fillingLevel"))
            except ResourceNotFound:
                seen.append("gone")
            seen.append(len(service.index))  # the spatial index is up to date too

    located = container(
        location={"type": "GeoProperty", "value": {"type": "Point", "coordinates": [3.8, 43.6]}}
    )
    twin_of(client).listen(reader)
    ok(client.post(E, json=located), 201)
    ok(
        client.patch(f"{E}/{BIN}/attrs", json={"fillingLevel": {"type": "Property", "value": 1}}),
        204,
    )
    ok(client.delete(f"{E}/{BIN}"), 204)
    assert seen == [0.5, 1, 1, 1, "gone", 0]


def test_events_arrive_in_commit_order_under_concurrent_writes() -> None:
    twin = Twin(OxigraphBackend(None))
    service = twin.tenant("", create=True)
    recorder = Recorder()
    twin.listen(recorder)
    reader_now = "2026-01-15T09:00:00Z"
    from urbis.twin.model import EntityReader

    service.create(EntityReader(CORE, now=reader_now).entity(container(level=0)), context=ADMIN)

    def bump(worker: int) -> None:
        attrs = EntityReader(CORE).attributes(
            {"fillingLevel": {"type": "Property", "value": worker}}, allow_null=False
        )
        for _ in range(10):
            service.append_attributes(BIN, attrs, context=WriteContext(party=f"w{worker}"))

    threads = [threading.Thread(target=bump, args=(w,)) for w in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    events = recorder.take()[1:]  # after the create
    assert len(events) >= 4  # a worker rewriting its own value changes nothing: no event
    for earlier, later in itertools.pairwise(events):
        assert later.old == earlier.new  # each commit starts from the one heard before it
        assert later.committed_at >= earlier.committed_at
    assert value(events[-1].new, "fillingLevel") == value(service.get(BIN), "fillingLevel")


# -- connectors and the demo carry who wrote ------------------------------------------------------


def test_a_connector_sync_carries_its_source_and_run(manager: SyncManager) -> None:
    recorder = Recorder()
    manager.twin.listen(recorder)
    add(manager, "lights", [light(1), light(2), light(3)])
    first = manager.sync("lights")
    events = recorder.take()
    assert [(e.kind, e.entity_id) for e in events] == [
        ("created", f"urn:ngsi-ld:Streetlight:{n}") for n in (1, 2, 3)
    ]
    expected = WriteContext(party="source:lights", source="lights", run=first.run_id)
    assert {e.context for e in events} == {expected}
    assert {e.graph for e in events} == {"urn:urbis:dataset:lights"}

    assert manager.sync("lights").unchanged == 3
    assert recorder.take() == []  # an idempotent re-sync writes nothing, tells nothing

    ScriptedConnector.SCRIPT["lights"] = [light(1, status="broken"), light(2)]
    third = manager.sync("lights")
    events = recorder.take()
    assert [(e.kind, e.entity_id) for e in events] == [
        ("updated", "urn:ngsi-ld:Streetlight:1"),
        ("deleted", "urn:ngsi-ld:Streetlight:3"),  # the tombstone
    ]
    assert {e.context.run for e in events} == {third.run_id} != {first.run_id}


def test_a_live_source_carries_its_session_and_skips_unchanged_measures() -> None:
    twin = Twin(OxigraphBackend(None))
    recorder = Recorder()
    twin.listen(recorder)
    source = SourceDefinition(id="feed", kind="mqtt", endpoint="mqtt://127.0.0.1:1")
    report = LiveReport(source="feed", run_id="feed:live:1")
    sink = LiveSink(
        source,
        twin.tenant("", create=True),
        CORE,
        context_terms=ContextResolver().resolve,
        quarantine=Quarantine(None),
        report=report,
    )
    measure = {"id": "urn:x:1", "type": "Sensor", "t": {"type": "Property", "value": 1}}
    sink([MeasureUpdate(measure)])
    sink([MeasureUpdate(measure)])  # the same value again
    sink([NgsiEntity({**measure, "u": {"type": "Property", "value": 2}})])
    events = recorder.take()
    assert [e.kind for e in events] == ["created", "updated"]
    assert {e.context for e in events} == {
        WriteContext(party="source:feed", source="feed", run="feed:live:1")
    }
    assert (report.created, report.updated, report.unchanged) == (1, 1, 1)


def test_the_demo_writes_as_the_demo(client: TestClient, heard: Recorder) -> None:
    from urbis.demo.loading import apply_updates, demo_terms, load_demo

    state = client.app.state.urbis  # type: ignore[attr-defined]
    load_demo(state.sources)
    loaded = heard.take()
    assert loaded and {e.context.party for e in loaded} == {
        "source:demo",
        "source:demo-streetlights",
    }
    terms = demo_terms(state.resolver, state.registry)
    written = apply_updates(state.twin, terms, random.Random(7))
    events = heard.take()
    assert written > 0 and len(events) == written
    assert {(e.kind, e.context.party) for e in events} == {("updated", "demo")}
