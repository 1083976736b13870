"""NGSI-LD subscriptions: CRUD, validation, and notifications to a real loopback receiver."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import TOKEN
from urbis.api.app import create_app
from urbis.api.settings import Settings
from urbis.ngsild.subscriptions import Notifier
from urbis.testing.receiver import Received, receiving

SUBS = "/ngsi-ld/v1/subscriptions"
ENTITIES = "/ngsi-ld/v1/entities"
SENSOR = "urn:ngsi-ld:Sensor:1"
LOOPBACK = ["127.0.0.1"]  # the receivers listen on loopback: allowed past the outbound guard


@pytest.fixture
def settings() -> Settings:
    return Settings(admin_token=TOKEN, demo=False, outbound_allow=LOOPBACK)


@dataclass
class Receiver:
    url: str
    inbox: queue.Queue[Received] = field(default_factory=queue.Queue)

    def next(self) -> Received:
        return self.inbox.get(timeout=10)

    def drained(self) -> list[Received]:
        items = []
        while not self.inbox.empty():
            items.append(self.inbox.get_nowait())
        return items


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A real HTTP server on loopback that records every notification POSTed to it."""
    with receiving(keep=lambda received: received) as (url, inbox):
        yield Receiver(url, inbox)


def notifier(client: TestClient) -> Notifier:
    found = client.app.state.urbis.notifier  # type: ignore[attr-defined]
    assert isinstance(found, Notifier)
    return found


def settle(client: TestClient) -> None:
    assert notifier(client).wait_idle(10)


def subscription(uri: str, **members: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "Subscription",
        "entities": [{"type": "Sensor"}],
        "notification": {"endpoint": {"uri": uri}},
    }
    body.update(members)
    return body


def subscribe(client: TestClient, body: dict[str, Any]) -> str:
    answer = client.post(SUBS, json=body)
    assert answer.status_code == 201, answer.text
    location: str = answer.headers["location"]
    assert location.startswith(SUBS + "/")
    return location.removeprefix(SUBS + "/")


def sensor(temperature: float, humidity: float = 50) -> dict[str, Any]:
    return {
        "id": SENSOR,
        "type": "Sensor",
        "temperature": {"type": "Property", "value": temperature, "unitCode": "CEL"},
        "humidity": {"type": "Property", "value": humidity},
    }


def patch(client: TestClient, **attrs: float) -> None:
    body = {k: {"type": "Property", "value": v} for k, v in attrs.items()}
    answer = client.patch(f"{ENTITIES}/{SENSOR}/attrs", json=body)
    assert answer.status_code == 204, answer.text


# -- CRUD -------------------------------------------------------------------------------------


def test_create_read_list_patch_delete(client: TestClient, receiver: Receiver) -> None:
    sub_id = subscribe(client, subscription(receiver.url, subscriptionName="warm"))
    assert sub_id.startswith("urn:ngsi-ld:Subscription:")

    got = client.get(f"{SUBS}/{sub_id}").json()
    assert got["id"] == sub_id
    assert got["subscriptionName"] == "warm"
    assert got["status"] == "active" and got["isActive"] is True
    assert got["notification"]["timesSent"] == 0

    second = subscribe(client, subscription(receiver.url, id="urn:ngsi-ld:Subscription:two"))
    assert second == "urn:ngsi-ld:Subscription:two"
    page = client.get(SUBS, params={"limit": 1, "count": "true"})
    assert page.status_code == 200
    assert page.headers["ngsild-results-count"] == "2"
    assert [s["id"] for s in page.json()] == [sub_id]
    assert 'rel="next"' in page.headers["link"]
    assert [s["id"] for s in client.get(SUBS, params={"offset": 1}).json()] == [second]

    answer = client.patch(f"{SUBS}/{sub_id}", json={"isActive": False, "q": "temperature>1"})
    assert answer.status_code == 204, answer.text
    got = client.get(f"{SUBS}/{sub_id}").json()
    assert got["status"] == "paused" and got["q"] == "temperature>1"
    assert got["subscriptionName"] == "warm"

    assert client.delete(f"{SUBS}/{sub_id}").status_code == 204
    gone = client.get(f"{SUBS}/{sub_id}")
    assert gone.status_code == 404
    assert gone.headers["content-type"] == "application/problem+json"
    assert client.delete(f"{SUBS}/{sub_id}").status_code == 404


def test_duplicate_id_conflicts(client: TestClient, receiver: Receiver) -> None:
    body = subscription(receiver.url, id="urn:ngsi-ld:Subscription:x")
    subscribe(client, body)
    assert client.post(SUBS, json=body).status_code == 409


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"type": "Subscriptions"}, "Subscription"),
        ({"notification": None}, "notification"),
        ({"notification": {"endpoint": {"uri": "not a url"}}}, "endpoint.uri"),
        ({"notification": {"endpoint": {"uri": "mqtt://h/t"}}}, "http(s)"),
        ({"notification": {"endpoint": {"uri": "http://h/", "accept": "text/csv"}}}, "accept"),
        ({"notification": {"format": "pretty", "endpoint": {"uri": "http://h/"}}}, "format"),
        ({"entities": [{"id": "urn:a:b"}]}, "type"),
        ({"entities": [{"type": "Sensor", "idPattern": "("}]}, "idPattern"),
        ({"entities": None}, "entities or watchedAttributes"),
        ({"watchedAttributes": []}, "watchedAttributes"),
        ({"q": "temperature>>"}, "q"),
        ({"throttling": -1}, "throttling"),
        ({"expiresAt": "2001-01-01T00:00:00Z"}, "past"),
        ({"timeInterval": 10}, "timeInterval"),
        ({"notificationTrigger": ["entityExploded"]}, "notificationTrigger"),
        ({"geoQ": {"georel": "near;maxDistance==10", "geometry": "Point"}}, "geoQ"),
        ({"color": "red"}, "color"),
    ],
)
def test_invalid_subscriptions_are_400(
    client: TestClient, change: dict[str, Any], needle: str
) -> None:
    body = subscription("http://127.0.0.1:9/notify")
    for key, value in change.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    answer = client.post(SUBS, json=body)
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert needle in answer.json()["detail"]


def test_subscriptions_need_the_admin_token(client: TestClient, receiver: Receiver) -> None:
    subscribe(client, subscription(receiver.url))
    anonymous = TestClient(client.app)
    assert anonymous.get(SUBS).status_code == 401
    assert anonymous.post(SUBS, json=subscription(receiver.url)).status_code == 401


def test_unknown_subscription_id_is_404_and_bad_id_400(client: TestClient) -> None:
    assert client.get(f"{SUBS}/urn:ngsi-ld:Subscription:none").status_code == 404
    assert client.patch(f"{SUBS}/urn:ngsi-ld:Subscription:none", json={"q": "a>1"}).status_code == (
        404
    )
    assert client.get(f"{SUBS}/not-a-uri").status_code == 400


def test_subscriptions_survive_a_restart(tmp_path: Path, receiver: Receiver) -> None:
    settings = Settings(admin_token=TOKEN, data_dir=tmp_path, outbound_allow=LOOPBACK)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(create_app(settings), headers=headers) as first:
        sub_id = subscribe(first, subscription(receiver.url, watchedAttributes=["temperature"]))
    with TestClient(create_app(settings), headers=headers) as second:
        assert second.get(f"{SUBS}/{sub_id}").json()["watchedAttributes"] == ["temperature"]
        # ... and it still notifies after the restart.
        assert second.post(ENTITIES, json=sensor(20)).status_code == 201
        settle(second)
        assert receiver.next().body["subscriptionId"] == sub_id


# -- notifications ----------------------------------------------------------------------------


def test_notification_payload_key_values(client: TestClient, receiver: Receiver) -> None:
    sub_id = subscribe(
        client,
        subscription(
            receiver.url,
            notification={
                "format": "keyValues",
                "attributes": ["temperature"],
                "endpoint": {
                    "uri": receiver.url,
                    "accept": "application/json",
                    "receiverInfo": [{"key": "X-Token", "value": "s3cret"}],
                },
            },
        ),
    )
    assert client.post(ENTITIES, json=sensor(21.5)).status_code == 201
    got = receiver.next()
    assert got.path == "/notify"
    assert got.headers["content-type"] == "application/json"
    assert got.headers["x-token"] == "s3cret"
    assert "json-ld#context" in got.headers["link"]
    body = got.body
    assert body["type"] == "Notification"
    assert body["subscriptionId"] == sub_id
    assert body["id"].startswith("urn:ngsi-ld:Notification:")
    assert "notifiedAt" in body
    assert body["data"] == [{"id": SENSOR, "type": "Sensor", "temperature": 21.5}]

    settle(client)
    status = client.get(f"{SUBS}/{sub_id}").json()["notification"]
    assert status["timesSent"] == 1
    assert status["status"] == "ok"
    assert "lastSuccess" in status and "lastNotification" in status


def test_notification_normalized_ld_json(client: TestClient, receiver: Receiver) -> None:
    subscribe(
        client,
        subscription(
            receiver.url,
            notification={"endpoint": {"uri": receiver.url, "accept": "application/ld+json"}},
        ),
    )
    assert client.post(ENTITIES, json=sensor(19)).status_code == 201
    got = receiver.next()
    assert got.headers["content-type"] == "application/ld+json"
    assert "@context" in got.body
    entity = got.body["data"][0]
    assert entity["temperature"] == {"type": "Property", "value": 19, "unitCode": "CEL"}
    assert entity["humidity"]["value"] == 50


def test_q_and_watched_attributes_filter(client: TestClient, receiver: Receiver) -> None:
    subscribe(
        client,
        subscription(
            receiver.url,
            watchedAttributes=["temperature"],
            q="temperature>20",
            notification={"format": "concise", "endpoint": {"uri": receiver.url}},
        ),
    )
    assert client.post(ENTITIES, json=sensor(25)).status_code == 201
    assert receiver.next().body["data"][0]["temperature"]["value"] == 25

    patch(client, humidity=60)  # not a watched attribute
    patch(client, temperature=10)  # watched, but q no longer holds
    settle(client)
    assert receiver.drained() == []

    patch(client, temperature=30)
    data = receiver.next().body["data"]
    assert [e["temperature"] for e in data] == [30]  # concise: no unitCode left, bare value


def test_other_types_and_id_pattern_do_not_notify(client: TestClient, receiver: Receiver) -> None:
    subscribe(
        client,
        subscription(receiver.url, entities=[{"type": "Sensor", "idPattern": ".*:Sensor:9.*"}]),
    )
    assert client.post(ENTITIES, json=sensor(1)).status_code == 201  # id does not match
    other = {"id": "urn:ngsi-ld:Lamp:90", "type": "Lamp", "on": {"type": "Property", "value": 1}}
    assert client.post(ENTITIES, json=other).status_code == 201  # type does not match
    settle(client)
    assert receiver.drained() == []
    match = {**sensor(2), "id": "urn:ngsi-ld:Sensor:91"}
    assert client.post(ENTITIES, json=match).status_code == 201
    assert receiver.next().body["data"][0]["id"] == "urn:ngsi-ld:Sensor:91"


def test_paused_subscription_is_silent(client: TestClient, receiver: Receiver) -> None:
    subscribe(client, subscription(receiver.url, isActive=False))
    assert client.post(ENTITIES, json=sensor(1)).status_code == 201
    settle(client)
    assert receiver.drained() == []


def test_entity_deleted_trigger(client: TestClient, receiver: Receiver) -> None:
    subscribe(client, subscription(receiver.url, notificationTrigger=["entityDeleted"]))
    assert client.post(ENTITIES, json=sensor(1)).status_code == 201
    assert client.delete(f"{ENTITIES}/{SENSOR}").status_code == 204
    data = receiver.next().body["data"]
    assert data[0]["id"] == SENSOR and data[0]["type"] == "Sensor" and "deletedAt" in data[0]


def test_batch_upsert_notifies_every_entity(client: TestClient, receiver: Receiver) -> None:
    subscribe(
        client,
        subscription(
            receiver.url, notification={"format": "keyValues", "endpoint": {"uri": receiver.url}}
        ),
    )
    batch = [{**sensor(n), "id": f"urn:ngsi-ld:Sensor:b{n}"} for n in range(5)]
    answer = client.post("/ngsi-ld/v1/entityOperations/upsert", json=batch)
    assert answer.status_code == 201, answer.text
    settle(client)
    seen = {e["id"] for r in receiver.drained() for e in r.body["data"]}
    assert seen == {f"urn:ngsi-ld:Sensor:b{n}" for n in range(5)}


def test_failed_delivery_is_recorded_and_writes_go_on(client: TestClient) -> None:
    from urbis.testing.server import free_port

    dead = f"http://127.0.0.1:{free_port()}/nobody"
    sub_id = subscribe(client, subscription(dead))
    assert client.post(ENTITIES, json=sensor(1)).status_code == 201
    settle(client)
    status = client.get(f"{SUBS}/{sub_id}").json()["notification"]
    assert status["status"] == "failed"
    assert status["timesFailed"] == 1 and "lastFailure" in status
    assert client.get(f"{ENTITIES}/{SENSOR}").status_code == 200
