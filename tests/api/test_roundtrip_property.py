"""Property-based: any valid normalized entity comes back exactly as it was written."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

names = st.from_regex(r"[a-z][a-zA-Z0-9_]{0,12}", fullmatch=True).filter(
    lambda n: (
        n not in {"id", "type", "scope", "createdAt", "modifiedAt", "location", "value", "object"}
    )
)
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
numbers = st.integers(-(10**9), 10**9) | st.floats(allow_nan=False, allow_infinity=False, width=64)
primitives = numbers | texts | st.booleans()
json_values = st.recursive(
    primitives,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3),
    max_leaves=6,
)
uris = st.from_regex(r"urn:ngsi-ld:[A-Z][a-z]{1,8}:[a-z0-9]{1,8}", fullmatch=True)
instants = st.datetimes(min_value=datetime(1900, 1, 1), timezones=st.just(UTC)).map(
    lambda d: d.strftime("%Y-%m-%dT%H:%M:%SZ")
)
lon = st.floats(-180, 180, allow_nan=False)
lat = st.floats(-90, 90, allow_nan=False)


def metadata(base: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    extra = st.fixed_dictionaries(
        {}, optional={"observedAt": instants, "unitCode": st.sampled_from(["CEL", "P1", "MTR"])}
    )
    return extra.map(lambda m: {**base, **m})


properties = json_values.filter(
    lambda v: not isinstance(v, dict) or not ({"type", "value", "object"} & set(v))
).flatmap(lambda v: metadata({"type": "Property", "value": v}))
relationships = uris.flatmap(lambda u: metadata({"type": "Relationship", "object": u}))
geo = st.tuples(lon, lat).map(
    lambda p: {"type": "GeoProperty", "value": {"type": "Point", "coordinates": list(p)}}
)
languages = st.dictionaries(
    st.sampled_from(["fr", "en", "oc", "de"]), texts, min_size=1, max_size=3
).map(lambda m: {"type": "LanguageProperty", "languageMap": m})
lists = st.lists(primitives, max_size=4).map(lambda v: {"type": "ListProperty", "valueList": v})
jsons = json_values.map(lambda v: {"type": "JsonProperty", "json": v})
attribute = properties | relationships | geo | languages | lists | jsons
with_sub = st.tuples(attribute, st.dictionaries(names, properties | relationships, max_size=2)).map(
    lambda t: {**t[0], **{f"sub{k}": v for k, v in t[1].items()}}
)
entities = st.fixed_dictionaries(
    {
        "id": uris,
        "type": st.sampled_from(["WasteContainer", "Streetlight", "Sensor"]),
    },
).flatmap(
    lambda e: st.dictionaries(names, attribute | with_sub, max_size=6).map(lambda a: {**e, **a})
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(entity=entities)
def test_any_entity_round_trips(client: TestClient, entity: dict[str, Any]) -> None:
    client.delete("/ngsi-ld/v1/entities/" + entity["id"])
    created = client.post("/ngsi-ld/v1/entities", json=entity)
    assert created.status_code == 201, created.text
    got = client.get("/ngsi-ld/v1/entities/" + entity["id"])
    assert got.status_code == 200
    assert got.json() == entity
