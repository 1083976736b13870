"""The demo city's sensors as MQTT devices: publishes twin.demo readings the IoT Agent way.

`urbis serve --demo` with a broker configured (demo/loading.py, `start_demo_devices`) runs
`run_simulator`: a thread that publishes each tick of `demo.city.updates()` as IoT Agent JSON
(`/json/<apikey>/<device>/attrs`, `{"fillingLevel": 0.42, "TimeInstant": "..."}`); the live
source `demo_source` (an `mqtt` source, run by the connectors' `LiveManager` like any other)
turns them back into measures of the twin, through a real broker: the demo shows federation,
not a preloaded file.
"""

from __future__ import annotations

import logging
import random
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from urbis.connectors.definition import SourceDefinition
from urbis.connectors.mqtt import broker_address
from urbis.demo import city as demo

log = logging.getLogger("urbis.connectors.mqtt_simulator")
APIKEY = "urbis-demo"


def device_id(entity_id: str) -> str:
    """urn:ngsi-ld:WasteContainer:demo-8 -> wastecontainer-demo-8 (a device name, no ':')."""
    _, _, kind, local = entity_id.split(":", 3)
    return f"{kind.lower()}-{local}"


def _measures(fragment: dict[str, Any]) -> Iterator[tuple[str, Any, str | None, str | None]]:
    """(name, value, observedAt, unitCode) of the fragment's plain sensor readings."""
    for name, inst in fragment.items():
        if not isinstance(inst, dict) or inst.get("type") != "Property":
            continue
        value = inst.get("value")
        if isinstance(value, bool | int | float | str) and "observedAt" in inst:
            yield name, value, inst["observedAt"], inst.get("unitCode")


def readings(
    rng: random.Random, now: datetime, *, apikey: str = APIKEY
) -> Iterator[tuple[str, bytes]]:
    """(topic, payload) for one tick of the living demo."""
    for entity_id, fragment in demo.updates(rng, now):
        payload: dict[str, Any] = {}
        for name, value, observed, _ in _measures(fragment):
            payload[name] = value
            payload["TimeInstant"] = observed
        if payload:
            yield f"/json/{apikey}/{device_id(entity_id)}/attrs", orjson.dumps(payload)


def demo_devices(seed: int = 42) -> dict[str, Any]:
    """Provisioning of every sensed demo entity: device -> entity, attributes with units."""
    units: dict[tuple[str, str], str] = {}
    kinds: set[str] = set()
    rng = random.Random(seed)
    for _ in range(12):  # enough ticks for every kind of reading to show its unit
        for entity_id, fragment in demo.updates(rng, demo.REFERENCE_NOW):
            kind = entity_id.split(":")[2]
            for name, _, _, unit in _measures(fragment):
                kinds.add(kind)
                if unit:
                    units[(kind, name)] = unit
    devices: dict[str, Any] = {}
    for entity in demo.generate(seed=seed):
        kind = entity["type"]
        names = {n for (k, n) in units if k == kind}
        if kind not in kinds:
            continue
        devices[device_id(entity["id"])] = {
            "entity_type": kind,
            "entity_id": entity["id"],
            "apikey": APIKEY,
            "attributes": {n: {"name": n, "unit": units[(kind, n)]} for n in sorted(names)},
        }
    return devices


def demo_source(broker_url: str, context: Any) -> SourceDefinition:
    """The MQTT source of the demo city; `context` is the demo's @context (its terms)."""
    return SourceDefinition(
        id="demo-mqtt",
        kind="mqtt",
        endpoint=broker_url,
        title="Demo city sensors over MQTT (simulated IoT Agent devices)",
        options={
            "devices": demo_devices(),
            "apikeys": [APIKEY],
            "transports": ["json"],
            "client_id": f"urbis-demo-{uuid.uuid4().hex[:8]}",
            "context": context,
        },
    )


def run_simulator(broker_url: str, stop: threading.Event, period: float, *, seed: int = 7) -> None:
    """Publish a tick of readings every `period` seconds until `stop` (QoS 1). The broker is
    the operator's (URBIS_DEMO_MQTT_URL), like the store's URL: not through the outbound
    guard; the connector that reads it back is."""
    host, port = broker_address(broker_url)
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"urbis-demo-sim-{uuid.uuid4().hex[:8]}"
    )
    client.connect_async(host, port)
    client.loop_start()
    rng = random.Random(seed)
    try:
        while not stop.wait(period):
            if not client.is_connected():
                continue
            for topic, payload in readings(rng, datetime.now(UTC)):
                client.publish(topic, payload, qos=1)
    finally:
        client.disconnect()
        client.loop_stop()
