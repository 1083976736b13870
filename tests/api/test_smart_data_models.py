"""Round trip of the Smart Data Models normalized examples through the API.

The examples' @context URLs point at GitHub; the resolver gets a transport that answers them
from ../shared/reference, so nothing leaves the machine. Two examples are malformed on purpose
(see the reference README) and must be refused with a precise 400, leaving nothing stored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient

from tests.conftest import REFERENCE, shared_or_skip
from urbis.twin.context import ContextResolver

SDM = REFERENCE / "smart-data-models"
MALFORMED = {"FloodMonitoring", "WaterObserved"}
RAW = "https://raw.githubusercontent.com/smart-data-models/dataModel."


def examples() -> list[Path]:
    return sorted(SDM.glob("*/*/example-normalized.jsonld")) if SDM.exists() else []


def local_contexts(request: httpx.Request) -> httpx.Response:
    url = str(request.url)
    if url.startswith(RAW) and url.endswith("/master/context.jsonld"):
        domain = url[len(RAW) :].split("/", 1)[0]
        path = SDM / domain / "context.jsonld"
        if path.exists():
            return httpx.Response(
                200, content=path.read_bytes(), headers={"Content-Type": "application/ld+json"}
            )
    return httpx.Response(404)


@pytest.fixture
def sdm_client(client: TestClient) -> TestClient:
    shared_or_skip(SDM)
    state = client.app.state.urbis  # type: ignore[attr-defined]
    state.resolver = ContextResolver(
        registry=state.registry, transport=httpx.MockTransport(local_contexts)
    )
    return client


def _domain_context(body: dict[str, Any]) -> str:
    ctx = body["@context"]
    urls = ctx if isinstance(ctx, list) else [ctx]
    return next(u for u in urls if u.startswith(RAW))


@pytest.mark.parametrize("path", examples(), ids=lambda p: p.parent.name)
def test_example_round_trips_or_is_refused(sdm_client: TestClient, path: Path) -> None:
    body = orjson.loads(path.read_bytes())
    created = sdm_client.post(
        "/ngsi-ld/v1/entities",
        content=path.read_bytes(),
        headers={"Content-Type": "application/ld+json"},
    )
    url = "/ngsi-ld/v1/entities/" + body["id"]
    if path.parent.name in MALFORMED:
        assert created.status_code == 400, created.text
        assert created.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/BadRequestData"
        assert created.json()["detail"]
        assert sdm_client.get(url).status_code in (400, 404)
        return
    assert created.status_code == 201, created.text
    link = f'<{_domain_context(body)}>; rel="http://www.w3.org/ns/json-ld#context"'
    got = sdm_client.get(url, headers={"Link": link})
    assert got.status_code == 200, got.text
    expected = {k: v for k, v in body.items() if k != "@context"}
    assert got.json() == expected
