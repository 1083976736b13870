"""Issue 8, item 7 (the parts of engineer E): reads by operation, hidden bookkeeping predicates,
the admin token as a secret, no credentials of notification endpoints in the log."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from starlette.requests import Request

from tests.api.test_subscriptions import Receiver, receiver  # noqa: F401  (a fixture)
from tests.conftest import TOKEN
from tests.security.test_no_500 import all_routes, concrete
from urbis.api.app import create_app
from urbis.api.deps import access_gate, admin_only, is_write
from urbis.api.settings import Settings
from urbis.ontology import ns
from urbis.testing.server import free_port, running_server
from urbis.twin.iri import redact_in, redact_url

ETSI = "https://uri.etsi.org/ngsi-ld/errors/"
ENTITIES = "/ngsi-ld/v1/entities"
QUERY = "/ngsi-ld/v1/entityOperations/query"
SUBS = "/ngsi-ld/v1/subscriptions"


def bins(client: TestClient, n: int = 5) -> None:
    items = [
        {
            "id": f"urn:ngsi-ld:Bin:{i}",
            "type": "Bin",
            "scope": "/Montpellier",
            "fill": {"type": "Property", "value": i / 10},
            "kind": {"type": "VocabProperty", "vocab": "glass"},
            "near": {"type": "Relationship", "object": "urn:ngsi-ld:Street:1"},
            "location": {"type": "Point", "coordinates": [3.87 + i / 1000, 43.61]},
            "temp": [
                {"type": "Property", "value": 20},
                {"type": "Property", "value": 21, "datasetId": "urn:ngsi-ld:Dataset:b"},
            ],
        }
        for i in range(n)
    ]
    assert client.post("/ngsi-ld/v1/entityOperations/upsert", json=items).status_code == 201


# -- (i) reads and writes by operation -------------------------------------------------------


def test_post_query_is_a_public_read_within_limits(
    client: TestClient, anonymous: TestClient
) -> None:
    bins(client)
    body = {"type": "Query", "entities": [{"type": "Bin"}], "q": "fill>0.25"}
    answer = anonymous.post(QUERY, json=body)
    assert answer.status_code == 200, answer.text
    assert sorted(e["id"] for e in answer.json()) == ["urn:ngsi-ld:Bin:3", "urn:ngsi-ld:Bin:4"]
    assert len(anonymous.post(QUERY, params={"limit": "1"}, json=body).json()) == 1
    over = anonymous.post(QUERY, params={"limit": "1001"}, json=body)
    assert over.status_code == 403 and over.json()["type"] == ETSI + "TooManyResults"
    # A read never creates a tenant, even by POST.
    other = anonymous.post(QUERY, json=body, headers={"NGSILD-Tenant": "nobody"})
    assert other.status_code == 404 and other.json()["type"] == ETSI + "NonexistentTenant"
    assert "nobody" not in client.app.state.urbis.twin.backend.tenants()  # type: ignore[attr-defined]
    # Writes in the same router still need the token.
    write = anonymous.post("/ngsi-ld/v1/entityOperations/upsert", json=[{"id": "urn:x:1"}])
    assert write.status_code == 401


def _calls(dependant: Any) -> set[Any]:
    found = {dependant.call}
    for sub in dependant.dependencies:
        found |= _calls(sub)
    return found


def test_every_route_is_classified_by_operation(client: TestClient, anonymous: TestClient) -> None:
    """Anonymous: admin operations are 401, writes are 401, reads are never 401."""
    bins(client, 1)
    checked = 0
    for route in all_routes(client.app):  # type: ignore[arg-type]
        calls = _calls(route.dependant)
        if access_gate not in calls:
            continue  # /health, the docs, /sparql (below): no dependency on the gate
        for method in sorted((route.methods or set()) - {"HEAD"}):
            url = concrete(route.path)
            kwargs: dict[str, Any] = {} if method in ("GET", "DELETE") else {"json": {}}
            answer = anonymous.request(method, url, **kwargs)
            request = Request({"type": "http", "method": method, "endpoint": route.endpoint})
            write = is_write(request)
            if admin_only in calls or write:
                assert answer.status_code == 401, (method, url, answer.text)
            else:
                assert answer.status_code != 401, (method, url, answer.text)
            checked += 1
    assert checked > 40
    # SPARQL: a POSTed query is a read; an update is refused at /sparql and needs the token.
    query = anonymous.post(
        "/sparql", content="ASK { ?s ?p ?o }", headers={"Content-Type": "application/sparql-query"}
    )
    assert query.status_code == 200, query.text
    update = "INSERT DATA { <urn:x:s> <urn:x:p> <urn:x:o> }"
    sent = anonymous.post("/sparql", data={"update": update})
    assert sent.status_code == 400
    assert anonymous.post("/sparql/update", data={"update": update}).status_code == 401
    ask = anonymous.get("/sparql", params={"query": "ASK { <urn:x:s> ?p ?o }"})
    assert ask.json()["boolean"] is False


# -- (j) the broker's bookkeeping predicates stay hidden ------------------------------------------


@pytest.fixture
def loopback_client() -> Iterator[TestClient]:
    """The admin client of an app whose outbound guard lets notifications reach loopback."""
    app = create_app(Settings(admin_token=TOKEN, demo=False, outbound_allow=["127.0.0.1"]))
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        yield c


def test_no_internal_predicate_in_any_discovery_answer(
    loopback_client: TestClient,
    receiver: Receiver,  # noqa: F811
) -> None:
    client, anonymous = loopback_client, TestClient(loopback_client.app)
    sub = {
        "type": "Subscription",
        "entities": [{"type": "Bin"}],
        "notification": {"endpoint": {"uri": receiver.url}},
    }
    assert client.post(SUBS, json=sub).status_code == 201
    bins(client)
    attrs = anonymous.get("/ngsi-ld/v1/attributes").json()["attributeList"]
    assert sorted(attrs) == ["fill", "kind", "location", "near", "temp"]
    urls = [
        "/ngsi-ld/v1/attributes",
        "/ngsi-ld/v1/attributes?details=true",
        "/ngsi-ld/v1/types",
        "/ngsi-ld/v1/types?details=true",
        "/ngsi-ld/v1/types/Bin",
        ENTITIES + "?type=Bin",
        ENTITIES + "?type=Bin&options=sysAttrs",
        ENTITIES + "/urn:ngsi-ld:Bin:1",
        ENTITIES + "/urn:ngsi-ld:Bin:1?options=keyValues",
        *(f"/ngsi-ld/v1/attributes/{quote(a)}" for a in attrs),
    ]
    texts = []
    for url in urls:
        answer = anonymous.get(url)
        assert answer.status_code == 200, (url, answer.text)
        texts.append(answer.text)
    notified = receiver.next()
    texts.append(str(notified.body))
    for text in texts:
        for predicate in ns.INTERNAL_PREDICATES:
            assert predicate not in text
        assert "urbis.city/ns#" not in text
    for predicate in ns.INTERNAL_PREDICATES:
        hidden = anonymous.get(f"/ngsi-ld/v1/attributes/{quote(predicate, safe='')}")
        assert hidden.status_code == 404
        # Nor can a client create an attribute of that name to confuse the bookkeeping.
        body = {"id": "urn:ngsi-ld:Bin:x", "type": "Bin", predicate: 1}
        refused = client.post(ENTITIES, json=body)
        assert refused.status_code == 400 and "reserved" in refused.json()["detail"]
    assert client.get(ENTITIES + "/urn:ngsi-ld:Bin:x").status_code == 404


# -- (k) the admin token is a secret --------------------------------------------------------------


def test_admin_token_is_a_secret_in_settings_and_state(client: TestClient) -> None:
    settings = Settings(admin_token="s3cr3t-token", demo=False)
    assert isinstance(settings.admin_token, SecretStr)
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert "s3cr3t-token" not in text
    state = client.app.state.urbis  # type: ignore[attr-defined]
    assert isinstance(state.admin_token, SecretStr)
    assert TOKEN not in repr(state) and TOKEN not in repr(state.settings)


def test_admin_token_is_never_logged_or_echoed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    app = create_app(Settings(admin_token=TOKEN, demo=False))
    with TestClient(app) as c:
        answers = [
            c.post(ENTITIES, json={}, headers={"Authorization": "Bearer wrong-token"}),
            c.post(ENTITIES, json={}, headers={"Authorization": b"Bearer \xe9" + TOKEN.encode()}),
            c.post(ENTITIES, json={}),
            c.post(ENTITIES, json={"id": 1}, headers={"Authorization": f"Bearer {TOKEN}"}),
            c.get("/sources", headers={"Authorization": "Bearer wrong-token"}),
        ]
    assert [a.status_code for a in answers] == [401, 400, 401, 400, 401]
    for answer in answers:
        assert TOKEN not in answer.text and "wrong-token" not in answer.text
    assert TOKEN not in caplog.text and "wrong-token" not in caplog.text
    # A malformed configured token stops the start, without showing it.
    with pytest.raises(ValueError) as refused:
        create_app(Settings(admin_token="two words", demo=False))
    assert "two words" not in str(refused.value)


def test_a_generated_token_is_logged_once_at_start_up(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    env = {"URBIS_ADMIN_TOKEN": "", "URBIS_OPEN": "false"}
    with running_server("--memory", env=env, log=log) as base:
        started = log.read_text()
        token = started.split("generated token: ", 1)[1].split()[0]
        assert len(token) >= 24
        headers = {"Authorization": f"Bearer {token}x"}
        assert httpx.post(base + ENTITIES, json={}, headers=headers).status_code == 401
        ok = httpx.post(
            base + ENTITIES,
            json={"id": "urn:ngsi-ld:P:1", "type": "P"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert ok.status_code == 201, ok.text
        assert httpx.get(base + "/health").status_code == 200
    assert log.read_text().count(token) == 1


# -- (l) no userinfo of a notification endpoint in the log --------------------------------------


@pytest.fixture
def failing_endpoint() -> Iterator[int]:
    """A loopback endpoint that answers every notification with a 500."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(500)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_failed_notification_logs_no_userinfo(
    failing_endpoint: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # --open: the outbound guard allows loopback for conformance runs.
    app = create_app(Settings(admin_token=TOKEN, demo=False, open=True))
    endpoints = [
        f"http://user:secret-pw@127.0.0.1:{failing_endpoint}/x?apikey=secret-key",  # a 500
        f"http://user:secret-pw@127.0.0.1:{free_port()}/x?apikey=secret-key",  # refused
    ]
    with TestClient(app) as c:
        for n, uri in enumerate(endpoints):
            sub = {
                "type": "Subscription",
                "entities": [{"type": f"T{n}"}],
                "notification": {"endpoint": {"uri": uri}},
            }
            assert c.post(SUBS, json=sub).status_code == 201
            assert c.post(ENTITIES, json={"id": f"urn:x:{n}", "type": f"T{n}"}).status_code == 201
            assert app.state.urbis.notifier.wait_idle(10)
        failures = [r for r in caplog.records if "notification to" in r.getMessage()]
        assert len(failures) == 2, caplog.text
        assert "answered 500" in failures[0].getMessage()
    for record in caplog.records:
        text = record.getMessage() + str(record.exc_text or "")
        assert "secret" not in text and "user:" not in text, text
    assert f"127.0.0.1:{failing_endpoint}/x" in caplog.text  # still says where


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://u:p@h:1/a?k=v#f", "http://h:1/a?..."),
        ("https://h/a", "https://h/a"),
        ("http://token@[::1]:8/x", "http://[::1]:8/x"),
        ("http://[bad", "(unparseable URL)"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert redact_in(f"error at {url}: boom", url) == f"error at {shown}: boom"
