"""Researchers' clients against a real `urbis serve --demo`: SPARQLWrapper, rdflib's SPARQLStore,
and a plain HTTP client meeting the time and row limits over a real connection."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from rdflib import Graph, URIRef
from rdflib.plugins.stores.sparqlstore import SPARQLStore
from SPARQLWrapper import JSON, TURTLE, XML, SPARQLWrapper
from SPARQLWrapper.SPARQLExceptions import QueryBadFormed

from urbis.testing.server import running_server

SDM = "https://smartdatamodels.org/dataModel."
PREFIXES = f"""
PREFIX rdf: <http://www.w3.org/1999/02/22-rdf-syntax-ns#>
PREFIX waste: <{SDM}WasteManagement/>
PREFIX light: <{SDM}Streetlighting/>
PREFIX geo: <http://www.opengis.net/ont/geosparql#>
"""


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("sparql-server") / "server.log"
    env = {
        "URBIS_ADMIN_TOKEN": "client-token",
        "URBIS_DEMO_LIVE_SECONDS": "0",
        "URBIS_SPARQL_TIMEOUT": "2",
        "URBIS_SPARQL_MAX_ROWS": "5000",
    }
    with running_server("--demo", env=env, log=log) as base:
        yield base + "/sparql"


def test_sparqlwrapper_select_ask_construct(endpoint: str) -> None:
    client = SPARQLWrapper(endpoint)
    client.setReturnFormat(JSON)
    client.setQuery(
        PREFIXES
        + "SELECT (COUNT(?bin) AS ?n) WHERE { ?bin a waste:WasteContainer ; geo:hasGeometry ?g }"
    )
    rows = client.queryAndConvert()["results"]["bindings"]  # type: ignore[index]
    assert int(rows[0]["n"]["value"]) == 150  # every bin of the demo city has a location

    client.setQuery(PREFIXES + "ASK { ?l a light:Streetlight }")
    assert client.queryAndConvert()["boolean"] is True  # type: ignore[index]

    client.setReturnFormat(XML)
    client.setMethod("POST")
    client.setQuery(PREFIXES + "SELECT ?l WHERE { ?l a light:Streetlight } LIMIT 7")
    document = client.queryAndConvert()
    assert len(document.getElementsByTagName("result")) == 7  # type: ignore[union-attr]

    client.setReturnFormat(TURTLE)
    client.setQuery(
        PREFIXES + "CONSTRUCT { ?b a waste:WasteContainer } WHERE { ?b a waste:WasteContainer }"
    )
    graph = Graph().parse(data=client.queryAndConvert(), format="turtle")  # type: ignore[arg-type]
    assert len(graph) == 150


def test_sparqlwrapper_sees_the_parsers_message(endpoint: str) -> None:
    client = SPARQLWrapper(endpoint)
    client.setQuery("SELECT ?x WHERE { ?x ?y }")
    with pytest.raises(QueryBadFormed) as error:
        client.query()
    assert "error at 1:" in str(error.value)


def test_rdflib_sparqlstore_answers_real_questions(endpoint: str) -> None:
    graph = Graph(store=SPARQLStore(endpoint, returnFormat="json"))
    # Street lights by status: a join and an aggregate no NGSI-LD query expresses.
    rows = list(
        graph.query(
            PREFIXES
            + "SELECT ?type (COUNT(?e) AS ?n) WHERE { ?e a ?type "
            + f"FILTER(STRSTARTS(STR(?type), '{SDM}')) }} GROUP BY ?type ORDER BY DESC(?n)"
        )
    )
    counts = {str(row[0]): int(row[1]) for row in rows}  # type: ignore[index]
    assert counts[SDM + "WasteManagement/WasteContainer"] == 150
    assert counts[SDM + "Streetlighting/Streetlight"] == 150
    assert list(counts.values()) == sorted(counts.values(), reverse=True)
    lights = URIRef(SDM + "Streetlighting/Streetlight")
    rdf_type = URIRef("http://www.w3.org/1999/02/22-rdf-syntax-ns#type")
    assert len(list(graph.triples((None, rdf_type, lights)))) == 150


def test_limits_over_a_real_connection(endpoint: str) -> None:
    # The time limit: a problem body near the limit, and the server answers the next query.
    slow = httpx.get(
        endpoint,
        params={"query": "SELECT (COUNT(*) AS ?n) WHERE { ?a ?b ?c . ?d ?e ?f . ?g ?h ?i }"},
        timeout=30,
    )
    assert slow.status_code == 503
    assert slow.json()["type"] == "https://urbis.city/ns/errors/QueryTimeout"
    # The row limit after streaming began: the connection closes before the final chunk.
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(
            endpoint,
            params={"query": "SELECT * WHERE { ?s ?p ?o } LIMIT 6000"},
            headers={"Accept": "application/sparql-results+xml"},
            timeout=30,
        )
    fine = httpx.get(endpoint, params={"query": "ASK { ?s ?p ?o }"}, timeout=30)
    assert fine.json()["boolean"] is True


def test_service_description_for_query_editors(endpoint: str) -> None:
    response = httpx.get(endpoint, headers={"Origin": "https://yasgui.example"}, timeout=30)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    assert "sd:Service" in response.text and f"<{endpoint}>" in response.text
