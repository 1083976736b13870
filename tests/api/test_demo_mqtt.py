"""`urbis serve --demo` with URBIS_DEMO_MQTT_URL: the demo's sensors go through a real broker.

The simulator publishes each tick as IoT Agent JSON to Mosquitto; the "demo-mqtt" live source
brings the measures back into the twin. Without the setting the demo applies its updates
directly, so a value that changes here has crossed the broker and the connector.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from urbis.testing.mosquitto import running_mosquitto
from urbis.testing.server import running_server

TOKEN = "demo-mqtt-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
CONTEXT = '<{base}/ngsi-ld/v1/jsonldContexts/urbis-smart-city>; rel="http://www.w3.org/ns/json-ld#context"'
CAR_PARK = "urn:ngsi-ld:OffStreetParking:demo-1"  # reports at every tick of the demo


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def observed_at(base: str) -> str:
    answer = httpx.get(
        f"{base}/ngsi-ld/v1/entities/{CAR_PARK}", headers={"Link": CONTEXT.format(base=base)}
    )
    assert answer.status_code == 200, answer.text
    stamp: str = answer.json()["availableSpotNumber"]["observedAt"]
    return stamp


def test_demo_sensors_flow_through_mqtt(tmp_path: Path) -> None:
    with running_mosquitto(tmp_path) as broker:
        seen: list[str] = []
        lock = threading.Lock()
        witness = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"witness-{uuid.uuid4().hex[:8]}"
        )

        def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
            with lock:
                seen.append(message.topic)

        witness.on_message = on_message
        witness.connect("127.0.0.1", broker.port)
        witness.subscribe("/json/urbis-demo/+/attrs", qos=1)
        witness.loop_start()
        env = {
            "URBIS_ADMIN_TOKEN": TOKEN,
            "URBIS_DEMO_MQTT_URL": broker.url,
            "URBIS_DEMO_LIVE_SECONDS": "1",
        }
        try:
            with running_server("--demo", env=env, log=tmp_path / "urbis.log") as base:
                before = observed_at(base)
                wait_for(lambda: observed_at(base) > before, "a car park's new reading")
                sources = {s["id"]: s for s in httpx.get(f"{base}/sources", headers=ADMIN).json()}
                demo = sources["demo-mqtt"]
                assert demo["kind"] == "mqtt" and demo["running"] is True
                assert demo["live"]["received"] > 0 and demo["live"]["connected"] is True
                # The sensors belong to the demo's file source: updated in place, counted.
                assert demo["live"]["foreign"] > 0 and demo["live"]["quarantined"] == 0
                assert sources["demo"]["kind"] == "file"
                with lock:
                    assert "/json/urbis-demo/offstreetparking-demo-1/attrs" in seen
        finally:
            witness.loop_stop()
            witness.disconnect()
