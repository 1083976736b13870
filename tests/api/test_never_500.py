"""Fuzzing the query string and bodies: a client's mistake is a 4xx problem, never a 500."""

from __future__ import annotations

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.api.test_batch_and_query import city

noise = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
tricky = st.sampled_from(
    [
        "(?=a)",
        "[",
        "\\",
        '"',
        "}",
        ">",
        "a..b",
        "1,,2",
        "((",
        ";|",
        "urn:x",
        "%00",
        "\x00",
        "*" * 50,
    ]
)
values = noise | tricky
params = st.dictionaries(
    st.sampled_from(
        [
            "type",
            "q",
            "idPattern",
            "id",
            "attrs",
            "pick",
            "omit",
            "georel",
            "geometry",
            "coordinates",
            "geoproperty",
            "scopeQ",
            "limit",
            "offset",
            "count",
            "options",
            "format",
            "lang",
        ]
    ),
    values,
    min_size=1,
    max_size=5,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(query=params)
def test_query_parameters_never_crash(client: TestClient, query: dict[str, str]) -> None:
    if not client.get("/ngsi-ld/v1/types").json()["typeList"]:
        city(client, 5)
    response = client.get("/ngsi-ld/v1/entities", params={"type": "WasteContainer", **query})
    assert response.status_code < 500, (query, response.text)
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/problem+json")


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_infinity=False, allow_nan=False)
    | noise,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            noise | st.sampled_from(["type", "value", "object", "id", "@context"]),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=json_values,
    path=st.sampled_from(
        [
            "/ngsi-ld/v1/entities",
            "/ngsi-ld/v1/entityOperations/upsert",
            "/ngsi-ld/v1/entityOperations/query",
            "/ngsi-ld/v1/entities/urn:ngsi-ld:WasteContainer:1/attrs",
            "/ngsi-ld/v1/jsonldContexts",
        ]
    ),
)
def test_bodies_never_crash(client: TestClient, body: object, path: str) -> None:
    response = client.post(path, json=body)
    assert response.status_code < 500, (body, response.text)


def test_a_list_as_attribute_type_is_a_precise_400(client: TestClient) -> None:
    """Found by the fuzzer above: an unhashable 'type' once raised a TypeError (500)."""
    body = {"id": "urn:ngsi-ld:T:list-type", "type": "T", "p": {"type": ["Property"], "value": 1}}
    response = client.post("/ngsi-ld/v1/entities", json=body)
    assert response.status_code == 400
    assert "'type' must be a string" in response.json()["detail"]
