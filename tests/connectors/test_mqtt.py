"""The MQTT connector against a real Mosquitto: IoT Agent JSON and UltraLight into the twin."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from urbis.connectors.base import BadRecord, NgsiEntity, Record
from urbis.connectors.definition import SourceDefinition
from urbis.connectors.live import LiveReport, LiveSink
from urbis.connectors.mqtt import (
    MeasureUpdate,
    MqttConnector,
    convert,
    parse_json,
    parse_ul,
)
from urbis.connectors.quarantine import Quarantine
from urbis.testing.mosquitto import Mosquitto, running_mosquitto
from urbis.twin.context import ContextResolver
from urbis.twin.entities import EntityService
from urbis.twin.outbound import OutboundGuard
from urbis.twin.store.oxigraph import OxigraphBackend

LOOPBACK = OutboundGuard(allow_loopback=True)  # the test servers listen on loopback (--open)
CORE = ContextResolver().resolve(None)
DEVICES: dict[str, Any] = {
    "thermo1": {
        "entity_type": "WeatherObserved",
        "attributes": {"t": {"name": "temperature", "type": "Number", "unit": "CEL"}},
    },
    "bin7": {
        "entity_type": "WasteContainer",
        "entity_id": "urn:ngsi-ld:WasteContainer:7",
        "apikey": "k1",
        "attributes": {
            "f": {"name": "fillingLevel", "type": "Number", "unit": "P1"},
            "k": {"name": "status", "type": "Text"},
            "n": "sequence",
        },
    },
}


# -- payload parsing (no broker) ---------------------------------------------------------------


def test_ultralight_pairs_groups_and_timestamps() -> None:
    (one,) = parse_ul(b"t|15|k|abc")
    assert one.measures == {"t": "15", "k": "abc"} and one.time_instant is None
    first, second = parse_ul(b"t|1#2026-01-15T10:00:00+02:00|t|2")
    assert first.measures == {"t": "1"}
    assert second.measures == {"t": "2"} and second.time_instant == "2026-01-15T08:00:00.000000Z"
    for bad in (b"", b"t|1|k", b"|1", b"\xff\xfe"):
        with pytest.raises(BadRecord):
            parse_ul(bad)


def test_json_payloads() -> None:
    (obs,) = parse_json(b'{"t": 15, "TimeInstant": "2026-01-15T09:00:00Z"}')
    assert obs.measures == {"t": 15} and obs.time_instant == "2026-01-15T09:00:00.000000Z"
    assert len(parse_json(b'[{"t": 1}, {"t": 2}]')) == 2
    for bad in (
        b"{",
        b"[]",
        b"42",
        b'{"TimeInstant": "2026-01-15T09:00:00Z"}',
        b'{"t": 1, "TimeInstant": "yesterday"}',
    ):
        with pytest.raises(BadRecord):
            parse_json(bad)


def test_value_conversion() -> None:
    assert convert("15", "auto", text=True) == 15
    assert convert("1.5", "auto", text=True) == 1.5
    assert convert("abc", "auto", text=True) == "abc"
    assert convert("15", "Number", text=True) == 15.0
    assert convert("true", "Boolean", text=True) is True
    assert convert(3, "Text", text=False) == "3"
    for value, kind in (("abc", "Number"), ("nan", "Number"), ("2", "Boolean"), (True, "Integer")):
        with pytest.raises(BadRecord):
            convert(value, kind, text=True)


def test_records_are_partial_entities_with_observed_at_and_unit() -> None:
    connector = MqttConnector(source("mqtt://127.0.0.1:1"))
    (record,) = connector.records("/ul/k1/bin7/attrs", b"f|0.5|zz|1", now="2026-01-01T00:00:00Z")
    assert isinstance(record, MeasureUpdate) and record.partial
    assert record.entity == {
        "id": "urn:ngsi-ld:WasteContainer:7",
        "type": "WasteContainer",
        "fillingLevel": {
            "type": "Property",
            "value": 0.5,
            "observedAt": "2026-01-01T00:00:00Z",
            "unitCode": "P1",
        },
        "zz": {"type": "Property", "value": 1, "observedAt": "2026-01-01T00:00:00Z"},
    }
    with pytest.raises(BadRecord, match="unknown device"):
        connector.records("/ul/other-key/bin7/attrs", b"f|1")  # bin7 belongs to apikey k1
    (single,) = connector.records("/json/x/thermo1/attrs/t", b"21.5")
    assert isinstance(single, NgsiEntity) and single.entity["temperature"]["value"] == 21.5


# -- against a real broker ----------------------------------------------------------------------


def source(endpoint: str, **options: Any) -> SourceDefinition:
    return SourceDefinition(
        id="iot",
        kind="mqtt",
        endpoint=endpoint,
        options={
            "devices": DEVICES,
            "client_id": f"urbis-test-{uuid.uuid4().hex[:8]}",
            "batch_ms": 20,
            "reconnect_min": 1,
            "reconnect_max": 2,
            **options,
        },
    )


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    with running_mosquitto(tmp_path) as broker:
        yield broker


@pytest.fixture
def service() -> EntityService:
    return EntityService(OxigraphBackend(None).tenant("", create=True))


def live_sink(service: EntityService, source: SourceDefinition) -> LiveSink:
    """The framework's live sink (what `LiveManager` gives a live source), without a manager."""
    return LiveSink(
        source,
        service,
        CORE,
        context_terms=ContextResolver().resolve,
        quarantine=Quarantine(None),
        report=LiveReport(source=source.id, run_id=f"{source.id}:live:test"),
    )


class Recording(LiveSink):
    """The live sink, remembering every record it was given (to count what arrived)."""

    def __init__(self, service: EntityService, source: SourceDefinition) -> None:
        sink = live_sink(service, source)
        super().__init__(
            source,
            service,
            CORE,
            context_terms=sink.context_terms,
            quarantine=sink.store,
            report=sink.report,
        )
        self.records: list[Record] = []
        self.records_lock = threading.Lock()

    def __call__(self, records: Sequence[Record]) -> None:
        with self.records_lock:
            self.records.extend(records)
        super().__call__(records)


class Running:
    def __init__(self, connector: MqttConnector, sink: Recording) -> None:
        self.connector = connector
        self.sink = sink
        self.stop = threading.Event()
        self.thread = threading.Thread(target=connector.run, args=(sink, self.stop), daemon=True)

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.thread.is_alive(), "the connector stopped"
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; stats {self.connector.stats}")
            time.sleep(0.02)


@pytest.fixture
def running(mosquitto: Mosquitto, service: EntityService) -> Iterator[Running]:
    definition = source(mosquitto.url)
    connector = MqttConnector(definition, guard=LOOPBACK)
    run = Running(connector, Recording(service, definition))
    run.thread.start()
    run.wait_for(connector.connected.is_set, "the connection")
    try:
        yield run
    finally:
        run.stop.set()
        run.thread.join(timeout=10)


def publisher(port: int) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv311
    )
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def publish(client: mqtt.Client, topic: str, payload: str | bytes) -> None:
    client.publish(topic, payload, qos=1).wait_for_publish(timeout=10)


def probe(run: Running, client: mqtt.Client, value: int) -> None:
    """Publish a marker and wait for it: everything published before it has been handled."""
    publish(client, "/ul/k1/bin7/attrs", f"n|{value}")
    run.wait_for(
        lambda: any(
            isinstance(r, NgsiEntity) and r.entity.get("sequence", {}).get("value") == value
            for r in run.sink.records
        ),
        f"marker {value}",
    )


def attribute(service: EntityService, entity_id: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = service.get(entity_id)[CORE.expand(name)][0]
    return found


def test_json_and_ultralight_measures_land_in_the_twin(
    running: Running,
    mosquitto: Mosquitto,
    service: EntityService,
) -> None:
    client = publisher(mosquitto.port)
    try:
        publish(
            client,
            "/json/k1/thermo1/attrs",
            '{"t": 15, "TimeInstant": "2026-01-15T10:00:00+01:00"}',
        )
        publish(client, "/ul/k1/bin7/attrs", "f|0.25|k|abc")
        publish(client, "/ul/k1/bin7/attrs", "f|0.5#2026-01-15T11:00:00Z|f|0.75")
        probe(running, client, 1)
    finally:
        client.loop_stop()
        client.disconnect()

    temperature = attribute(service, "urn:ngsi-ld:WeatherObserved:thermo1", "temperature")
    assert temperature["value"] == 15.0
    assert temperature["unitCode"] == "CEL"
    assert temperature["observedAt"] == "2026-01-15T09:00:00Z"  # the Harmonizer: UTC, seconds

    filling = attribute(service, "urn:ngsi-ld:WasteContainer:7", "fillingLevel")
    assert filling["value"] == 0.75 and filling["unitCode"] == "P1"
    assert filling["observedAt"] == "2026-01-15T11:00:00Z"
    status = attribute(service, "urn:ngsi-ld:WasteContainer:7", "status")
    assert status["value"] == "abc" and "observedAt" in status  # kept: a partial update
    assert list(running.connector.rejected) == []
    assert running.sink.store.list("iot") == []


def test_unknown_devices_and_malformed_payloads_are_quarantined(
    running: Running,
    mosquitto: Mosquitto,
    service: EntityService,
) -> None:
    client = publisher(mosquitto.port)
    try:
        publish(client, "/json/k1/stranger/attrs", '{"t": 1}')
        publish(client, "/json/k1/thermo1/attrs", "{not json")
        publish(client, "/ul/k1/bin7/attrs", "f|1|k")
        publish(client, "/ul/k1/bin7/attrs", "f|full")
        publish(client, "/json/k1/thermo1/attrs", b"\x00\xff" * 10)
        publish(client, "/json/k1/thermo1/attrs", '{"t": 16, "TimeInstant": "soon"}')
        probe(running, client, 2)  # the connector is alive and still delivers
    finally:
        client.loop_stop()
        client.disconnect()
    reasons = [reason for reason, _ in running.connector.rejected]
    assert len(reasons) == 6, reasons
    assert "unknown device 'stranger'" in reasons[0]
    assert "not valid JSON" in reasons[1]
    assert "odd number of fields" in reasons[2]
    assert "'full' is not a Number" in reasons[3]
    assert "TimeInstant 'soon'" in reasons[5]
    raw = running.connector.rejected[0][1]
    assert raw["topic"] == "/json/k1/stranger/attrs" and raw["payload"] == '{"t": 1}'
    assert running.connector.stats["quarantined"] == 6
    with pytest.raises(Exception, match="not found"):
        service.get("urn:ngsi-ld:WeatherObserved:stranger")


def test_no_qos1_message_is_lost_across_a_broker_restart(
    running: Running,
    mosquitto: Mosquitto,
) -> None:
    client = publisher(mosquitto.port)
    probe(running, client, 1000)  # subscribed, and the session is on the broker
    client.loop_stop()
    client.disconnect()

    mosquitto.stop()  # persists the connector's session and subscriptions
    running.wait_for(lambda: not running.connector.connected.is_set(), "the disconnect")
    mosquitto.start()  # same port; the connector is still waiting to retry
    client = publisher(mosquitto.port)
    try:
        for n in range(50):
            publish(client, "/ul/k1/bin7/attrs", f"n|{n}")
        running.wait_for(
            lambda: (
                {
                    r.entity["sequence"]["value"]
                    for r in running.sink.records
                    if isinstance(r, NgsiEntity) and "sequence" in r.entity
                }
                >= set(range(50))
            ),
            "all 50 messages after the restart",
        )
    finally:
        client.loop_stop()
        client.disconnect()
    assert running.connector.stats["connects"] >= 2


def test_demo_simulator_feeds_the_twin_through_the_broker(
    mosquitto: Mosquitto, service: EntityService
) -> None:
    from urbis.demo.devices import demo_source, run_simulator

    definition = demo_source(mosquitto.url, None)
    connector = MqttConnector(definition, guard=LOOPBACK)
    stop = threading.Event()
    threads = [
        threading.Thread(target=connector.run, args=(live_sink(service, definition), stop)),
        threading.Thread(target=run_simulator, args=(mosquitto.url, stop, 0.2)),
    ]
    for thread in threads:
        thread.start()
    station = "urn:ngsi-ld:AirQualityObserved:demo-1"
    try:
        deadline = time.monotonic() + 20
        while not service.get_many([station]):
            assert time.monotonic() < deadline, "no reading of the demo station arrived"
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    no2 = attribute(service, station, "no2")
    assert no2["unitCode"] == "GQ" and isinstance(no2["value"], float)
    assert no2["observedAt"].endswith("Z")
