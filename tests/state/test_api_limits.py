"""What the state store cannot keep is the client's error (a problem, never a 500), and a
refused change leaves nothing behind, in the store or in the copy the API serves from."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.conftest import TOKEN
from urbis.api.app import create_app
from urbis.api.settings import Settings
from urbis.twin.state import MAX_DOCUMENT_BYTES, MAX_KEY_CHARS, open_state_store

NGSI = "/ngsi-ld/v1"
LONG = "x" * MAX_KEY_CHARS


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        data_dir=tmp_path,
        admin_token=TOKEN,
        demo=False,
        outbound_allow=["127.0.0.1"],
        max_body_bytes=MAX_DOCUMENT_BYTES * 2,  # a deployer raised the limits above the store's
        max_context_bytes=MAX_DOCUMENT_BYTES * 2,
    )
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        yield c


def problem(answer: httpx.Response, status: int, words: str) -> None:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert words in answer.json()["detail"]


def test_an_id_too_long_to_keep_is_a_400_and_nothing_is_kept(
    client: TestClient, tmp_path: Path
) -> None:
    subscription = {
        "id": f"urn:ngsi-ld:Subscription:{LONG}",
        "type": "Subscription",
        "entities": [{"type": "Sensor"}],
        "notification": {"endpoint": {"uri": "http://127.0.0.1:9/notify"}},
    }
    answer = client.post(f"{NGSI}/subscriptions", json=subscription)
    problem(answer, 400, f"at most {MAX_KEY_CHARS} characters")
    assert client.get(f"{NGSI}/subscriptions").json() == []
    registration = {
        "id": f"urn:ngsi-ld:ContextSourceRegistration:{LONG}",
        "type": "ContextSourceRegistration",
        "information": [{"entities": [{"type": "Bin"}]}],
        "endpoint": "http://127.0.0.1:9",
    }
    problem(client.post(f"{NGSI}/csourceRegistrations", json=registration), 400, "characters")
    assert client.get(f"{NGSI}/csourceRegistrations").json() == []
    store = open_state_store(tmp_path)
    assert store.list("subscriptions", "") == [] and store.list("registrations", "") == []


def test_a_document_too_large_to_keep_is_a_413_and_nothing_is_kept(
    client: TestClient, tmp_path: Path
) -> None:
    before = client.get(f"{NGSI}/jsonldContexts").json()
    huge = {"@context": {"term": "https://example.org/" + "y" * MAX_DOCUMENT_BYTES}}
    problem(client.post(f"{NGSI}/jsonldContexts", json=huge), 413, f"{MAX_DOCUMENT_BYTES:,}")
    assert client.get(f"{NGSI}/jsonldContexts").json() == before
    assert open_state_store(tmp_path).list("contexts", "") == []
