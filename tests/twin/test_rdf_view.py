"""The researchers' view: plain typed triples that SPARQL can join, filter and aggregate."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.api.test_entities import bin_entity


def select(client: TestClient, query: str) -> list[dict[str, Any]]:
    store = client.app.state.urbis.twin.tenant("").store.store  # type: ignore[attr-defined]
    result = store.query(query, use_default_graph_as_union=True)
    names = [v.value for v in result.variables]
    return [{n: row[n] for n in names} for row in result]


PREFIXES = """
PREFIX xsd: <http://www.w3.org/2001/XMLSchema#>
PREFIX geo: <http://www.opengis.net/ont/geosparql#>
PREFIX dc: <https://uri.etsi.org/ngsi-ld/default-context/>
"""


def test_values_are_typed_and_geometries_are_wkt(client: TestClient) -> None:
    entity = bin_entity(1, fill=0.85)
    entity["emptiedAt"] = {
        "type": "Property",
        "value": {"@type": "DateTime", "@value": "2026-11-20T08:00:00Z"},
    }
    entity["capacity"] = {"type": "Property", "value": 1100}
    client.post("/ngsi-ld/v1/entities", json=entity)
    rows = select(
        client,
        PREFIXES
        + """
        SELECT ?fill ?cap ?when ?device ?wkt ?g WHERE {
          GRAPH ?g { ?e a dc:WasteContainer ; dc:fillingLevel ?fill ; dc:capacity ?cap ;
             dc:emptiedAt ?when ; dc:refDevice ?device ; geo:hasGeometry/geo:asWKT ?wkt }
          FILTER(?fill > 0.8 && ?when < "2026-11-21T00:00:00Z"^^xsd:dateTime)
        }""",
    )
    assert len(rows) == 1
    row = rows[0]
    assert row["fill"].datatype.value.endswith("#double")
    assert row["cap"].datatype.value.endswith("#integer")
    assert row["when"].datatype.value.endswith("#dateTime")
    assert row["device"].value == "urn:ngsi-ld:Device:1"
    assert row["wkt"].value == "<http://www.opengis.net/def/crs/OGC/1.3/CRS84> POINT(3.87 43.61)"
    assert row["g"].value == "urn:urbis:dataset:default"
    names = select(client, PREFIXES + "SELECT ?n WHERE { ?e dc:name ?n FILTER(LANG(?n) = 'fr') }")
    assert [r["n"].value for r in names] == ["Bac"]


def test_update_rewrites_only_the_current_value(client: TestClient) -> None:
    client.post("/ngsi-ld/v1/entities", json=bin_entity(1, fill=0.2))
    client.patch(
        "/ngsi-ld/v1/entities/urn:ngsi-ld:WasteContainer:1/attrs/fillingLevel", json={"value": 0.6}
    )
    rows = select(client, PREFIXES + "SELECT ?fill WHERE { ?e dc:fillingLevel ?fill }")
    assert [float(r["fill"].value) for r in rows] == [0.6]
    client.delete("/ngsi-ld/v1/entities/urn:ngsi-ld:WasteContainer:1")
    assert select(client, "SELECT ?s ?p ?o WHERE { GRAPH ?g { ?s ?p ?o } }") == []
