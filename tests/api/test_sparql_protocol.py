"""/sparql against the W3C SPARQL 1.1 Protocol behaviours clients rely on, on the demo city."""

from __future__ import annotations

import io
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pyoxigraph import QueryResultsFormat, RdfFormat, parse, parse_query_results

from tests.conftest import TOKEN
from urbis.api.app import create_app
from urbis.api.settings import Settings
from urbis.testing.processes import children
from urbis.twin.store.query_workers import STARTUP_TIMEOUT

ETSI = "https://uri.etsi.org/ngsi-ld/errors/"
TYPES = "SELECT ?t (COUNT(?e) AS ?n) WHERE { ?e a ?t } GROUP BY ?t"
CONTAINERS = (
    "SELECT (COUNT(?e) AS ?n) WHERE "
    "{ ?e a <https://smartdatamodels.org/dataModel.WasteManagement/WasteContainer> }"
)
# Every triple three times over: about 10^13 combinations on the demo city.
CROSS_JOIN = "SELECT (COUNT(*) AS ?n) WHERE { ?a ?b ?c . ?d ?e ?f . ?g ?h ?i }"


def _settings(**extra: object) -> Settings:
    base: dict[str, object] = {
        "admin_token": TOKEN,
        "demo": True,
        "demo_live_seconds": 0,
        "sparql_timeout": 2.0,
        "sparql_max_rows": 3000,
        "sparql_max_query_length": 2000,
    }
    base.update(extra)
    return Settings(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def demo() -> Iterator[TestClient]:
    """The demo city, read anonymously (queries are public reads)."""
    with TestClient(create_app(_settings())) as client:
        yield client


def _count(response: object) -> int:
    body = response.json()  # type: ignore[attr-defined]
    return int(body["results"]["bindings"][0]["n"]["value"])


def _children() -> set[int]:
    """Live child processes of this process (the query workers)."""
    return children()


def test_get_query_answers_sparql_results_json(demo: TestClient) -> None:
    response = demo.get("/sparql", params={"query": CONTAINERS})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/sparql-results+json"
    assert _count(response) == 150


def test_the_three_request_forms_give_the_same_answer(demo: TestClient) -> None:
    by_get = demo.get("/sparql", params={"query": TYPES}).json()
    by_form = demo.post("/sparql", data={"query": TYPES}).json()
    direct = demo.post(
        "/sparql", content=TYPES, headers={"Content-Type": "application/sparql-query"}
    ).json()

    def rows(body: dict[str, object]) -> set[tuple[str, str]]:
        bindings = body["results"]["bindings"]  # type: ignore[index]
        return {(b["t"]["value"], b["n"]["value"]) for b in bindings}

    assert rows(by_get) == rows(by_form) == rows(direct)
    assert len(rows(by_get)) > 5


@pytest.mark.parametrize(
    ("accept", "media_type", "fmt"),
    [
        ("application/sparql-results+xml", "application/sparql-results+xml", "XML"),
        ("text/csv", "text/csv; charset=utf-8", "CSV"),
        ("text/tab-separated-values", "text/tab-separated-values; charset=utf-8", "TSV"),
        ("application/json", "application/sparql-results+json", "JSON"),
        ("text/html;q=0.9, text/csv;q=0.5, */*;q=0.1", "text/csv; charset=utf-8", "CSV"),
    ],
)
def test_select_content_negotiation(
    demo: TestClient, accept: str, media_type: str, fmt: str
) -> None:
    response = demo.get("/sparql", params={"query": CONTAINERS}, headers={"Accept": accept})
    assert response.status_code == 200
    assert response.headers["content-type"] == media_type
    assert "Accept" in response.headers["vary"]
    if fmt != "CSV":  # pyoxigraph reads back all but CSV
        parsed = parse_query_results(response.content, format=getattr(QueryResultsFormat, fmt))
        assert [int(s["n"].value) for s in parsed] == [150]  # type: ignore[union-attr]
    else:
        assert response.text.splitlines() == ["n", "150"]


@pytest.mark.parametrize(
    ("accept", "fmt"),
    [
        ("text/turtle", RdfFormat.TURTLE),
        ("application/n-triples", RdfFormat.N_TRIPLES),
        ("application/ld+json", RdfFormat.JSON_LD),
        ("application/n-quads", RdfFormat.N_QUADS),
        ("application/trig", RdfFormat.TRIG),
    ],
)
def test_construct_content_negotiation(demo: TestClient, accept: str, fmt: RdfFormat) -> None:
    query = (
        "CONSTRUCT { ?e a ?t } WHERE "
        "{ ?e a <https://smartdatamodels.org/dataModel.Parking/ParkingSpot> . ?e a ?t }"
    )
    response = demo.post("/sparql", data={"query": query}, headers={"Accept": accept})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(fmt.media_type)
    triples = list(parse(io.BytesIO(response.content), format=fmt))
    assert len(triples) == 120


def test_ask_and_unacceptable_formats(demo: TestClient) -> None:
    ask = demo.get("/sparql", params={"query": "ASK { ?s a ?t }"})
    assert ask.status_code == 200 and ask.json() == {"head": {}, "boolean": True}
    for query, accept in (
        (CONTAINERS, "image/png"),
        ("ASK { ?s ?p ?o }", "text/turtle"),
        (CONTAINERS, "application/n-triples"),
    ):
        refused = demo.get("/sparql", params={"query": query}, headers={"Accept": accept})
        assert refused.status_code == 406
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["type"] == ETSI + "NotAcceptable"


def test_default_and_named_graph_uri(demo: TestClient) -> None:
    graphs = demo.get(
        "/sparql",
        params={"query": "SELECT DISTINCT ?g WHERE { GRAPH ?g { ?s ?p ?o } }"},
        headers={"Accept": "text/tab-separated-values"},
    ).text.split()[1:]
    datasets = [g.strip("<>") for g in graphs if g.startswith("<urn:urbis:dataset:")]
    assert len(datasets) >= 2
    total = _count(demo.get("/sparql", params={"query": "SELECT (COUNT(*) AS ?n) { ?s ?p ?o }"}))
    one = _count(
        demo.get(
            "/sparql",
            params={
                "query": "SELECT (COUNT(*) AS ?n) { ?s ?p ?o }",
                "default-graph-uri": datasets[0],
            },
        )
    )
    two = _count(
        demo.post(
            "/sparql",
            data={
                "query": "SELECT (COUNT(*) AS ?n) { ?s ?p ?o }",
                "default-graph-uri": datasets[:2],
            },
        )
    )
    assert 0 < one < two < total  # the default graph is the union unless graphs are named
    named = demo.get(
        "/sparql",
        params={
            "query": "SELECT DISTINCT ?g WHERE { GRAPH ?g { ?s ?p ?o } }",
            "named-graph-uri": datasets[1],
        },
    ).json()["results"]["bindings"]
    assert [b["g"]["value"] for b in named] == [datasets[1]]
    bad = demo.get("/sparql", params={"query": CONTAINERS, "default-graph-uri": "not an iri"})
    assert bad.status_code == 400 and "default-graph-uri" in bad.json()["detail"]


def test_service_description(demo: TestClient) -> None:
    response = demo.get("/sparql")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/turtle")
    sd = "http://www.w3.org/ns/sparql-service-description#"
    triples = [q.triple for q in parse(io.BytesIO(response.content), format=RdfFormat.TURTLE)]
    kinds = {str(t.object.value) for t in triples if t.predicate.value.endswith("#type")}
    assert sd + "Service" in kinds
    endpoints = {t.object.value for t in triples if t.predicate.value == sd + "endpoint"}
    assert "http://testserver/sparql" in endpoints
    languages = {t.object.value for t in triples if t.predicate.value == sd + "supportedLanguage"}
    assert sd + "SPARQL11Query" in languages and sd + "SPARQL11Update" in languages
    names = {t.object.value for t in triples if t.predicate.value == sd + "name"}
    assert any(n.startswith("urn:urbis:dataset:") for n in names)
    assert any(t.predicate.value == sd + "resultFormat" for t in triples)


def test_cors_for_browser_query_editors(demo: TestClient) -> None:
    preflight = demo.options(
        "/sparql",
        headers={
            "Origin": "https://yasgui.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "Content-Type" in preflight.headers["access-control-allow-headers"]
    answer = demo.get("/sparql", params={"query": CONTAINERS}, headers={"Origin": "https://x"})
    assert answer.headers["access-control-allow-origin"] == "*"
    error = demo.get("/sparql", params={"query": "SELECT"}, headers={"Origin": "https://x"})
    assert error.status_code == 400 and error.headers["access-control-allow-origin"] == "*"
    # Only the SPARQL routes: the rest of the API is unchanged.
    assert "access-control-allow-origin" not in demo.get("/health").headers


def test_malformed_query_is_a_400_with_the_position(demo: TestClient) -> None:
    response = demo.get("/sparql", params={"query": "SELECT ?s WHERE {\n  ?s ?p \n}"})
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == ETSI + "BadRequestData"
    assert "invalid SPARQL query" in body["detail"] and "error at 3:" in body["detail"]


def test_protocol_errors(demo: TestClient) -> None:
    empty = demo.post(
        "/sparql", content="", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert empty.status_code == 400
    two = demo.get("/sparql", params=[("query", CONTAINERS), ("query", CONTAINERS)])
    assert two.status_code == 400 and "exactly one" in two.json()["detail"]
    wrong_type = demo.post("/sparql", content=CONTAINERS, headers={"Content-Type": "text/plain"})
    assert wrong_type.status_code == 415
    unknown_tenant = demo.get(
        "/sparql", params={"query": CONTAINERS}, headers={"NGSILD-Tenant": "nobody"}
    )
    assert unknown_tenant.status_code == 404
    assert unknown_tenant.json()["type"] == ETSI + "NonexistentTenant"


def test_query_length_limit(demo: TestClient) -> None:
    long_query = "SELECT * WHERE { ?s ?p ?o } #" + "x" * 2000
    response = demo.post("/sparql", data={"query": long_query})
    assert response.status_code == 413
    assert "URBIS_SPARQL_MAX_QUERY_LENGTH" in response.json()["detail"]


def test_row_limit_refuses_rather_than_shortening(demo: TestClient) -> None:
    # Known before the first byte: a clean 403 TooManyResults.
    few = "SELECT ?x WHERE { ?s ?p ?o BIND(1 AS ?x) } LIMIT "
    small = demo.get("/sparql", params={"query": few + "3001"})
    assert small.status_code == 403 and small.json()["type"] == ETSI + "TooManyResults"
    under = demo.get("/sparql", params={"query": few + "3000"})
    assert len(under.json()["results"]["bindings"]) == 3000
    # Known after the answer started streaming: the response is left incomplete (over HTTP
    # the connection closes without the final chunk: tests/clients shows the client's error).
    wide = "SELECT * WHERE { ?s ?p ?o } LIMIT 50000"
    xml = {"Accept": "application/sparql-results+xml"}
    cut = demo.get("/sparql", params={"query": wide}, headers=xml)
    assert cut.status_code == 200 and len(cut.content) > 64 * 1024
    assert not cut.content.rstrip().endswith(b"</sparql>")


def test_timeout_stops_the_work(demo: TestClient) -> None:
    before = _children()  # warm workers of earlier queries and other apps, all idle
    started = time.monotonic()
    response = demo.get("/sparql", params={"query": CROSS_JOIN})
    elapsed = time.monotonic() - started
    assert response.status_code == 503
    body = response.json()
    assert body["type"] == "https://urbis.city/ns/errors/QueryTimeout"
    assert "URBIS_SPARQL_TIMEOUT" in body["detail"]
    assert elapsed >= 2.0
    # The work really ended: the process that ran it is gone; what is left only waits.
    store = demo.app.state.urbis.twin.tenant("").store  # type: ignore[attr-defined]
    idle_workers = {worker.pid for worker in store.query_pool.idle}
    after = _children()
    assert after - before <= idle_workers
    for pid in after:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        assert state in ("S", "Z"), (pid, state)  # sleeping, none computing
    # The server answers the next query at once.
    assert _count(demo.get("/sparql", params={"query": CONTAINERS})) == 150


def test_update_is_admin_only_and_keeps_the_twin_consistent(demo: TestClient) -> None:
    insert = 'INSERT DATA { GRAPH <urn:research:notes> { <urn:a> <urn:note> "checked" } }'
    headers = {"Content-Type": "application/sparql-update"}
    anonymous = demo.post("/sparql/update", content=insert, headers=headers)
    assert anonymous.status_code == 401 and anonymous.json()["type"] == ETSI + "Unauthorized"
    admin = {**headers, "Authorization": f"Bearer {TOKEN}"}
    at_query = demo.post("/sparql", content=insert, headers=admin)
    assert at_query.status_code == 400 and "/sparql/update" in at_query.json()["detail"]
    as_form = demo.post("/sparql", data={"update": insert})
    assert as_form.status_code == 400 and "/sparql/update" in as_form.json()["detail"]
    assert demo.post("/sparql/update", content=insert, headers=admin).status_code == 204
    seen = demo.get("/sparql", params={"query": "ASK { GRAPH <urn:research:notes> { ?s ?p ?o } }"})
    assert seen.json()["boolean"] is True
    for refused in (
        "CLEAR GRAPH <urn:urbis:graph:entities>",
        "PREFIX d: <urn:urbis:dataset:> INSERT DATA { GRAPH d:demo { <urn:a> <urn:b> 1 } }",
        "DELETE WHERE { GRAPH ?g { ?s ?p ?o } }",
        "DROP ALL",
    ):
        response = demo.post("/sparql/update", content=refused, headers=admin)
        assert response.status_code == 403, refused
    untouched = demo.get("/sparql", params={"query": CONTAINERS})
    assert _count(untouched) == 150
    # A geometry written by SPARQL is in the spatial index at once (rebuilt), as after a restart.
    service = demo.app.state.urbis.twin.tenant("")  # type: ignore[attr-defined]
    before = len(service.index)
    geometry = (
        "INSERT DATA { GRAPH <urn:research:shapes> { "
        "<urn:urbis:geometry:urn%3Ax%3A1/https%3A%2F%2Furi.etsi.org%2Fngsi-ld%2Flocation/> "
        '<http://www.opengis.net/ont/geosparql#asWKT> "POINT(3.87 43.61)"^^'
        "<http://www.opengis.net/ont/geosparql#wktLiteral> } }"
    )
    assert demo.post("/sparql/update", content=geometry, headers=admin).status_code == 204
    assert len(service.index) == before + 1
    form = demo.post(
        "/sparql/update",
        data={"update": "DROP GRAPH <urn:research:shapes>"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert form.status_code == 204 and len(service.index) == before
    malformed = demo.post("/sparql/update", content="INSERT NOTHING", headers=admin)
    assert malformed.status_code == 400


def test_geosparql_functions_reach_the_query_process(demo: TestClient) -> None:
    prefixes = (
        "PREFIX geof: <http://www.opengis.net/def/function/geosparql/>\n"
        "PREFIX geo: <http://www.opengis.net/ont/geosparql#>\n"
        "PREFIX uom: <http://www.opengis.net/def/uom/OGC/1.0/>\n"
    )
    a, b = '"POINT(3.87 43.61)"^^geo:wktLiteral', '"POINT(3.88 43.61)"^^geo:wktLiteral'
    # Both are module-level functions: they pickle by name and reach a warm worker.
    query = prefixes + f"SELECT ?d ?u WHERE {{ BIND(geof:distance({a}, {b}, uom:metre) AS ?d) "
    query += f"BIND(geof:union({a}, {b}) AS ?u) }}"
    row = demo.get("/sparql", params={"query": query}).json()["results"]["bindings"][0]
    assert 790 < float(row["d"]["value"]) < 820  # 0.01° of longitude at 43.6° N
    assert "MULTIPOINT" in row["u"]["value"]


def test_on_disk_store_is_queried_and_stopped_the_same_way(tmp_path: Path) -> None:
    settings = Settings(admin_token=TOKEN, data_dir=tmp_path, sparql_timeout=3.0)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    before = _children()  # other apps' warm workers (the module's demo)
    with TestClient(create_app(settings), headers=auth) as client:
        for n in range(40):
            entity = {
                "id": f"urn:ngsi-ld:Thing:{n}",
                "type": "Thing",
                "n": {"type": "Property", "value": n},
            }
            assert client.post("/ngsi-ld/v1/entities", json=entity).status_code == 201
        thing = "<https://uri.etsi.org/ngsi-ld/default-context/Thing>"
        count = f"SELECT (COUNT(?e) AS ?n) WHERE {{ ?e a {thing} }}"
        assert _count(client.get("/sparql", params={"query": count})) == 40
        slow = "SELECT (COUNT(*) AS ?n) WHERE { ?a ?b ?c . ?d ?e ?f . ?g ?h ?i . ?j ?k ?l }"
        response = client.get("/sparql", params={"query": slow})
        assert response.status_code == 503
        pool = client.app.state.urbis.twin.tenant("").store.disk_pool  # type: ignore[attr-defined]
        killed = pool.last_pid
        assert killed not in _children()  # the query's interpreter was killed and reaped
        # What is left are the pool's idle workers (a replacement is started in the background).
        _settled(pool)
        assert _children() - before <= set(pool.workers())
        assert _count(client.get("/sparql", params={"query": count})) == 40
    assert _children() <= before  # closing the app stopped every worker


def _settled(pool: Any) -> None:
    """Wait (bounded) until the disk pool's background starts are done: all its workers idle."""
    deadline = time.monotonic() + 120
    while len(pool.workers()) < pool.alive and time.monotonic() < deadline:
        time.sleep(0.05)


def test_on_disk_queries_reuse_a_warm_worker_that_sees_writes(tmp_path: Path) -> None:
    settings = Settings(admin_token=TOKEN, data_dir=tmp_path, sparql_timeout=30.0)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    thing = "<https://uri.etsi.org/ngsi-ld/default-context/Thing>"
    count = f"SELECT (COUNT(?e) AS ?n) WHERE {{ ?e a {thing} }}"

    def add(n: int) -> None:
        entity = {"id": f"urn:ngsi-ld:Thing:{n}", "type": "Thing"}
        assert client.post("/ngsi-ld/v1/entities", json=entity).status_code == 201

    with TestClient(create_app(settings), headers=auth) as client:
        pool = client.app.state.urbis.twin.tenant("").store.disk_pool  # type: ignore[attr-defined]
        # The workers started with the server: wait for them (a loaded machine may take long).
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while len(pool.workers()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        add(0)
        assert _count(client.get("/sparql", params={"query": count})) == 1
        first, opens = pool.last_pid, pool.opens
        assert _count(client.get("/sparql", params={"query": count})) == 1
        assert pool.last_pid == first  # the same process answered, its store kept open
        assert pool.opens == opens
        add(1)  # a write: the next query reopens the store and sees it
        assert _count(client.get("/sparql", params={"query": count})) == 2
        assert pool.opens > opens
        again, reopened = pool.last_pid, pool.opens
        assert _count(client.get("/sparql", params={"query": count})) == 2
        assert pool.last_pid == again and pool.opens == reopened
        alive = _children()
        state = (first, again, pool.spawned, pool.workers(), sorted(alive))
        # No interpreter per query: the two warm workers answered everything, and the last one
        # is still there. (Whether the first one is alive too flaked in full-suite runs: the
        # pool passes over a worker that died while idle, tested below; see issue 9's note.)
        assert pool.spawned <= 2 and again in alive, state
        # A worker that died while idle (even one not yet reaped) is passed over.
        os.kill(again, signal.SIGKILL)
        answer = client.get("/sparql", params={"query": count})
        assert answer.status_code == 200, answer.text
        assert _count(answer) == 2
        assert pool.last_pid != again
