"""MQTT ingestion: measures/s sustained from a publisher into the twin, and publish-to-queryable
latency, through a real Mosquitto on loopback.

    python -m bench.mqtt_bench [--rate 2000] [--seconds 10] [--devices 1000] [--data-dir DIR]

A publisher process (its own interpreter, so it does not share the GIL with the connector)
publishes UltraLight messages `n|<seq>|t|<value>` at a fixed rate with QoS 1, one device per
message in turn. The connector batches them (`batch_ms`, `batch_size`) into a TwinSink that
upserts into an EntityService; a record counts as queryable when the batch holding it has
committed. Latency is that moment minus the publish time carried in the message.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from urbis.connectors.base import NgsiEntity, Record
from urbis.connectors.definition import SourceDefinition
from urbis.connectors.mqtt import MqttConnector, TwinSink
from urbis.testing.mosquitto import running_mosquitto
from urbis.twin.context import ContextResolver
from urbis.twin.entities import EntityService
from urbis.twin.store.oxigraph import OxigraphBackend


def publish(port: int, rate: float, seconds: float, devices: int) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid.uuid4().hex[:6]}")
    client.max_inflight_messages_set(0)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    total = int(rate * seconds)
    start = time.time()
    for seq in range(total):
        due = start + seq / rate
        pause = due - time.time()
        if pause > 0:
            time.sleep(pause)
        topic = f"/ul/bench/dev{seq % devices}/attrs"
        client.publish(topic, f"p|{time.time():.6f}|n|{seq}|t|{seq % 40}", qos=1)
    time.sleep(1)
    client.loop_stop()
    client.disconnect()


class TimingSink(TwinSink):
    def __init__(self, service: EntityService) -> None:
        super().__init__(service, ContextResolver().resolve)
        self.latencies: list[float] = []
        self.batches: list[int] = []
        self.count = 0
        self.first_publish = float("inf")
        self.last_commit = 0.0

    def __call__(self, records: Sequence[Record]) -> None:
        super().__call__(records)
        now = time.time()
        self.batches.append(len(records))
        for record in records:
            if isinstance(record, NgsiEntity):
                published = float(record.entity["p"]["value"])
                self.first_publish = min(self.first_publish, published)
                self.latencies.append(now - published)
        self.count += len(records)
        self.last_commit = now


def run(rate: float, seconds: float, devices: int, data_dir: Path | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, running_mosquitto(Path(tmp)) as broker:
        service = EntityService(OxigraphBackend(data_dir).tenant("", create=True))
        provisioned = {
            f"dev{i}": {
                "entity_type": "Sensor",
                "attributes": {
                    "t": {"name": "temperature", "unit": "CEL", "type": "Number"},
                    "p": {"name": "p", "type": "Text"},
                },
            }
            for i in range(devices)
        }
        source = SourceDefinition(
            id="bench",
            kind="mqtt",
            endpoint=broker.url,
            options={"devices": provisioned, "apikeys": ["bench"], "transports": ["ul"]},
        )
        connector = MqttConnector(source)
        sink = TimingSink(service)
        stop = threading.Event()
        thread = threading.Thread(target=connector.run, args=(sink, stop))
        thread.start()
        connector.connected.wait(10)
        time.sleep(0.5)  # the SUBACK
        publisher = multiprocessing.get_context("spawn").Process(
            target=publish, args=(broker.port, rate, seconds, devices)
        )
        started = time.time()
        publisher.start()
        total = int(rate * seconds)
        deadline = started + seconds + 60
        while sink.count < total and time.time() < deadline:
            time.sleep(0.05)
        elapsed = sink.last_commit - sink.first_publish  # first publish to last commit
        publisher.join(30)
        stop.set()
        thread.join(30)
        lat = sorted(sink.latencies)

        def pct(p: float) -> float:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 1) if lat else -1.0

        return {
            "rate_target": rate,
            "seconds": seconds,
            "devices": devices,
            "store": "disk" if data_dir else "memory",
            "published": total,
            "delivered": sink.count,
            "messages_per_s": round(sink.count / elapsed, 1),
            "attributes_per_s": round(3 * sink.count / elapsed, 1),  # p, n, t per message
            "latency_ms_p50": pct(0.50),
            "latency_ms_p95": pct(0.95),
            "latency_ms_p99": pct(0.99),
            "latency_ms_max": pct(1.0),
            "mean_batch": round(statistics.mean(sink.batches), 1) if sink.batches else 0,
            "quarantined": connector.stats["quarantined"],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=2000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    print(json.dumps(run(args.rate, args.seconds, args.devices, args.data_dir), indent=2))


if __name__ == "__main__":
    main()
