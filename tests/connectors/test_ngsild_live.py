"""Live sync through an NGSI-LD subscription: two real Urbis servers on loopback.

The vendor's broker is one `urbis serve`; the city's twin is another. The connector subscribes
on the vendor, receives its notifications on its own loopback receiver, and a sink upserts the
entities into the city's twin over its NGSI-LD API (options=update).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from urbis.connectors.base import NgsiEntity, Record
from urbis.connectors.definition import SourceDefinition
from urbis.connectors.ngsild_live import NgsiLdLiveConnector
from urbis.testing.server import running_server
from urbis.twin.outbound import OutboundGuard

LOOPBACK = OutboundGuard(allow_loopback=True)  # the test servers listen on loopback (--open)
TOKEN = "live-test-token"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
SUBS = "/ngsi-ld/v1/subscriptions"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    logs = tmp_path_factory.mktemp("live")
    # The vendor notifies the connector's receiver on loopback: allowed past the outbound guard.
    env = {"URBIS_ADMIN_TOKEN": TOKEN, "URBIS_OUTBOUND_ALLOW": "127.0.0.1"}
    with (
        running_server(env=env, log=logs / "vendor.log") as vendor,
        running_server(env=env, log=logs / "city.log") as city,
    ):
        yield vendor, city


class ApiSink:
    """Upserts notified entities into the city's Urbis (the framework's job, done by hand)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.seen: list[Record] = []

    def __call__(self, records: Sequence[Record]) -> None:
        self.seen.extend(records)
        body = []
        for record in records:
            assert isinstance(record, NgsiEntity)
            body.append({**record.entity, "@context": record.context})
        answer = httpx.post(
            f"{self.base}/ngsi-ld/v1/entityOperations/upsert?options=update",
            json=body,
            headers={**HEADERS, "Content-Type": "application/ld+json"},
        )
        assert answer.status_code in (201, 204), answer.text


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def sensor(n: int, temperature: float) -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:Sensor:live{n}",
        "type": "Sensor",
        "temperature": {"type": "Property", "value": temperature, "unitCode": "CEL"},
    }


def temperature(base: str, n: int) -> float | None:
    answer = httpx.get(f"{base}/ngsi-ld/v1/entities/urn:ngsi-ld:Sensor:live{n}")
    if answer.status_code != 200:
        return None
    value: float = answer.json()["temperature"]["value"]
    return value


def test_vendor_updates_reach_the_city_twin(servers: tuple[str, str], tmp_path: Path) -> None:
    vendor, city = servers
    assert httpx.post(f"{vendor}/ngsi-ld/v1/entities", json=sensor(1, 10), headers=HEADERS)
    source = SourceDefinition(
        id="vendor-live",
        kind="ngsild-live",
        endpoint=vendor,
        options={"type": "Sensor", "watched_attributes": ["temperature"], "batch_ms": 20},
    )
    connector = NgsiLdLiveConnector(source, secret=TOKEN, guard=LOOPBACK)
    sink = ApiSink(city)
    stop = threading.Event()
    thread = threading.Thread(target=connector.run, args=(sink, stop), daemon=True)
    thread.start()
    try:
        wait_for(connector.ready.is_set, "the subscription on the vendor")
        subs = httpx.get(f"{vendor}{SUBS}", headers=HEADERS).json()
        assert [s["id"] for s in subs] == [connector.subscription_id]
        assert subs[0]["notification"]["endpoint"]["uri"] == connector.notify_url

        patch = {"temperature": {"type": "Property", "value": 21.5, "unitCode": "CEL"}}
        answer = httpx.patch(
            f"{vendor}/ngsi-ld/v1/entities/urn:ngsi-ld:Sensor:live1/attrs",
            json=patch,
            headers=HEADERS,
        )
        assert answer.status_code == 204
        wait_for(lambda: temperature(city, 1) == 21.5, "the update in the city's twin")

        created = httpx.post(f"{vendor}/ngsi-ld/v1/entities", json=sensor(2, 5), headers=HEADERS)
        assert created.status_code == 201
        wait_for(lambda: temperature(city, 2) == 5, "the new entity in the city's twin")
        got = httpx.get(f"{city}/ngsi-ld/v1/entities/urn:ngsi-ld:Sensor:live2").json()
        assert got["temperature"]["unitCode"] == "CEL"
        assert got["type"] == "Sensor"

        other = {"id": "urn:ngsi-ld:Lamp:1", "type": "Lamp", "on": {"value": True}}
        assert httpx.post(f"{vendor}/ngsi-ld/v1/entities", json=other, headers=HEADERS)
        assert all(isinstance(r, NgsiEntity) and r.entity["type"] == "Sensor" for r in sink.seen)
    finally:
        stop.set()
        thread.join(timeout=15)
    assert not thread.is_alive()
    assert httpx.get(f"{vendor}{SUBS}", headers=HEADERS).json() == []  # deleted on stop


def test_receiver_refuses_strangers_and_junk(servers: tuple[str, str]) -> None:
    vendor, _ = servers
    source = SourceDefinition(
        id="vendor-live-2", kind="ngsild-live", endpoint=vendor, options={"type": "Sensor"}
    )
    connector = NgsiLdLiveConnector(source, secret=TOKEN, guard=LOOPBACK)
    stop = threading.Event()
    thread = threading.Thread(target=connector.run, args=(lambda records: None, stop), daemon=True)
    thread.start()
    try:
        wait_for(connector.ready.is_set, "the subscription")
        assert connector.notify_url is not None
        wrong = connector.notify_url.rsplit("/", 1)[0] + "/guess"
        assert httpx.post(wrong, content=b"{}").status_code == 404
        assert httpx.post(connector.notify_url, content=b"{not json").status_code == 400
        assert httpx.post(connector.notify_url, json={"data": 1}).status_code == 400
        assert len(connector.rejected) == 2
    finally:
        stop.set()
        thread.join(timeout=15)


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="type or watched_attributes"):
        NgsiLdLiveConnector(
            SourceDefinition(id="x", kind="ngsild-live", endpoint="http://127.0.0.1:9", options={})
        )
