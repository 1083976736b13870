"""MQTT ingestion: measures/s sustained from a publisher into the twin, and publish-to-queryable
latency, through a real Mosquitto on loopback and the production live sink.

    python -m bench.mqtt_bench [--rate 2000] [--seconds 10] [--devices 1000] [--data-dir DIR]

A publisher process (its own interpreter, so it does not share the GIL with the connector)
publishes UltraLight messages `p|<time>|n|<seq>|t|<value>` at a fixed rate with QoS 1, one
device per message in turn, and records when it published each one. The "mqtt" source runs as
in `urbis serve`: a `SyncManager` catalogue entry started by `LiveManager`, whose `LiveSink`
harmonises, merges and upserts each batch into the twin. A change listener on the twin (called
right after each commit) notes which sequence number of each device is committed when.

A message is queryable at the first commit of its device that holds its sequence number or a
later one (measures of one device within a batch are merged: the later value is what a reader
sees). Latency is that moment minus the message's publish time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import time
import uuid
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from urbis.connectors.definition import SourceDefinition
from urbis.connectors.live import LiveManager
from urbis.connectors.sync import SyncManager
from urbis.ngsild.contexts import ContextRegistry
from urbis.testing.mosquitto import running_mosquitto
from urbis.twin.changes import ChangeEvent
from urbis.twin.context import ContextResolver
from urbis.twin.core import Twin
from urbis.twin.outbound import OutboundGuard
from urbis.twin.store.oxigraph import OxigraphBackend

SEQUENCE = ContextResolver().resolve(None).expand("n")
PREFIX = "urn:ngsi-ld:Sensor:dev"


def publish(port: int, rate: float, seconds: float, devices: int, times_file: str) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid.uuid4().hex[:6]}")
    client.max_inflight_messages_set(0)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    total = int(rate * seconds)
    published: list[float] = []
    start = time.time()
    for seq in range(total):
        due = start + seq / rate
        pause = due - time.time()
        if pause > 0:
            time.sleep(pause)
        topic = f"/ul/bench/dev{seq % devices}/attrs"
        now = time.time()
        client.publish(topic, f"p|{now:.6f}|n|{seq}|t|{seq % 40}", qos=1)
        published.append(now)
    time.sleep(1)
    client.loop_stop()
    client.disconnect()
    Path(times_file).write_text(json.dumps(published))


class Commits:
    """The twin's listener: (commit time, sequence number) per device. Only appends."""

    def __init__(self) -> None:
        self.by_device: dict[int, list[tuple[float, int]]] = defaultdict(list)
        self.latest: dict[int, int] = {}
        self.transactions = 0
        self.events = 0

    def __call__(self, events: Sequence[ChangeEvent]) -> None:
        now = time.time()
        self.transactions += 1
        self.events += len(events)
        for event in events:
            if event.new is None or not event.entity_id.startswith(PREFIX):
                continue
            device = int(event.entity_id[len(PREFIX) :])
            seq = int(event.new[SEQUENCE][0]["value"])
            self.by_device[device].append((now, seq))
            self.latest[device] = seq

    def queryable(self, seq: int, devices: int) -> float | None:
        """When message `seq` became queryable (its device's first commit at or past it)."""
        commits = self.by_device.get(seq % devices, [])
        seqs = [s for _, s in commits]  # increasing: one device's messages are in order
        at = bisect_left(seqs, seq)
        return commits[at][0] if at < len(commits) else None


def _connected(live: LiveManager) -> bool:
    report = live.report("bench")  # asks the connector
    return report is not None and report.connected is True


def run(rate: float, seconds: float, devices: int, data_dir: Path | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, running_mosquitto(Path(tmp)) as broker:
        twin = Twin(OxigraphBackend(data_dir))
        commits = Commits()
        twin.listen(commits)
        manager = SyncManager(
            twin,
            ContextResolver(),
            ContextRegistry(None),
            data_dir=None,
            guard=OutboundGuard(allow_loopback=True),  # the broker is on loopback
        )
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
            options={
                "devices": provisioned,
                "apikeys": ["bench"],
                "transports": ["ul"],
                "client_id": f"urbis-bench-{uuid.uuid4().hex[:8]}",
            },
        )
        manager.catalog.remember(source)
        live = LiveManager(manager)
        live.start(source)
        runner = live.runner("bench")
        assert runner is not None, live.report("bench")
        deadline = time.time() + 10
        while not _connected(live) and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the SUBACK
        total = int(rate * seconds)
        last_seq = {
            d: d + devices * ((total - 1 - d) // devices) for d in range(min(devices, total))
        }
        times_file = str(Path(tmp) / "published.json")
        publisher = multiprocessing.get_context("spawn").Process(
            target=publish, args=(broker.port, rate, seconds, devices, times_file)
        )
        started = time.time()
        publisher.start()
        deadline = started + seconds + 60
        while time.time() < deadline:
            if all(commits.latest.get(d, -1) >= s for d, s in last_seq.items()):
                break
            time.sleep(0.05)
        publisher.join(30)
        report = runner.report
        live.close()
        twin.close()
        published = json.loads(Path(times_file).read_text())
        lat: list[float] = []
        last_commit = 0.0
        for seq, when in enumerate(published):
            done = commits.queryable(seq, devices)
            if done is not None:
                lat.append(done - when)
                last_commit = max(last_commit, done)
        lat.sort()
        elapsed = last_commit - published[0]  # first publish to last commit

        def pct(p: float) -> float:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 1) if lat else -1.0

        return {
            "sink": "LiveSink (LiveManager, as urbis serve runs it)",
            "rate_target": rate,
            "seconds": seconds,
            "devices": devices,
            "store": "disk" if data_dir else "memory",
            "published": total,
            "delivered": len(lat),
            "messages_per_s": round(len(lat) / elapsed, 1),
            "attributes_per_s": round(3 * len(lat) / elapsed, 1),  # p, n, t per message
            "latency_ms_p50": pct(0.50),
            "latency_ms_p95": pct(0.95),
            "latency_ms_p99": pct(0.99),
            "latency_ms_max": pct(1.0),
            "mean_batch": round(report.received / max(commits.transactions, 1), 1),
            "mean_entities_per_commit": round(commits.events / max(commits.transactions, 1), 1),
            "quarantined": report.quarantined,
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
