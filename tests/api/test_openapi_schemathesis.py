"""Schemathesis over /openapi.json, in-process: as the admin and anonymously, every operation
answers without a 5xx, with a documented status code and media type, in the documented schema.

Bounded for CI: a fixed seed, a few examples per operation, no stateful phase; the whole file
takes a few minutes on two cores. The app is seeded first so that GET paths hit real data (the
descriptions' examples name the seeded entity).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import TOKEN
from urbis.api.app import create_app
from urbis.api.openapi import EXAMPLE_ID, EXAMPLE_TENANT
from urbis.api.settings import Settings

pytestmark = pytest.mark.slow
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
MAX_EXAMPLES = 25  # per operation and caller: 51 operations x 2 callers stay within minutes
DEADLINE = 240.0  # seconds for the whole file: past it, the remaining operations are skipped
CORE_LINK = (
    "<https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld>; "
    'rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"'
)


SEED = [
    {
        "id": EXAMPLE_ID,
        "type": "Streetlight",
        "status": {"type": "Property", "value": "on"},
        "location": {
            "type": "GeoProperty",
            "value": {"type": "Point", "coordinates": [2.35, 48.85]},
        },
    },
    {"id": "urn:ngsi-ld:Streetlight:openapi-2", "type": "Streetlight", "status": "off"},
]


SETTINGS = Settings(
    admin_token=TOKEN,
    allow_remote_contexts=False,  # no fetch leaves the machine
    outbound_allow=["127.0.0.1:9"],  # the examples' endpoint (discard port): accepted, unused
    federation_timeout=1.0,
    notification_timeout=1.0,
    sources_scheduler=False,
    sparql_timeout=5.0,
)
URBIS = create_app(SETTINGS)
ADMIN = TestClient(URBIS, headers={"Authorization": f"Bearer {TOKEN}"})  # no `with`: no lifespan


async def APP(scope: Any, receive: Any, send: Any) -> None:
    """The app without its lifespan: schemathesis ends the lifespan after each operation, and
    the shutdown closes the twin. No lifespan also means no notifier: nothing is sent out."""
    if scope["type"] != "lifespan":
        return await URBIS(scope, receive, send)
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


@pytest.fixture(scope="module", autouse=True)
def _loopback_only() -> Iterator[None]:
    """Fuzzed subscriptions, registrations and sources name hosts: no name or address other
    than loopback resolves, so that no fetch they provoke leaves this machine."""
    real = socket.getaddrinfo

    def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in ("localhost", "127.0.0.1", "::1"):
            raise socket.gaierror(socket.EAI_NONAME, "not resolved in this test")
        return real(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", resolve)
        yield


@pytest.fixture(scope="module")
def started() -> float:
    return time.monotonic()


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Before each operation: the previous ones may have deleted or changed the seed."""
    for tenant in ("", EXAMPLE_TENANT):  # the default tenant and the examples' one
        response = ADMIN.post(
            "/ngsi-ld/v1/entityOperations/upsert", json=SEED, headers={"NGSILD-Tenant": tenant}
        )
        assert response.status_code in (201, 204), response.text


@schemathesis.serializer("application/sparql-query", "application/sparql-update")
def _sparql_text(ctx: Any, value: Any) -> bytes:
    return str(value).encode()


def _schema(*, admin: bool) -> Any:
    config: dict[str, Any] = {
        "seed": 8,
        "generation": {"max-examples": MAX_EXAMPLES},
        "phases": {"stateful": {"enabled": False}},
        "request-timeout": 30,
        # Most generated requests name the seeded tenant and entities; the rest stay random.
        "dictionaries": {
            "tenants": {"values": [EXAMPLE_TENANT]},
            "ids": {"values": [e["id"] for e in SEED]},
            "types": {"values": ["Streetlight"]},
            "links": {"values": [CORE_LINK]},
        },
        "parameters": {
            "header.NGSILD-Tenant": {"dictionary": "tenants", "probability": 0.7},
            "path.entity_id": {"dictionary": "ids", "probability": 0.7},
            "query.type": {"dictionary": "types", "probability": 0.5},
            "header.Link": {"dictionary": "links", "probability": 0.5},
        },
    }
    if admin:
        config["auth"] = {"openapi": {"bearerAuth": {"bearer": TOKEN}}}
    return schemathesis.openapi.from_asgi(
        "/openapi.json", APP, config=schemathesis.Config.from_dict(config)
    )


admin_schema = _schema(admin=True)
anonymous_schema = _schema(admin=False)


def _run(case: Any, started: float) -> None:
    if time.monotonic() - started > DEADLINE:
        pytest.skip(f"the {DEADLINE:.0f} s budget of this file is spent")
    case.call_and_validate(checks=CHECKS)


@admin_schema.parametrize()
def test_as_the_admin(case: Any, started: float) -> None:
    _run(case, started)


@anonymous_schema.parametrize()
def test_anonymously(case: Any, started: float) -> None:
    _run(case, started)
