"""The access port on the read paths that are no route of their own: notifications (to a real
loopback receiver), federated reads (from a second real Urbis) and `urbis export`."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pyoxigraph import RdfFormat, parse

from tests.api.test_subscriptions import Receiver, receiver  # noqa: F401  (a fixture)
from tests.conftest import TOKEN
from tests.security.access_policy import (
    BENCH,
    BIN_1,
    BIN_CLASSIFIED,
    BIN_SECRET,
    CAMERA,
    COARSE,
    ENTITIES,
    EXACT,
    PUBLIC,
    SECRET,
    CityPolicy,
    city_app,
    point,
    prop,
    store_entity,
)
from urbis.api.app import create_app
from urbis.api.settings import Settings
from urbis.cli.export import _write_tenant, exported_graphs
from urbis.ngsild.subscriptions import SUBSCRIPTION_ADMIN, Notifier, Subscription
from urbis.testing.server import running_server
from urbis.twin.access import ALLOW_ALL, Caller
from urbis.twin.state.sqlite import SqliteStateStore
from urbis.twin.store.oxigraph import OxigraphBackend

SUBS = "/ngsi-ld/v1/subscriptions"
REGS = "/ngsi-ld/v1/csourceRegistrations"
UPSERT = "/ngsi-ld/v1/entityOperations/upsert"
LOOPBACK = ["127.0.0.1"]


def settings(**extra: Any) -> Settings:
    return Settings(admin_token=TOKEN, demo=False, outbound_allow=LOOPBACK, **extra)


# -- notifications ------------------------------------------------------------------------------


def subscribe(admin: TestClient, uri: str, **members: Any) -> str:
    body = {
        "type": "Subscription",
        "entities": [{"type": "WasteBin"}, {"type": "SecretCamera"}],
        "notification": {"endpoint": {"uri": uri}},
        **members,
    }
    answer = admin.post(SUBS, json=body)
    assert answer.status_code == 201, answer.text
    location: str = answer.headers["location"]
    return location.rsplit("/", 1)[1]


def settle(admin: TestClient) -> None:
    notifier = admin.app.state.urbis.notifier  # type: ignore[attr-defined]
    assert isinstance(notifier, Notifier) and notifier.wait_idle(10)


def test_notifications_show_entities_as_their_owner_may_see_them(receiver: Receiver) -> None:  # noqa: F811
    # Subscriptions are made with the admin token: the policy restricts the admin here.
    with city_app(CityPolicy(exempt_admin=False), settings(), load=False) as (admin, _):
        every = subscribe(admin, receiver.url)
        subscribe(admin, receiver.url, q='owner=="alice"')  # must never notify
        subscribe(admin, receiver.url, watchedAttributes=["owner"])  # nor this one
        store_entity(admin.app, BIN_SECRET, SECRET)  # type: ignore[arg-type]
        store_entity(admin.app, CAMERA, SECRET)  # type: ignore[arg-type]
        assert admin.post(ENTITIES, json=BIN_CLASSIFIED).status_code == 201
        settle(admin)
        assert receiver.drained() == []  # nothing hidden is notified, to any subscription
        assert admin.post(ENTITIES, json=BIN_1).status_code == 201
        settle(admin)
        got = receiver.next()
        assert got.body["subscriptionId"] == every
        [entity] = got.body["data"]
        assert entity["id"] == BIN_1["id"] and "owner" not in entity
        assert entity["location"]["value"]["coordinates"] == COARSE
        assert receiver.drained() == []  # not the q on owner, not the watcher of owner
        # A change the owner cannot see (the dropped attribute) notifies nobody ...
        answer = admin.patch(f"{ENTITIES}/{BIN_1['id']}/attrs", json={"owner": prop("dave")})
        assert answer.status_code == 204
        settle(admin)
        assert receiver.drained() == []
        # ... a change it can see notifies, still without the attribute.
        answer = admin.patch(f"{ENTITIES}/{BIN_1['id']}/attrs", json={"fill": prop(0.6)})
        assert answer.status_code == 204
        settle(admin)
        got = receiver.next()
        assert got.body["subscriptionId"] == every
        assert got.body["data"][0]["fill"]["value"] == 0.6 and "owner" not in got.body["data"][0]
        # Deleting a hidden entity is not notified either.
        assert admin.delete(f"{ENTITIES}/{BIN_CLASSIFIED['id']}").status_code == 204
        settle(admin)
        assert receiver.drained() == []


def test_an_exempt_owner_is_notified_of_everything(receiver: Receiver) -> None:  # noqa: F811
    with city_app(CityPolicy(), settings(), load=False) as (admin, _):
        subscribe(admin, receiver.url, q='owner=="carol"')
        store_entity(admin.app, BIN_SECRET, SECRET)  # type: ignore[arg-type]
        settle(admin)
        [entity] = receiver.next().body["data"]
        assert entity["id"] == BIN_SECRET["id"] and entity["owner"]["value"] == "carol"


def test_a_subscription_keeps_its_owner(tmp_path: Path) -> None:
    owner = Caller(admin=True, anonymous=False, party="urn:party:city", purpose="waste")
    sub = Subscription(body={"id": "urn:x:s"}, context=None, created_at="t", modified_at="t")
    assert sub.owner == SUBSCRIPTION_ADMIN  # subscriptions stored before owners were kept
    sub.owner = owner
    assert Subscription.from_json(sub.to_json()).owner == owner
    legacy = {k: v for k, v in sub.to_json().items() if k != "owner"}
    assert Subscription.from_json(legacy).owner == SUBSCRIPTION_ADMIN
    with city_app(CityPolicy(), settings(data_dir=tmp_path), load=False) as (admin, _):
        subscribe(admin, "http://127.0.0.1:9/notify")
    stored = [
        doc for _, doc in SqliteStateStore(tmp_path / "state.sqlite3").list("subscriptions", "")
    ]
    assert [doc["owner"]["admin"] for doc in stored] == [True]


# -- federated reads ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    log = tmp_path_factory.mktemp("access-federation") / "remote.log"
    with (
        running_server("--memory", "--open", log=log) as url,
        httpx.Client(base_url=url, timeout=20, trust_env=False) as client,
    ):
        yield client


REMOTE_BIN = {
    "id": "urn:ngsi-ld:RemoteBin:1",
    "type": "RemoteBin",
    "fill": prop(0.4),
    "owner": prop("alice"),
    "location": point(EXACT),
}
REMOTE_CLASSIFIED = {
    "id": "urn:ngsi-ld:RemoteBin:2",
    "type": "RemoteBin",
    "fill": prop(0.3),
    "classified": prop(True),
}


def test_federated_entities_are_filtered_for_the_caller(remote: httpx.Client) -> None:
    answer = remote.post(UPSERT, json=[REMOTE_BIN, REMOTE_CLASSIFIED])
    assert answer.status_code in (201, 204), answer.text
    registration = {
        "type": "ContextSourceRegistration",
        "information": [{"entities": [{"type": "RemoteBin"}]}],
        "endpoint": str(remote.base_url).rstrip("/"),
    }
    # One client for both callers (the admin sends its token): the app's pooled client for
    # the sources lives on this client's event loop.
    admin = {"Authorization": f"Bearer {TOKEN}"}
    app = create_app(settings(), access=CityPolicy())
    with TestClient(app) as anonymous:
        assert anonymous.post(REGS, json=registration, headers=admin).status_code == 201
        query = {"type": "RemoteBin", "count": "true"}
        seen = anonymous.get(ENTITIES, params=query)
        assert seen.status_code == 200, seen.text
        assert [e["id"] for e in seen.json()] == [REMOTE_BIN["id"]]
        assert seen.headers["NGSILD-Results-Count"] == "1"
        [entity] = seen.json()
        assert "owner" not in entity and entity["location"]["value"]["coordinates"] == COARSE
        # The source selects on its own data; the caller's view decides again.
        on_owner = anonymous.get(ENTITIES, params={**query, "q": 'owner=="alice"'})
        assert on_owner.json() == [] and on_owner.headers["NGSILD-Results-Count"] == "0"
        near_exact = {"georel": "near;maxDistance==50", "geometry": "Point"}
        geo = anonymous.get(ENTITIES, params={**query, **near_exact, "coordinates": str(EXACT)})
        assert geo.json() == []
        one = anonymous.get(f"{ENTITIES}/{REMOTE_BIN['id']}")
        assert one.status_code == 200 and "owner" not in one.json()
        assert one.json()["location"]["value"]["coordinates"] == COARSE
        assert anonymous.get(f"{ENTITIES}/{REMOTE_CLASSIFIED['id']}").status_code == 404
        # The exempt admin sees the sources' entities as they answered them.
        full = anonymous.get(ENTITIES, params=query, headers=admin)
        assert {e["id"] for e in full.json()} == {REMOTE_BIN["id"], REMOTE_CLASSIFIED["id"]}
        assert full.headers["NGSILD-Results-Count"] == "2"
        one = anonymous.get(f"{ENTITIES}/{REMOTE_BIN['id']}", headers=admin)
        assert one.json()["owner"]["value"] == "alice"
        on_owner = anonymous.get(ENTITIES, params={**query, "q": 'owner=="alice"'}, headers=admin)
        assert [e["id"] for e in on_owner.json()] == [REMOTE_BIN["id"]]


# -- urbis export -------------------------------------------------------------------------------


def test_export_reads_through_the_port(tmp_path: Path) -> None:
    with city_app(CityPolicy(), settings(data_dir=tmp_path)):
        pass  # the city, written to disk
    backend = OxigraphBackend(tmp_path)
    try:
        store = backend.tenant("", create=False)
        assert exported_graphs(store, "", None) == [None]  # allow-all: every quad, one pass
        assert exported_graphs(store, "", None, ALLOW_ALL) == [None]
        assert exported_graphs(store, "", None, CityPolicy()) == [None]  # the operator is exempt
        restricted = CityPolicy(exempt_admin=False)
        assert exported_graphs(store, "", None, restricted) == [PUBLIC]
        assert exported_graphs(store, "", SECRET, restricted) == []
        out = io.BytesIO()
        written = _write_tenant(store, out, RdfFormat.N_QUADS, [PUBLIC], "test")
        quads = list(parse(out.getvalue(), format=RdfFormat.N_QUADS))
        assert written == len(quads) > 0
        assert {q.graph_name.value for q in quads} == {PUBLIC}  # type: ignore[union-attr]
        assert (
            BENCH["id"] in out.getvalue().decode() and CAMERA["id"] not in out.getvalue().decode()
        )
    finally:
        backend.close()
