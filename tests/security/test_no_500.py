"""Issue 8, item 5: the anonymous 500s, each now a precise 400 problem, with nothing half-written.

Every test is the issue's reproducer (anonymous where the issue says so), then checks what must
NOT happen: a 500, an unexpected-error log, an entity or attribute written by a refused request.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from tests.conftest import TOKEN
from urbis.api.app import create_app
from urbis.api.settings import Settings
from urbis.testing.server import running_server
from urbis.twin.entities import EntityService

ETSI = "https://uri.etsi.org/ngsi-ld/errors/"
PROBLEM = "application/problem+json"
ENTITIES = "/ngsi-ld/v1/entities"
OPS = "/ngsi-ld/v1/entityOperations"
CORE = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"
BAD_NAMES = ["a{b", "a}b", "a|b", "a^b", "a\x00b", "@id"]
POINT = {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [3.87, 43.61]}}


def problem(response: Any, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["type"] == ETSI + kind, body
    return body


def absent(client: TestClient, entity_id: str) -> None:
    assert client.get(f"{ENTITIES}/{entity_id}").status_code == 404, "a refused write left data"


def all_routes(app: FastAPI) -> Iterator[APIRoute]:
    """Every API route, through included routers (FastAPI nests them)."""
    stack: list[Any] = list(app.routes)
    while stack:
        route = stack.pop()
        inner = getattr(route, "original_router", None)
        if inner is not None:
            stack.extend(inner.routes)
        elif isinstance(route, APIRoute):
            yield route


def concrete(path: str) -> str:
    samples = {"entity_id": "urn:ngsi-ld:P:1", "attr": "a", "source_id": "s", "name": "default"}
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: samples.get(m.group(1), "urn:x:1"), path)


# -- (a) a non-ASCII bearer token ------------------------------------------------------------


def test_non_ascii_bearer_token_is_a_400_on_every_route(client: TestClient) -> None:
    assert client.post(ENTITIES, json={"id": "urn:ngsi-ld:P:1", "type": "P", "a": 1}).status_code
    stranger = TestClient(client.app, raise_server_exceptions=False)
    bad = {"Authorization": b"Bearer \xe9"}  # sent as the raw byte, like curl $'\xe9'
    tried = 0
    for route in all_routes(client.app):  # type: ignore[arg-type]
        for method in sorted((route.methods or set()) - {"HEAD"}):
            url = concrete(route.path)
            kwargs: dict[str, Any] = {"headers": bad}
            if method not in ("GET", "DELETE"):
                kwargs["json"] = {}
            answer = stranger.request(method, url, **kwargs)
            tried += 1
            assert answer.status_code < 500, (method, url, answer.text)
            if answer.status_code == 400:
                assert "\xe9" not in answer.text  # the token is never echoed
    assert tried > 40
    # Reads too, and writes: the malformed token is a 400 before anything else.
    for method, url in (("GET", ENTITIES + "?type=P"), ("POST", ENTITIES)):
        answer = stranger.request(method, url, headers=bad, json={"id": "urn:ngsi-ld:P:2"})
        assert "ASCII" in problem(answer, 400, "BadRequestData")["detail"]
    absent(client, "urn:ngsi-ld:P:2")
    # A well-formed wrong token is still a 401 for writes, the right one still works.
    wrong = stranger.post(ENTITIES, headers={"Authorization": "Bearer nope"}, json={})
    problem(wrong, 401, "Unauthorized")
    assert client.get(ENTITIES + "/urn:ngsi-ld:P:1").status_code == 200


# -- (b) offset and limit ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("offset", "100000000000000000000"),
        ("offset", "1000001"),  # above max_offset
        ("offset", "-1"),
        ("offset", "1_0"),
        ("offset", "\u0661"),  # an Arabic-Indic digit, which int() takes
        ("limit", "100000000000000000000"),
        ("limit", "-5"),
        ("limit", "ten"),
    ],
)
def test_absurd_offset_or_limit_is_a_400_and_never_reaches_the_store(
    anonymous: TestClient, monkeypatch: pytest.MonkeyPatch, key: str, value: str
) -> None:
    asked: list[object] = []
    monkeypatch.setattr(EntityService, "query", lambda self, q: asked.append(q))
    answer = anonymous.get(ENTITIES, params={"type": "P", key: value})
    problem(answer, 400, "BadRequestData")
    body = {"type": "Query", "entities": [{"type": "P"}]}
    answer = anonymous.post(f"{OPS}/query", params={key: value}, json=body)
    problem(answer, 400, "BadRequestData")
    assert asked == [], "the store was asked for the query"


def test_offset_cap_is_a_setting_and_pages_below_it_work(anonymous: TestClient) -> None:
    settings = anonymous.app.state.urbis.settings  # type: ignore[attr-defined]
    ok = anonymous.get(ENTITIES, params={"type": "P", "offset": str(settings.max_offset)})
    assert ok.status_code == 200 and ok.json() == []
    over = anonymous.get(ENTITIES, params={"type": "P", "offset": str(settings.max_offset + 1)})
    assert str(settings.max_offset) in problem(over, 400, "BadRequestData")["detail"]


# -- (c) names that are no IRI, and batches -----------------------------------------------------


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_attribute_or_type_name_is_a_400_and_nothing_is_written(
    client: TestClient, name: str
) -> None:
    eid = "urn:ngsi-ld:P:bad-name"
    for body in (
        {"id": eid, "type": "P", name: 1},
        {"id": eid, "type": name},
        {"id": eid, "type": "P", "a": {"type": "Property", "value": 1, name: {"value": 2}}},
        {"id": eid, "type": "P", "r": {"object": "urn:x:1", "objectType": name}},
    ):
        problem(client.post(ENTITIES, json=body), 400, "BadRequestData")
        absent(client, eid)
    assert client.post(ENTITIES, json={"id": eid, "type": "P", "a": 1}).status_code == 201
    for method, url in (("POST", f"{ENTITIES}/{eid}/attrs"), ("PATCH", f"{ENTITIES}/{eid}")):
        problem(client.request(method, url, json={name: 1}), 400, "BadRequestData")
    assert set(client.get(f"{ENTITIES}/{eid}").json()) == {"id", "type", "a"}


@pytest.mark.parametrize("operation", ["create", "upsert", "update", "merge"])
def test_a_batch_with_bad_names_is_a_207_with_the_good_entities_written(
    client: TestClient, operation: str
) -> None:
    good, bad_attr, bad_type = (f"urn:ngsi-ld:P:{n}" for n in ("good", "attr", "type"))
    if operation in ("update", "merge"):  # these need existing entities
        seed = [{"id": i, "type": "P", "a": 1} for i in (good, bad_attr, bad_type)]
        assert client.post(f"{OPS}/upsert", json=seed).status_code == 201
    items = [
        {"id": good, "type": "P", "a": 2},
        {"id": bad_attr, "type": "P", "a|b": 2, "a": 3},
        {"id": bad_type, "type": "@id", "a": 3},
    ]
    answer = client.post(f"{OPS}/{operation}", json=items)
    assert answer.status_code == 207, answer.text
    body = answer.json()
    assert body["success"] == [good]
    assert [e["entityId"] for e in body["errors"]] == [bad_attr, bad_type]
    assert all(e["error"]["type"] == ETSI + "BadRequestData" for e in body["errors"])
    assert client.get(f"{ENTITIES}/{good}").json()["a"]["value"] == 2
    for refused in (bad_attr, bad_type):
        if operation in ("create", "upsert"):
            absent(client, refused)
        else:
            assert client.get(f"{ENTITIES}/{refused}").json()["a"]["value"] == 1


def test_a_batch_where_every_entity_is_bad_writes_nothing(client: TestClient) -> None:
    items = [{"id": f"urn:ngsi-ld:P:{i}", "type": "P", name: 1} for i, name in enumerate(BAD_NAMES)]
    answer = client.post(f"{OPS}/upsert", json=items)
    assert answer.status_code == 207, answer.text
    assert answer.json()["success"] == [] and len(answer.json()["errors"]) == len(BAD_NAMES)
    for i in range(len(BAD_NAMES)):
        absent(client, f"urn:ngsi-ld:P:{i}")


# -- (d) a vocab that is no IRI, (e) @context keyword aliases, (f) bad entity types ------------


def test_vocab_property_whose_vocab_is_not_an_iri_is_a_400(client: TestClient) -> None:
    eid = "urn:ngsi-ld:P:vocab"
    for vocab in ("a b", ["ok", "a b"], "a{b}"):
        body = {"id": eid, "type": "P", "category": {"type": "VocabProperty", "vocab": vocab}}
        assert "vocab" in problem(client.post(ENTITIES, json=body), 400, "BadRequestData")["detail"]
        absent(client, eid)
    fine = {"id": eid, "type": "P", "category": {"type": "VocabProperty", "vocab": "ok"}}
    assert client.post(ENTITIES, json=fine).status_code == 201


@pytest.mark.parametrize("tag", ["a", "en-x", "en-a-b", "a-b-c-d"])
def test_language_tag_the_store_refuses_is_a_400(client: TestClient, tag: str) -> None:
    """Found while looking at every value turned into RDF: these passed the regex, then 500."""
    eid = "urn:ngsi-ld:P:lang"
    body = {"id": eid, "type": "P", "name": {"type": "LanguageProperty", "languageMap": {tag: "x"}}}
    assert tag in problem(client.post(ENTITIES, json=body), 400, "BadRequestData")["detail"]
    absent(client, eid)


@pytest.mark.parametrize(
    "context",
    [
        {"x": "@id"},
        {"x": "@type"},
        {"x": {"@id": "@id"}},
        {"x": "_:blank"},
        {"T": "@id"},  # the entity type aliased to a keyword
    ],
)
def test_context_term_aliased_to_a_keyword_is_a_400(client: TestClient, context: Any) -> None:
    eid = "urn:ngsi-ld:P:alias"
    body = {"id": eid, "type": "T", "x": 1, "@context": [context, CORE]}
    answer = client.post(ENTITIES, json=body, headers={"Content-Type": "application/ld+json"})
    problem(answer, 400, "BadRequestData")
    absent(client, eid)
    batch = client.post(
        f"{OPS}/upsert", json=[body], headers={"Content-Type": "application/ld+json"}
    )
    assert batch.status_code == 207 and batch.json()["success"] == [], batch.text
    absent(client, eid)


@pytest.mark.parametrize("entity_type", ["T{1}", "a|b", "x^y", "@type", "@id", "a`b", "a\\b"])
def test_entity_type_that_is_not_a_valid_name_is_a_400(
    anonymous: TestClient, client: TestClient, entity_type: str
) -> None:
    eid = "urn:ngsi-ld:P:type"
    body = {"id": eid, "type": entity_type}
    problem(client.post(ENTITIES, json=body), 400, "BadRequestData")
    absent(client, eid)
    # Anonymous: a 401 (writes need the token), never a 500.
    assert anonymous.post(ENTITIES, json=body).status_code == 401


# -- (g) urn:ngsi-ld:null deletes a GeoProperty ------------------------------------------------


def near(client: TestClient, attr: str) -> list[str]:
    params = {
        "type": "P",
        "georel": "near;maxDistance==100",
        "geometry": "Point",
        "coordinates": "[3.87,43.61]",
        "geoproperty": attr,
    }
    answer = client.get(ENTITIES, params=params)
    assert answer.status_code == 200, answer.text
    return [e["id"] for e in answer.json()]


@pytest.mark.parametrize(
    ("path", "body", "dataset"),
    [
        ("", {"location": {"type": "GeoProperty", "value": "urn:ngsi-ld:null"}}, None),
        ("", {"location": "urn:ngsi-ld:null"}, None),
        (
            "",
            {
                "location": {
                    "type": "GeoProperty",
                    "value": "urn:ngsi-ld:null",
                    "observedAt": "2024-01-01T00:00:00Z",
                }
            },
            None,
        ),
        (
            "",
            {
                "location": {
                    "type": "GeoProperty",
                    "value": "urn:ngsi-ld:null",
                    "datasetId": "urn:ngsi-ld:Dataset:gps",
                }
            },
            "urn:ngsi-ld:Dataset:gps",
        ),
        ("/attrs/location", {"type": "GeoProperty", "value": "urn:ngsi-ld:null"}, None),
        ("/attrs/location", {"value": "urn:ngsi-ld:null"}, None),
        ("/attrs/location", "urn:ngsi-ld:null", None),
        (
            "/attrs/location",
            {
                "type": "GeoProperty",
                "value": "urn:ngsi-ld:null",
                "datasetId": "urn:ngsi-ld:Dataset:gps",
            },
            "urn:ngsi-ld:Dataset:gps",
        ),
    ],
)
def test_null_deletes_a_geoproperty_instance(
    client: TestClient, path: str, body: Any, dataset: str | None
) -> None:
    eid = "urn:ngsi-ld:P:geo"
    gps = {**POINT, "datasetId": "urn:ngsi-ld:Dataset:gps"}
    instances = [POINT, gps] if dataset else POINT
    created = client.post(ENTITIES, json={"id": eid, "type": "P", "location": instances, "a": 1})
    assert created.status_code == 201, created.text
    assert near(client, "location") == [eid]
    answer = client.patch(f"{ENTITIES}/{eid}{path}", json=body)
    assert answer.status_code == 204, answer.text
    got = client.get(f"{ENTITIES}/{eid}")
    assert got.status_code == 200, got.text
    doc = got.json()
    assert doc["a"]["value"] == 1
    if dataset is None:
        assert "location" not in doc, doc  # gone, not an empty []
        assert near(client, "location") == []
    else:  # only that instance went; the default one is still indexed
        assert doc["location"] == POINT, doc
        assert near(client, "location") == [eid]


# -- (h) a client that hangs up during a refused oversized body ----------------------------------


def asgi_post(app: Any, messages: list[dict[str, Any]], headers: list[tuple[bytes, bytes]]) -> Any:
    """Drives the app over raw ASGI: the client sends `messages`, then is gone."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": ENTITIES,
        "raw_path": ENTITIES.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test"), (b"authorization", f"Bearer {TOKEN}".encode()), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("test", 80),
    }
    asyncio.run(app(scope, receive, send))  # an unexpected error would propagate here
    return [m.get("status") for m in sent if m["type"] == "http.response.start"]


@pytest.fixture
def small_body() -> Iterator[TestClient]:
    app = create_app(Settings(admin_token=TOKEN, demo=False, max_body_bytes=64))
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        yield c


def test_client_disconnect_mid_body_is_no_unexpected_error(
    small_body: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    chunk = {"type": "http.request", "body": b'{"id": "urn:ngsi-ld:P:gone", ', "more_body": True}
    chunked = [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")]
    statuses = asgi_post(small_body.app, [chunk, {"type": "http.disconnect"}], chunked)
    assert 500 not in statuses
    # Declared too big: refused before reading, the client may hang up at once.
    oversized = [(b"content-type", b"application/json"), (b"content-length", b"100000000")]
    assert asgi_post(small_body.app, [{"type": "http.disconnect"}], oversized) == [413]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert "unexpected error" not in caplog.text
    absent(small_body, "urn:ngsi-ld:P:gone")


def test_client_disconnect_on_a_real_server_logs_no_traceback(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    env = {"URBIS_ADMIN_TOKEN": TOKEN, "URBIS_MAX_BODY_BYTES": "1024"}
    with running_server("--memory", env=env, log=log) as base:
        host, port = base.removeprefix("http://").split(":")
        for declared in (b"Transfer-Encoding: chunked", b"Content-Length: 100000000"):
            with socket.create_connection((host, int(port)), timeout=5) as sock:
                sock.sendall(
                    b"POST /ngsi-ld/v1/entities HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Type: application/json\r\n"
                    + f"Authorization: Bearer {TOKEN}\r\n".encode()
                    + declared
                    + b"\r\n\r\n"
                    + (b"200\r\n" + b" " * 512 if b"chunked" in declared else b"[")
                )
            time.sleep(0.3)  # the client is gone; let the server notice
        import httpx

        assert httpx.get(base + "/health", timeout=5).status_code == 200
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert "unexpected error" not in text and "Exception in ASGI application" not in text
