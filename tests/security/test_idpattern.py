"""idPattern (issue 8, items 4 and 7): linear time everywhere, one meaning everywhere.

A pattern that makes a backtracking engine run for ages must not freeze the server (it ran on
Python `re` in the notifier thread and in registration matching); a pattern means the same in
a query (the store's REGEX), a subscription and a registration (RE2), and one the engines
would read differently is refused with a 400 wherever it is given.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.conftest import TOKEN
from urbis.api.app import create_app
from urbis.api.settings import Settings
from urbis.ngsild.subscriptions import Notifier
from urbis.testing.receiver import receiving
from urbis.testing.server import running_server
from urbis.twin.errors import BadRequestData
from urbis.twin.query.idpattern import compile_id_pattern

V1 = "/ngsi-ld/v1"
EVIL_PATTERN = "urn:ngsi-ld:RD:(a+)+b"
EVIL_ID = "urn:ngsi-ld:RD:" + "a" * 31 + "c"  # 2^31 paths for a backtracking engine
BAD_REQUEST = "https://uri.etsi.org/ngsi-ld/errors/BadRequestData"
PROMPT = 5.0  # seconds: generous on a loaded machine, far below a backtracking engine's time


def road(entity_id: str) -> dict[str, Any]:
    return {"id": entity_id, "type": "RD", "name": {"type": "Property", "value": "x"}}


def subscription(pattern: str, uri: str = "http://127.0.0.1:9/notify") -> dict[str, Any]:
    return {
        "type": "Subscription",
        "entities": [{"type": "RD", "idPattern": pattern}],
        "notification": {"endpoint": {"uri": uri}},
    }


def registration(reg_id: str, pattern: str) -> dict[str, Any]:
    return {
        "id": reg_id,
        "type": "ContextSourceRegistration",
        "information": [{"entities": [{"type": "RD", "idPattern": pattern}]}],
        "endpoint": "http://127.0.0.1:9/ngsi-ld",
    }


# -- no freeze: a real server, so that a hang fails the test instead of hanging it ----------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("idpattern") / "serve.log"
    with running_server("--memory", "--open", log=log) as base:
        yield base


def _prompt(method: str, url: str, **kwargs: Any) -> httpx.Response:
    started = time.monotonic()
    answer = httpx.request(method, url, timeout=PROMPT, **kwargs)
    assert time.monotonic() - started < PROMPT
    return answer


def test_evil_subscription_pattern_does_not_freeze_the_server(server: str) -> None:
    created = _prompt("POST", f"{server}{V1}/subscriptions", json=subscription(EVIL_PATTERN))
    assert created.status_code == 201, created.text
    assert _prompt("POST", f"{server}{V1}/entities", json=road(EVIL_ID)).status_code == 201
    time.sleep(0.5)  # the notifier thread matches the change meanwhile
    for _ in range(3):  # every request keeps answering while the change is being matched
        assert _prompt("GET", f"{server}/health").status_code == 200
        got = _prompt("GET", f"{server}{V1}/entities/{EVIL_ID}")
        assert got.status_code == 200 and got.json()["id"] == EVIL_ID
    sub_id = created.headers["location"].rsplit("/", 1)[-1]
    shown = _prompt("GET", f"{server}{V1}/subscriptions/{sub_id}").json()
    assert "lastNotification" not in shown  # the pattern does not match: nothing was sent


def test_evil_pattern_in_a_query_and_a_registration_answers_promptly(server: str) -> None:
    _prompt("POST", f"{server}{V1}/entities", json=road(EVIL_ID))  # 201, or 409 if there
    query = _prompt(
        "GET", f"{server}{V1}/entities", params={"type": "RD", "idPattern": EVIL_PATTERN}
    )
    assert query.status_code == 200 and query.json() == []
    reg = registration("urn:ngsi-ld:ContextSourceRegistration:evil", EVIL_PATTERN)
    assert _prompt("POST", f"{server}{V1}/csourceRegistrations", json=reg).status_code == 201
    found = _prompt(
        "GET", f"{server}{V1}/csourceRegistrations", params={"type": "RD", "id": EVIL_ID}
    )
    assert found.status_code == 200 and found.json() == []  # matched, promptly, and not held
    assert _prompt("GET", f"{server}/health").status_code == 200


# -- refused where the engines disagree or cannot be linear ---------------------------------

REFUSED = [
    "(a)\\1",  # back-reference
    "(?=urn)",  # look-ahead
    "(?i)urn",  # inline flag
    "urn:\\d+",  # \d: ASCII to RE2, Unicode to the store
    "[[:digit:]]",  # POSIX class: a class of '[', ':', ... to XPath
    "[a-z-[aeiou]]",  # XPath class subtraction
    "a{1001}",  # above RE2's repetition limit
    "(urn",  # unbalanced
    "x" * 1025,  # too long
    "",  # empty
]


@pytest.mark.parametrize("pattern", REFUSED)
def test_patterns_outside_the_common_subset_are_refused_everywhere(
    client: TestClient, anonymous: TestClient, pattern: str
) -> None:
    answers = {
        "query": anonymous.get(f"{V1}/entities", params={"type": "RD", "idPattern": pattern}),
        "post query": anonymous.post(
            f"{V1}/entityOperations/query",
            json={"type": "Query", "entities": [{"type": "RD", "idPattern": pattern}]},
        ),
        "subscription": client.post(f"{V1}/subscriptions", json=subscription(pattern)),
        "registration": client.post(
            f"{V1}/csourceRegistrations",
            json=registration("urn:ngsi-ld:ContextSourceRegistration:x", pattern),
        ),
        "registration query": anonymous.get(
            f"{V1}/csourceRegistrations", params={"idPattern": pattern}
        ),
    }
    for where, answer in answers.items():
        assert answer.status_code == 400, (where, answer.status_code, answer.text)
        assert answer.json()["type"] == BAD_REQUEST, where
        assert "idPattern" in answer.json()["detail"], where
    assert client.get(f"{V1}/subscriptions").json() == []  # nothing was stored
    assert client.get(f"{V1}/csourceRegistrations").json() == []


def test_non_string_pattern_is_a_bad_request() -> None:
    with pytest.raises(BadRequestData, match="must be a string"):
        compile_id_pattern(["urn"])


# -- one meaning: the same answer from the store, the notifier and the registrations -------

IDS = [
    "urn:ngsi-ld:RD:1",
    "urn:ngsi-ld:RD:12",
    "urn:ngsi-ld:RD:a7",
    "urn:ngsi-ld:RD:abc",
    "urn:x:RD:9",
]
TABLE: dict[str, set[str]] = {
    "RD:1": {"urn:ngsi-ld:RD:1", "urn:ngsi-ld:RD:12"},  # a search, not a whole-id match
    "^urn:ngsi-ld:RD:1$": {"urn:ngsi-ld:RD:1"},
    "RD:[0-9]+$": {"urn:ngsi-ld:RD:1", "urn:ngsi-ld:RD:12", "urn:x:RD:9"},
    ".*": set(IDS),
    "RD:(a7|abc)": {"urn:ngsi-ld:RD:a7", "urn:ngsi-ld:RD:abc"},
    "^urn:x:": {"urn:x:RD:9"},
    "RD:a.?c$": {"urn:ngsi-ld:RD:abc"},
    "[^0-9]$": {"urn:ngsi-ld:RD:abc"},
    "(ngsi\\-ld|x):RD:[a-z]": {"urn:ngsi-ld:RD:a7", "urn:ngsi-ld:RD:abc"},
    "2{1,2}$": {"urn:ngsi-ld:RD:12"},
    "a*?7": {"urn:ngsi-ld:RD:a7"},
    "RD:\\.": set(),
}


@pytest.fixture
def loopback_settings() -> Settings:
    return Settings(admin_token=TOKEN, demo=False, outbound_allow=["127.0.0.1"])


@pytest.fixture
def inbox() -> Iterator[tuple[str, queue.Queue[Any]]]:
    """A loopback receiver of notifications."""
    with receiving() as (url, received):
        yield url, received


def test_one_meaning_across_queries_subscriptions_and_registrations(
    loopback_settings: Settings, inbox: tuple[str, queue.Queue[Any]]
) -> None:
    uri, received = inbox
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(create_app(loopback_settings), headers=headers) as twin:
        subs: dict[str, str] = {}
        for pattern in TABLE:
            answer = twin.post(f"{V1}/subscriptions", json=subscription(pattern, uri))
            assert answer.status_code == 201, answer.text
            subs[answer.headers["location"].rsplit("/", 1)[-1]] = pattern
        for entity_id in IDS:
            assert twin.post(f"{V1}/entities", json=road(entity_id)).status_code == 201
        notifier = twin.app.state.urbis.notifier  # type: ignore[attr-defined]
        assert isinstance(notifier, Notifier) and notifier.wait_idle(10)
        notified: dict[str, set[str]] = {p: set() for p in TABLE}
        while not received.empty():
            body = received.get_nowait()
            notified[subs[body["subscriptionId"]]] |= {e["id"] for e in body["data"]}

        for pattern, expected in TABLE.items():
            query = twin.get(
                f"{V1}/entities", params={"type": "RD", "idPattern": pattern, "limit": 100}
            )
            assert query.status_code == 200, query.text
            assert {e["id"] for e in query.json()} == expected, ("query", pattern)
            assert notified[pattern] == expected, ("subscription", pattern)
            assert {i for i in IDS if compile_id_pattern(pattern).search(i)} == expected

    # Registrations in a twin of their own: their sources would otherwise join the queries.
    with TestClient(create_app(loopback_settings), headers=headers) as sources:
        regs = {f"urn:ngsi-ld:ContextSourceRegistration:{n}": p for n, p in enumerate(TABLE)}
        for reg_id, pattern in regs.items():
            answer = sources.post(f"{V1}/csourceRegistrations", json=registration(reg_id, pattern))
            assert answer.status_code == 201, answer.text
        held: dict[str, set[str]] = {p: set() for p in TABLE}
        for entity_id in IDS:
            found = sources.get(
                f"{V1}/csourceRegistrations", params={"type": "RD", "id": entity_id}
            )
            assert found.status_code == 200, found.text
            for reg in found.json():
                held[regs[reg["id"]]].add(entity_id)
        for pattern, expected in TABLE.items():
            assert held[pattern] == expected, ("registration", pattern)
