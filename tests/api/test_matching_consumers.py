"""One matcher, one meaning: idPattern, type expressions, q and geoQ give the same answer to
queries, subscriptions and registrations, end to end over HTTP (issue 9, docs/matching.md).

Real servers on loopback: broker A (`urbis serve`), which holds the entities, subscriptions and
registrations; source B, a second `urbis serve` that A's registrations point at; and a
receiver of A's notifications. Each case runs in tenants of its own, so that cases may reuse
an id and never see each other's entities, subscriptions or registrations.

Whether a subscription was notified is read after a *barrier*: each case tenant has a second
subscription, created after the one under test, that every entity created there satisfies.
The notifier decides the subscriptions of a change in the order they were created and sends in
that order, so once the barrier's notification is in, the one under test is in too, or was
never sent.
"""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from urbis.testing.receiver import receiving
from urbis.testing.server import running_server
from urbis.twin.query.idpattern import compile_id_pattern

V1 = "/ngsi-ld/v1"
BARRIER_WAIT = 60.0  # seconds for every barrier notification: generous on a loaded machine
REQUEST_TIMEOUT = 30.0  # a request that takes longer fails the test: no pattern may stall it

# -- the idPattern table: (idPattern, entity id, whether it matches) ---------------------------

ID_CASES: list[tuple[str, str, bool]] = [
    # unanchored: a match of some part of the id is enough
    ("Road:1", "urn:ngsi-ld:Road:12", True),
    ("Road:1", "urn:ngsi-ld:Road:21", False),
    ("1$", "urn:ngsi-ld:Road:31", True),
    # anchored with ^...$ for the whole id
    ("^urn:ngsi-ld:Road:1$", "urn:ngsi-ld:Road:1", True),
    ("^urn:ngsi-ld:Road:1$", "urn:ngsi-ld:Road:12", False),
    ("^Road", "urn:ngsi-ld:Road:1", False),
    # a dot is any character, unless escaped
    ("Road.7", "urn:ngsi-ld:Road-7", True),
    ("Road\\.7", "urn:ngsi-ld:Road-7", False),
    ("Road\\.7", "urn:ngsi-ld:Road.7", True),
    # classes, negated classes, ranges
    (":[0-9]+$", "urn:ngsi-ld:Road:2024", True),
    (":[0-9]+$", "urn:ngsi-ld:Road:20x4", False),
    ("Road:[^0-9]", "urn:ngsi-ld:Road:north", True),
    ("^urn:ngsi-ld:[A-Z][a-z]+:", "urn:ngsi-ld:road:1", False),
    # alternation in groups, counted repetition
    ("^urn:ngsi-ld:(Road|Street):", "urn:ngsi-ld:Street:9", True),
    ("^urn:ngsi-ld:(Road|Street):", "urn:ngsi-ld:Lane:9", False),
    ("(North|South)$", "urn:ngsi-ld:Road:South", True),
    (":x{2,3}$", "urn:ngsi-ld:Road:xxx", True),
    (":x{2,3}$", "urn:ngsi-ld:Road:x", False),
    # catastrophic for a backtracking engine (2^40 ways to split the a's; C(62, 20) ways to
    # place the 20 a's): linear here, so the answer comes at once, everywhere
    ("(a+)+$", "urn:ngsi-ld:Road:" + "a" * 40 + "c", False),
    ("(a+)+$", "urn:ngsi-ld:Road:" + "a" * 40, True),
    ("(.*a){20}", "urn:ngsi-ld:Road:" + "a" * 10 + "b" * 35, False),
]

# -- subscriptions vs queries: type expressions, q, geoQ ----------------------------------------

BUS: dict[str, Any] = {  # two types, so that `;` (both) can hold
    "id": "urn:ngsi-ld:Bus:1",
    "type": ["Bus", "Vehicle"],
    "name": {"type": "Property", "value": "line 4"},
}
TYPE_CASES: list[tuple[str, bool]] = [
    ("Bus", True),
    ("Car", False),
    ("Car,Bus", True),
    ("Car|Bus", True),
    ("Bus;Vehicle", True),
    ("Bus;Car", False),
    ("(Bus;Car),Vehicle", True),
    ("Car;(Bus|Vehicle)", False),
    ("(Bus|Car);(Vehicle|Lorry)", True),
]

POINT = {"type": "Point", "coordinates": [4.8357, 45.764]}
ROAD: dict[str, Any] = {
    "id": "urn:ngsi-ld:Road:main",
    "type": "Road",
    "name": {"type": "Property", "value": "Main Street"},
    "level": {"type": "Property", "value": 3, "observedAt": "2024-05-01T10:00:00Z"},
    "status": {"type": "Property", "value": "open"},
    "address": {"type": "Property", "value": {"city": "Lyon", "zip": "69001"}},
    "location": {
        "type": "GeoProperty",
        "value": {"type": "Point", "coordinates": [4.8357, 45.764]},
    },
}
Q_CASES: list[tuple[str, bool]] = [  # inexact ones are decided by the query's post-filter
    ("level==3", True),
    ("level>3", False),
    ("level==1..5", True),
    ("level==4,5", False),
    ('level>=3;status=="open"', True),
    ('level<2|status=="closed"', False),
    ('status!="open"', False),  # inexact
    ('status!="closed"', True),  # inexact
    ('name~="Street$"', True),
    ('name!~="^Main"', False),  # inexact
    ("!missing", True),
    ("missing", False),
    ("level.observedAt>2024-01-01T00:00:00Z", True),  # inexact
    ("level.observedAt>2025-01-01T00:00:00Z", False),  # inexact
    ('address[city]=="Lyon"', True),  # inexact
    ('(level==3;status=="closed")|address[city]=="Lyon"', True),
]
AROUND = [[[4.83, 45.76], [4.84, 45.76], [4.84, 45.77], [4.83, 45.77], [4.83, 45.76]]]
ELSEWHERE = [[[2.3, 48.8], [2.4, 48.8], [2.4, 48.9], [2.3, 48.9], [2.3, 48.8]]]
GEO_CASES: list[tuple[str, str, Any, bool]] = [  # (georel, geometry, coordinates, expected)
    ("near;maxDistance==500", "Point", [4.84, 45.764], True),  # about 340 m away
    ("near;maxDistance==100", "Point", [4.84, 45.764], False),
    ("near;minDistance==1000", "Point", [4.84, 45.764], False),
    ("within", "Polygon", AROUND, True),
    ("within", "Polygon", ELSEWHERE, False),
    ("intersects", "Polygon", AROUND, True),
    ("disjoint", "Polygon", AROUND, False),
]


# -- servers ----------------------------------------------------------------------------------


@dataclass
class Receiver:
    url: str
    inbox: queue.Queue[dict[str, Any]]
    notified: dict[str, set[str]] = field(default_factory=dict)  # subscription id -> entity ids

    def wait_for(self, subscription_ids: set[str]) -> None:
        """Collect notifications until each of these subscriptions has had one."""
        deadline = time.monotonic() + BARRIER_WAIT
        while not subscription_ids <= set(self.notified):
            left = deadline - time.monotonic()
            missing = sorted(subscription_ids - set(self.notified))
            assert left > 0, f"no notification for {len(missing)} barrier(s): {missing[:3]}"
            try:
                body = self.inbox.get(timeout=left)
            except queue.Empty:
                continue
            ids = {e["id"] for e in body["data"]}
            self.notified.setdefault(body["subscriptionId"], set()).update(ids)


@dataclass
class Servers:
    a: httpx.Client  # the broker under test
    b: httpx.Client  # the context source A's registrations name
    receiver: Receiver


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    logs = tmp_path_factory.mktemp("matching")
    with (  # --open: admin access and loopback destinations, as a local test setup needs
        receiving() as (url, received),
        running_server("--memory", "--open", log=logs / "a.log") as a,
        running_server("--memory", "--open", log=logs / "b.log") as b,
        httpx.Client(base_url=a, timeout=REQUEST_TIMEOUT, trust_env=False) as client_a,
        httpx.Client(base_url=b, timeout=REQUEST_TIMEOUT, trust_env=False) as client_b,
    ):
        yield Servers(client_a, client_b, Receiver(url, received))


def tenant(name: str) -> dict[str, str]:
    return {"NGSILD-Tenant": name}


def ok(response: httpx.Response, *statuses: int) -> httpx.Response:
    assert response.status_code in (statuses or (200,)), (response.status_code, response.text)
    return response


def create(client: httpx.Client, where: str, entity: dict[str, Any]) -> None:
    ok(client.post(f"{V1}/entities", json=entity, headers=tenant(where)), 201)


def subscribe(servers: Servers, where: str, **members: Any) -> str:
    body = {
        "type": "Subscription",
        "notification": {"endpoint": {"uri": servers.receiver.url}},
        **members,
    }
    answer = ok(servers.a.post(f"{V1}/subscriptions", json=body, headers=tenant(where)), 201)
    location: str = answer.headers["location"]
    return location.rsplit("/", 1)[-1]


def entity_ids(response: httpx.Response) -> set[str]:
    return {e["id"] for e in ok(response).json()}


@dataclass
class SubscribedCase:
    """A case tenant on A: the subscription under test, then the barrier."""

    where: str
    subscription: str
    barrier: str


def subscribed(servers: Servers, where: str, **members: Any) -> SubscribedCase:
    under_test = subscribe(servers, where, **members)
    barrier = subscribe(servers, where, watchedAttributes=["name"])  # every entity here
    return SubscribedCase(where, under_test, barrier)


def notified(servers: Servers, cases: list[SubscribedCase], entity_id: str) -> list[bool]:
    """Whether each case's subscription was notified of `entity_id`, once the barriers are."""
    servers.receiver.wait_for({c.barrier for c in cases})
    return [entity_id in servers.receiver.notified.get(c.subscription, set()) for c in cases]


def id_pattern_answers(
    a: httpx.Client, n: int, pattern: str, entity_id: str, registration_id: str
) -> dict[str, bool]:
    """Whether each consumer but the subscription selects the case's entity by its pattern."""
    here, sources = tenant(f"id{n}"), tenant(f"reg{n}")
    by_pattern = {"type": "Road", "idPattern": pattern}
    post_filtered = {**by_pattern, "q": 'name!="zzz"'}  # `!=` is inexact: the matcher decides
    selectors = {"type": "Query", "entities": [by_pattern]}
    by_id = {"type": "Road", "id": entity_id}  # what the registration's pattern is tried on
    # 404 when no source was asked: A itself holds no such entity in this tenant
    retrieved = ok(a.get(f"{V1}/entities/{entity_id}", headers=sources), 200, 404)
    answers: dict[str, bool | httpx.Response] = {
        "RE2 reference": compile_id_pattern(pattern).search(entity_id),
        "GET /entities?idPattern": a.get(f"{V1}/entities", params=by_pattern, headers=here),
        "GET /entities?idPattern&q, post-filtered": a.get(
            f"{V1}/entities", params=post_filtered, headers=here
        ),
        "POST /entityOperations/query": a.post(
            f"{V1}/entityOperations/query", json=selectors, headers=here
        ),
        "registration: GET /entities?id forwarded": a.get(
            f"{V1}/entities", params=by_id, headers=sources
        ),
        "registration: GET /entities/{id} forwarded": retrieved.status_code == 200,
        "registration: GET /csourceRegistrations?id": a.get(
            f"{V1}/csourceRegistrations", params=by_id, headers=sources
        ),
    }
    shown = ok(a.get(f"{V1}/csourceRegistrations/{registration_id}", headers=sources)).json()
    answers["registration: its source was asked"] = shown["timesSent"] > 0
    return {consumer: _selected(got, entity_id) for consumer, got in answers.items()}


def _selected(answer: bool | httpx.Response, entity_id: str) -> bool:
    if isinstance(answer, bool):
        return answer
    found = ok(answer).json()
    if found and found[0].get("type") == "ContextSourceRegistration":
        return True  # the registration may hold the entity
    return entity_id in {e["id"] for e in found}


# -- the tests --------------------------------------------------------------------------------


def test_id_pattern_table_gives_one_answer_to_every_consumer(servers: Servers) -> None:
    a, b = servers.a, servers.b
    cases: list[SubscribedCase] = []
    registrations: list[str] = []
    for n, (pattern, entity_id, _) in enumerate(ID_CASES):
        road = {"id": entity_id, "type": "Road", "name": {"type": "Property", "value": "x"}}
        cases.append(
            subscribed(servers, f"id{n}", entities=[{"type": "Road", "idPattern": pattern}])
        )
        create(a, f"id{n}", road)  # queried and notified on A
        create(b, f"src{n}", road)  # held by the source only, for the registration
        create(a, f"reg{n}", {"id": "urn:ngsi-ld:Seed:1", "type": "Seed"})  # the tenant exists
        registration = {
            "type": "ContextSourceRegistration",
            "information": [{"entities": [{"type": "Road", "idPattern": pattern}]}],
            "endpoint": str(b.base_url).rstrip("/"),
            "tenant": f"src{n}",
        }
        answer = a.post(f"{V1}/csourceRegistrations", json=registration, headers=tenant(f"reg{n}"))
        registrations.append(ok(answer, 201).headers["location"].rsplit("/", 1)[-1])

    wrong: list[tuple[str, str, str, bool]] = []
    for n, (pattern, entity_id, expected) in enumerate(ID_CASES):
        answers = id_pattern_answers(a, n, pattern, entity_id, registrations[n])
        wrong += [
            (pattern, entity_id[:40], c, got) for c, got in answers.items() if got != expected
        ]
    servers.receiver.wait_for({c.barrier for c in cases})  # every decision is made
    for (pattern, entity_id, expected), case in zip(ID_CASES, cases, strict=True):
        got = entity_id in servers.receiver.notified.get(case.subscription, set())
        if got != expected:
            wrong.append((pattern, entity_id[:40], "subscription", got))
    assert not wrong, "consumers that disagree with the table:\n" + "\n".join(map(str, wrong))


def test_type_expressions_select_alike_in_subscriptions_and_queries(servers: Servers) -> None:
    a = servers.a
    cases = [
        subscribed(servers, f"type{n}", entities=[{"type": expression}])
        for n, (expression, _) in enumerate(TYPE_CASES)
    ]
    for case in cases:
        create(a, case.where, BUS)
    sent = notified(servers, cases, BUS["id"])
    wrong = []
    for (expression, expected), case, was_sent in zip(TYPE_CASES, cases, sent, strict=True):
        found = BUS["id"] in entity_ids(
            a.get(f"{V1}/entities", params={"type": expression}, headers=tenant(case.where))
        )
        if (found, was_sent) != (expected, expected):
            wrong.append((expression, {"query": found, "subscription": was_sent}))
    assert not wrong, f"type expressions answered otherwise than expected: {wrong}"


def test_q_selects_alike_in_subscriptions_and_queries(servers: Servers) -> None:
    a = servers.a
    cases = [
        subscribed(servers, f"q{n}", entities=[{"type": "Road"}], q=q)
        for n, (q, _) in enumerate(Q_CASES)
    ]
    for case in cases:
        create(a, case.where, ROAD)
    sent = notified(servers, cases, ROAD["id"])
    wrong = []
    for (q, expected), case, was_sent in zip(Q_CASES, cases, sent, strict=True):
        found = ROAD["id"] in entity_ids(
            a.get(f"{V1}/entities", params={"type": "Road", "q": q}, headers=tenant(case.where))
        )
        if (found, was_sent) != (expected, expected):
            wrong.append((q, {"query": found, "subscription": was_sent}))
    assert not wrong, f"q answered otherwise than expected: {wrong}"


def test_geoq_selects_alike_in_subscriptions_and_queries(servers: Servers) -> None:
    a = servers.a
    cases = [
        subscribed(
            servers,
            f"geo{n}",
            entities=[{"type": "Road"}],
            geoQ={"georel": georel, "geometry": geometry, "coordinates": coordinates},
        )
        for n, (georel, geometry, coordinates, _) in enumerate(GEO_CASES)
    ]
    for case in cases:
        create(a, case.where, ROAD)
    sent = notified(servers, cases, ROAD["id"])
    wrong = []
    for (georel, geometry, coordinates, expected), case, was_sent in zip(
        GEO_CASES, cases, sent, strict=True
    ):
        params = {
            "type": "Road",
            "georel": georel,
            "geometry": geometry,
            "coordinates": json.dumps(coordinates),
        }
        found = ROAD["id"] in entity_ids(
            a.get(f"{V1}/entities", params=params, headers=tenant(case.where))
        )
        if (found, was_sent) != (expected, expected):
            wrong.append((georel, geometry, {"query": found, "subscription": was_sent}))
    assert not wrong, f"geoQ answered otherwise than expected: {wrong}"
