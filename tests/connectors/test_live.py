"""Live sources run by the framework: MQTT against a real Mosquitto, NGSI-LD between two Urbis.

The MQTT source is declared in a TOML file of the sources directory and started by the app's
lifespan, as `urbis serve` does; the NGSI-LD source is added to a real `urbis serve` through
POST /sources and receives notifications from a second real `urbis serve`, the vendor's broker.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion
from typer.testing import CliRunner

from urbis.api.app import create_app
from urbis.api.settings import Settings
from urbis.cli.main import app
from urbis.connectors.base import NgsiEntity, Record, Sink
from urbis.connectors.definition import SourceDefinition
from urbis.connectors.live import LiveManager, LiveReport, LiveSink, coalesce
from urbis.connectors.mqtt import MeasureUpdate, MqttConnector
from urbis.connectors.quarantine import Quarantine
from urbis.connectors.registry import ConnectorRegistry
from urbis.connectors.sync import SyncManager
from urbis.ngsild.contexts import ContextRegistry
from urbis.ontology import ns
from urbis.testing.mosquitto import Mosquitto, running_mosquitto
from urbis.testing.server import running_server
from urbis.twin.context import ContextResolver
from urbis.twin.core import Twin
from urbis.twin.entities import EntityService
from urbis.twin.outbound import OutboundGuard
from urbis.twin.store.oxigraph import OxigraphBackend

LOOPBACK = OutboundGuard(allow_loopback=True)  # the test servers listen on loopback (--open)
TOKEN = "live-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
CORE = ContextResolver().resolve(None)
GRAPH = "urn:urbis:dataset:iot"
THERMO = "urn:ngsi-ld:WeatherObserved:thermo1"
BIN = "urn:ngsi-ld:WasteContainer:7"

SOURCE_TOML = """\
# Street sensors of the IoT platform, IoT Agent conventions over MQTT.
id = "iot"
kind = "mqtt"
endpoint = "{url}"
title = "Street sensors"
publisher = "Ville de Montpellier"
licence = "https://www.etalab.gouv.fr/licence-ouverte-open-licence/"

[options]
client_id = "{client_id}"
apikeys = ["k1"]
batch_ms = 20

[options.devices.thermo1]
entity_type = "WeatherObserved"
attributes = {{ t = {{ name = "temperature", type = "Number", unit = "CEL" }} }}

[options.devices.bin7]
entity_type = "WasteContainer"
entity_id = "{bin}"
apikey = "k1"
attributes = {{ f = {{ name = "fillingLevel", type = "Number", unit = "P1" }}, k = "status" }}

[options.devices.lamp3]
entity_type = "Streetlight"
entity_id = "urn:ngsi-ld:Streetlight:inventory-3"
attributes = {{ p = "powerState" }}
"""


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    with running_mosquitto(tmp_path) as broker:
        yield broker


@pytest.fixture
def app_client(mosquitto: Mosquitto, tmp_path: Path) -> Iterator[TestClient]:
    """An app whose sources directory declares the "iot" source; its lifespan starts it."""
    sources = tmp_path / "sources"
    sources.mkdir()
    (sources / "iot.toml").write_text(
        SOURCE_TOML.format(url=mosquitto.url, client_id=f"urbis-{uuid.uuid4().hex[:8]}", bin=BIN)
    )
    settings = Settings(
        admin_token=TOKEN,
        sources_dir=sources,
        sources_scheduler=False,
        outbound_allow=["127.0.0.1"],  # the broker is on loopback
    )
    with TestClient(create_app(settings), headers=ADMIN) as client:
        wait_for(lambda: report(client)["connected"] is True, "the connection to the broker")
        yield client


def report(client: TestClient) -> dict[str, Any]:
    answer = client.get("/sources/iot/report")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def publisher(port: int) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv311
    )
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def publish(client: mqtt.Client, topic: str, payload: str) -> None:
    client.publish(topic, payload, qos=1).wait_for_publish(timeout=10)


def service(client: TestClient) -> EntityService:
    twin: Twin = client.app.state.urbis.twin  # type: ignore[attr-defined]
    return twin.tenant("")


def value(client: TestClient, entity_id: str, name: str) -> Any:
    answer = client.get(f"/ngsi-ld/v1/entities/{entity_id}")
    if answer.status_code != 200:
        return None
    attr = answer.json().get(name)
    return attr.get("value") if isinstance(attr, dict) else None


def graph_subjects(client: TestClient, graph: str) -> set[str]:
    query = f"SELECT DISTINCT ?e WHERE {{ GRAPH <{graph}> {{ ?e ?p ?o }} }}"
    return {row[0] for row in service(client).store.select(query) if row[0]}


def dataset_of(client: TestClient, entity_id: str) -> str | None:
    query = (
        f"SELECT ?g WHERE {{ GRAPH <{ns.ENTITIES_GRAPH}> "
        f"{{ <{entity_id}> <{ns.URBIS}dataset> ?g }} }}"
    )
    rows = list(service(client).store.select(query))
    return rows[0][0] if rows else None


# -- MQTT, run by the manager of an app -----------------------------------------------------


def test_json_and_ultralight_measures_land_in_the_sources_graph(
    app_client: TestClient, mosquitto: Mosquitto
) -> None:
    pub = publisher(mosquitto.port)
    try:
        publish(pub, "/json/k1/thermo1/attrs", '{"t": 21.5, "TimeInstant": "2026-01-15T09:00:00Z"}')
        publish(pub, "/ul/k1/bin7/attrs", "f|0.42|k|ok")
        wait_for(lambda: value(app_client, THERMO, "temperature") == 21.5, "the JSON measure")
        wait_for(lambda: value(app_client, BIN, "fillingLevel") == 0.42, "the UL measure")
    finally:
        pub.loop_stop()
        pub.disconnect()
    thermo = app_client.get(f"/ngsi-ld/v1/entities/{THERMO}").json()
    assert thermo["temperature"]["unitCode"] == "CEL"
    assert thermo["temperature"]["observedAt"] == "2026-01-15T09:00:00Z"
    assert value(app_client, BIN, "status") == "ok"
    # Both entities live in the source's own named graph, with their current values.
    assert dataset_of(app_client, THERMO) == GRAPH
    assert dataset_of(app_client, BIN) == GRAPH
    assert {THERMO, BIN} <= graph_subjects(app_client, GRAPH)
    live = report(app_client)
    assert live["kind"] == "live" and live["status"] == "running"
    assert live["received"] >= 2 and live["created"] == 2 and live["quarantined"] == 0
    listed = {s["id"]: s for s in app_client.get("/sources").json()}
    assert listed["iot"]["running"] is True
    assert listed["iot"]["live"]["received"] >= 2
    # The dataset was described (DCAT) when the source started.
    title = service(app_client).store.select(
        f"SELECT ?t WHERE {{ GRAPH <{ns.METADATA_GRAPH}> "
        f"{{ <{GRAPH}> <http://purl.org/dc/terms/title> ?t }} }}"
    )
    assert [row[0] for row in title] == ["Street sensors"]


def test_partial_updates_keep_the_other_attributes(
    app_client: TestClient, mosquitto: Mosquitto
) -> None:
    # An entity of the city's inventory (written through the API, another dataset).
    lamp = {
        "id": "urn:ngsi-ld:Streetlight:inventory-3",
        "type": "Streetlight",
        "name": {"type": "Property", "value": "Lamp 3, place de la Comédie"},
        "powerState": {"type": "Property", "value": "off"},
    }
    assert app_client.post("/ngsi-ld/v1/entities", json=lamp).status_code == 201
    inventory = dataset_of(app_client, lamp["id"])
    pub = publisher(mosquitto.port)
    try:
        publish(pub, "/ul/k1/bin7/attrs", "f|0.5|k|ok")
        wait_for(lambda: value(app_client, BIN, "fillingLevel") == 0.5, "the first measure")
        publish(pub, "/ul/k1/bin7/attrs", "f|0.75")
        wait_for(lambda: value(app_client, BIN, "fillingLevel") == 0.75, "the second measure")
        publish(pub, "/ul/k1/lamp3/attrs", "p|on")
        wait_for(lambda: value(app_client, lamp["id"], "powerState") == "on", "the lamp")
    finally:
        pub.loop_stop()
        pub.disconnect()
    assert value(app_client, BIN, "status") == "ok"  # not in the second message: kept
    assert value(app_client, lamp["id"], "name") == "Lamp 3, place de la Comédie"
    # A measure of an entity another source owns updates it in place, in its own dataset.
    assert dataset_of(app_client, lamp["id"]) == inventory != GRAPH
    live = report(app_client)
    assert live["foreign"] == 1 and live["created"] == 1 and live["updated"] == 2


def test_unknown_devices_are_quarantined_and_listed(
    app_client: TestClient, mosquitto: Mosquitto
) -> None:
    pub = publisher(mosquitto.port)
    try:
        publish(pub, "/json/k1/ghost/attrs", '{"t": 1}')
        publish(pub, "/json/k1/thermo1/attrs", "not json")
    finally:
        pub.loop_stop()
        pub.disconnect()

    def listed() -> list[dict[str, Any]]:
        body: list[dict[str, Any]] = app_client.get("/sources/iot/quarantine").json()
        return body

    wait_for(lambda: len(listed()) == 2, "two quarantine entries")
    entries = {e["key"]: e for e in listed()}
    ghost = entries["/json/k1/ghost/attrs"]
    assert "unknown device 'ghost'" in ghost["reason"]
    assert ghost["raw"] == {"topic": "/json/k1/ghost/attrs", "payload": '{"t": 1}'}
    assert ghost["run_id"] == report(app_client)["run_id"]
    assert "not valid JSON" in entries["/json/k1/thermo1/attrs"]["reason"]
    assert report(app_client)["quarantined"] == 2
    assert value(app_client, "urn:ngsi-ld:WeatherObserved:ghost", "temperature") is None


def test_sync_of_a_live_source_says_the_server_runs_it(app_client: TestClient) -> None:
    answer = app_client.post("/sources/iot/sync")
    assert answer.status_code == 422
    assert "live" in answer.json()["detail"] and "urbis serve" in answer.json()["detail"]


def test_delete_stops_the_source(app_client: TestClient, mosquitto: Mosquitto) -> None:
    live = app_client.app.state.urbis.live  # type: ignore[attr-defined]
    runner = live.runner("iot")
    pub = publisher(mosquitto.port)
    witnessed = threading.Event()
    witness = publisher(mosquitto.port)
    witness.on_message = lambda *_: witnessed.set()
    witness.subscribe("/ul/k1/bin7/attrs", qos=1)
    try:
        publish(pub, "/ul/k1/bin7/attrs", "f|0.1")
        wait_for(lambda: value(app_client, BIN, "fillingLevel") == 0.1, "the measure")
        run_id = report(app_client)["run_id"]
        assert app_client.delete("/sources/iot").status_code == 204
        assert not runner.alive() and not live.running("iot")
        witnessed.clear()
        publish(pub, "/ul/k1/bin7/attrs", "f|0.9")
        wait_for(witnessed.is_set, "the broker's delivery to another subscriber")
        time.sleep(0.5)  # what a running connector would need to write it; none does
        assert value(app_client, BIN, "fillingLevel") == 0.1
    finally:
        for client in (pub, witness):
            client.loop_stop()
            client.disconnect()
    assert app_client.get("/sources/iot").status_code == 404
    # The session's activity was closed with its counts.
    rows = list(
        service(app_client).store.select(
            f"SELECT ?s ?c WHERE {{ GRAPH <{ns.METADATA_GRAPH}> {{ "
            f'?a <{ns.URBIS}runId> "{run_id}" ; '
            f"<{ns.URBIS}status> ?s ; <{ns.URBIS}created> ?c }} }}"
        )
    )
    assert [tuple(r) for r in rows] == [("stopped", "1")]


# -- the runner, directly: a connector that dies is restarted -------------------------------


class DyingMqtt(MqttConnector):
    """The real MQTT connector, crashing once right after handing its first batch over."""

    kind: ClassVar[str] = "dying-mqtt"
    deaths: ClassVar[int] = 0

    def _flush(self, sink: Sink, batch: Any) -> None:
        super()._flush(sink, batch)
        if DyingMqtt.deaths == 0:
            DyingMqtt.deaths += 1
            raise RuntimeError("simulated connector crash")


def test_a_connector_that_dies_is_restarted(mosquitto: Mosquitto) -> None:
    registry = ConnectorRegistry(plugins=[])
    registry.register(DyingMqtt)
    resolver = ContextResolver()
    twin = Twin(OxigraphBackend(None))
    manager = SyncManager(
        twin, resolver, ContextRegistry(None), data_dir=None, registry=registry, guard=LOOPBACK
    )
    source = SourceDefinition(
        id="iot",
        kind="dying-mqtt",
        endpoint=mosquitto.url,
        options={
            "client_id": f"urbis-{uuid.uuid4().hex[:8]}",
            "batch_ms": 20,
            "devices": {"thermo1": {"entity_type": "WeatherObserved"}},
        },
    )
    manager.catalog.remember(source)
    live = LiveManager(manager, restart_min=0.1, provenance_seconds=0.2, tick_seconds=0.05)
    assert live.start_all() == ["iot"]
    entities = twin.tenant("")

    def temperature() -> Any:
        found = entities.get_many([THERMO]).get(THERMO)
        return found[0][CORE.expand("t")][0]["value"] if found else None

    pub = publisher(mosquitto.port)
    try:
        runner = live.runner("iot")
        assert runner is not None
        wait_for(lambda: runner.report.connected is True, "the connection")
        publish(pub, "/json/k1/thermo1/attrs", '{"t": 1}')
        wait_for(lambda: temperature() == 1, "the first measure")
        wait_for(lambda: runner.report.restarts == 1, "the restart")
        publish(pub, "/json/k1/thermo1/attrs", '{"t": 2}')
        wait_for(lambda: temperature() == 2, "a measure after the restart")
        assert runner.report.status == "running"
        assert "simulated connector crash" in runner.report.errors[0]
        time.sleep(0.3)  # let a provenance tick record the session once more
    finally:
        pub.loop_stop()
        pub.disconnect()
        live.close()
    assert runner.report.status == "stopped" and not runner.alive()
    # One activity for the whole session, rewritten in place: one status, one end time.
    rows = list(
        entities.store.select(
            f"SELECT ?s ?e WHERE {{ GRAPH <{ns.METADATA_GRAPH}> {{ ?a <{ns.URBIS}runId> "
            f'"{runner.report.run_id}" ; <{ns.URBIS}status> ?s ; '
            "<http://www.w3.org/ns/prov#endedAtTime> ?e } }"
        )
    )
    assert len(rows) == 1 and rows[0][0] == "stopped"
    assert live.report("iot") is not None
    assert live.report("iot").status == "stopped"  # type: ignore[union-attr]


def test_records_without_type_update_known_entities_only() -> None:
    """A partial record without a type: the entity's type is kept; unknown -> quarantine."""
    twin = Twin(OxigraphBackend(None))
    entities = twin.tenant("", create=True)
    source = SourceDefinition(id="feed", kind="mqtt", endpoint="mqtt://127.0.0.1:1")
    quarantine = Quarantine(None)
    sink = LiveSink(
        source,
        entities,
        CORE,
        context_terms=ContextResolver().resolve,
        quarantine=quarantine,
        report=LiveReport(source="feed", run_id="feed:live:1"),
    )
    full = NgsiEntity({"id": "urn:x:1", "type": "Sensor", "a": {"type": "Property", "value": 1}})
    records: list[Record] = [
        full,
        MeasureUpdate({"id": "urn:x:1", "b": {"type": "Property", "value": 2}}),
        MeasureUpdate({"id": "urn:x:2", "b": {"type": "Property", "value": 3}}),
    ]
    sink(records[:1])
    sink(records[1:])
    doc = entities.get("urn:x:1")
    assert doc["type"] == [CORE.expand("Sensor")]
    assert doc[CORE.expand("a")][0]["value"] == 1 and doc[CORE.expand("b")][0]["value"] == 2
    assert entities.get_many(["urn:x:2"]) == {}
    (entry,) = quarantine.list("feed")
    assert entry.key == "urn:x:2" and "without a type cannot create it" in entry.reason
    assert sink.report.received == 3 and sink.report.written == 2


# -- NGSI-LD notifications between two real Urbis ------------------------------------------


def test_ngsild_live_source_between_two_urbis(tmp_path: Path) -> None:
    env = {"URBIS_ADMIN_TOKEN": TOKEN, "VENDOR_TOKEN": TOKEN}
    env["URBIS_OUTBOUND_ALLOW"] = "127.0.0.1"  # both brokers and the receiver are on loopback
    with (
        running_server(env=env, log=tmp_path / "vendor.log") as vendor,
        running_server(env=env, log=tmp_path / "city.log") as city,
    ):
        sensor = {
            "id": "urn:ngsi-ld:Sensor:v1",
            "type": "Sensor",
            "temperature": {"type": "Property", "value": 10, "unitCode": "CEL"},
        }
        assert httpx.post(f"{vendor}/ngsi-ld/v1/entities", json=sensor, headers=ADMIN)
        definition = {
            "id": "vendor-live",
            "kind": "ngsild-live",
            "endpoint": vendor,
            "credentials": "VENDOR_TOKEN",
            "title": "The vendor's sensors",
            "options": {"type": "Sensor", "batch_ms": 20},
        }
        added = httpx.post(f"{city}/sources", json=definition, headers=ADMIN)
        assert added.status_code == 201, added.text
        assert added.json()["running"] is True

        def city_value() -> Any:
            got = httpx.get(f"{city}/ngsi-ld/v1/entities/urn:ngsi-ld:Sensor:v1")
            return got.json()["temperature"]["value"] if got.status_code == 200 else None

        def subscriptions() -> list[dict[str, Any]]:
            body: list[dict[str, Any]] = httpx.get(
                f"{vendor}/ngsi-ld/v1/subscriptions", headers=ADMIN
            ).json()
            return body

        wait_for(lambda: len(subscriptions()) == 1, "the subscription on the vendor")
        patch = {"temperature": {"type": "Property", "value": 21.5, "unitCode": "CEL"}}
        answer = httpx.patch(
            f"{vendor}/ngsi-ld/v1/entities/urn:ngsi-ld:Sensor:v1/attrs", json=patch, headers=ADMIN
        )
        assert answer.status_code == 204
        wait_for(lambda: city_value() == 21.5, "the vendor's update in the city's twin")
        query = (
            f"SELECT ?g WHERE {{ GRAPH <{ns.ENTITIES_GRAPH}> "
            f"{{ <urn:ngsi-ld:Sensor:v1> <{ns.URBIS}dataset> ?g }} }}"
        )
        found = httpx.get(
            f"{city}/sparql",
            params={"query": query},
            headers={**ADMIN, "Accept": "application/sparql-results+json"},
        )
        assert found.status_code == 200, found.text
        bindings = found.json()["results"]["bindings"]
        assert [b["g"]["value"] for b in bindings] == ["urn:urbis:dataset:vendor-live"]
        live = httpx.get(f"{city}/sources/vendor-live/report", headers=ADMIN).json()
        assert live["kind"] == "live" and live["received"] >= 1 and live["connected"] is True

        assert httpx.delete(f"{city}/sources/vendor-live", headers=ADMIN).status_code == 204
        assert subscriptions() == []  # the connector unsubscribed when it stopped


# -- the command line ----------------------------------------------------------------------


def test_urbis_sync_of_a_live_source_says_the_server_runs_it(tmp_path: Path) -> None:
    data = tmp_path / "twin"
    (data / "sources").mkdir(parents=True)
    (data / "sources" / "iot.toml").write_text(
        SOURCE_TOML.format(url="mqtt://127.0.0.1:1", client_id="urbis-cli", bin=BIN)
    )
    cli = CliRunner()
    named = cli.invoke(app, ["sync", "iot", "--data-dir", str(data)])
    assert named.exit_code == 1
    assert "is live (mqtt)" in named.output and "urbis serve" in named.output
    every = cli.invoke(app, ["sync", "--all", "--data-dir", str(data)])
    assert every.exit_code == 0, every.output
    assert "iot: live source, run by `urbis serve`; skipped" in every.output
    listed = cli.invoke(app, ["sources", "list", "--data-dir", str(data)])
    assert "live (urbis serve)" in listed.output


def test_coalesce_merges_partial_records_without_reordering_effects() -> None:
    def measure(entity_id: str, **values: Any) -> MeasureUpdate:
        attrs = {k: {"type": "Property", "value": v} for k, v in values.items()}
        return MeasureUpdate({"id": entity_id, "type": "Sensor", **attrs})

    full = NgsiEntity({"id": "urn:a", "type": "Sensor", "x": {"type": "Property", "value": 0}})
    multi = MeasureUpdate(
        {"id": "urn:b", "type": "Sensor", "x": {"type": "Property", "value": 9, "datasetId": "d"}}
    )
    out = coalesce(
        [
            measure("urn:a", x=1, y=1),
            measure("urn:b", x=1),
            measure("urn:a", x=2),
            full,
            measure("urn:a", y=3),
            multi,
            measure("urn:b", y=2),
        ]
    )
    assert [r.entity["id"] for r in out if isinstance(r, NgsiEntity)] == [
        "urn:a",
        "urn:b",
        "urn:a",
        "urn:a",
        "urn:b",
        "urn:b",
    ]
    first = out[0]
    assert isinstance(first, MeasureUpdate)
    assert first.entity["x"]["value"] == 2 and first.entity["y"]["value"] == 1
    assert out[2] is full and out[4] is multi
    assert isinstance(out[1], MeasureUpdate) and "y" not in out[1].entity
