"""The researcher cookbook, asked through SPARQLWrapper of a real `urbis serve --demo`.

tests/ontology/test_cookbook.py checks each answer against plain Python over the demo city;
this checks that a researcher's client gets the same answers over the SPARQL Protocol as the
store gives in-process (timestamps of the demo's own sync runs aside: they differ per start).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pyoxigraph import NamedNode, QuerySolutions
from rdflib import Graph
from SPARQLWrapper import JSON, TURTLE, SPARQLWrapper

from tests.ontology.test_cookbook import COOKBOOK
from urbis.api.app import create_app
from urbis.api.settings import Settings
from urbis.demo.loading import load_demo
from urbis.ontology.shapes import sparql_prefixes
from urbis.testing.server import running_server
from urbis.twin.entities import EntityService
from urbis.twin.geo.geosparql import prepare


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("cookbook-server") / "server.log"
    env = {"URBIS_ADMIN_TOKEN": "cookbook-token", "URBIS_DEMO_LIVE_SECONDS": "0"}
    with running_server("--demo", env=env, log=log) as base:
        yield base + "/sparql"


@pytest.fixture(scope="module")
def local() -> Iterator[EntityService]:
    with TestClient(create_app(Settings(admin_token="t", demo=False))) as client:
        state = client.app.state.urbis  # type: ignore[attr-defined]
        load_demo(state.sources)
        yield state.twin.tenant("")


def _comparable(value: str) -> str:
    """Times of the demo's sync runs differ per start; every other value must be equal."""
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    return "<time>" if re.match(r"\d{4}-\d\d-\d\dT", value) else value


def _direct(service: EntityService, query: str) -> Any:
    """The query in-process, with the GeoSPARQL functions and index rewrite /sparql applies."""
    text, functions = prepare(query, service.index)
    store = service.store.store  # type: ignore[attr-defined]
    custom = {NamedNode(iri): f for iri, f in functions.items()}
    return store.query(text, use_default_graph_as_union=True, custom_functions=custom)


def _rows_local(service: EntityService, query: str) -> list[tuple[str, ...]]:
    result = _direct(service, query)
    assert isinstance(result, QuerySolutions)
    names = [v.value for v in result.variables]
    return sorted(
        tuple(_comparable(row[n].value) if row[n] is not None else "" for n in names)
        for row in result
    )


def _rows_remote(answer: dict[str, Any]) -> list[tuple[str, ...]]:
    names = answer["head"]["vars"]
    return sorted(
        tuple(_comparable(b[n]["value"]) if n in b else "" for n in names)
        for b in answer["results"]["bindings"]
    )


@pytest.mark.parametrize("name", sorted(COOKBOOK))
def test_cookbook_query_over_sparqlwrapper(name: str, endpoint: str, local: EntityService) -> None:
    query = sparql_prefixes() + COOKBOOK[name]
    client = SPARQLWrapper(endpoint)
    client.setQuery(query)
    if re.search(r"^\s*CONSTRUCT", COOKBOOK[name], re.M | re.I):
        client.setReturnFormat(TURTLE)
        remote = Graph().parse(data=client.query().convert(), format="turtle")
        direct = _direct(local, query)
        assert len(remote) == len(list(direct)) > 0
        return
    client.setReturnFormat(JSON)
    answer = client.query().convert()
    assert isinstance(answer, dict)
    remote_rows = _rows_remote(answer)
    assert remote_rows, f"{name}: no rows over HTTP"
    assert remote_rows == _rows_local(local, query)
