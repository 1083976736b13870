"""The access port on every read path of the API: what a restricted caller must NOT see.

The policy (tests/security/access_policy.py) is installed through `create_app(access=...)`;
anonymous callers are restricted, the admin is exempt. Each test asserts what must not happen
for the restricted caller, and that the exempt admin still sees everything.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from tests.conftest import TOKEN
from tests.security.access_policy import (
    BENCH,
    BIN_1,
    BIN_2,
    BIN_CLASSIFIED,
    BIN_SECRET,
    CAMERA,
    COARSE,
    DEFAULT,
    ENTITIES,
    EXACT,
    HIDDEN,
    PUBLIC,
    RESTRICTED_VISIBLE,
    SECRET,
    CityPolicy,
    DenyingPolicy,
    city_app,
    load_city,
    store_entity,
)
from urbis.api.app import create_app
from urbis.api.deps import is_write
from urbis.api.settings import Settings
from urbis.sparql.dataset import query_dataset, visible_dataset
from urbis.testing.sparql_servers import Engine, oxigraph_engine, virtuoso_engine
from urbis.twin.errors import ERROR_BASE

__all__ = ["oxigraph_engine", "virtuoso_engine"]  # session fixtures: the real engines

QUERY = "/ngsi-ld/v1/entityOperations/query"
ALL_TYPES = "WasteBin,Bench,SecretCamera"
SPARQL_JSON = {"Accept": "application/sparql-results+json"}
BENCH_WKT = "<http://www.opengis.net/def/crs/OGC/1.3/CRS84> POINT(4.35001 50.84001)"


@pytest.fixture(scope="module")
def policy() -> CityPolicy:
    return CityPolicy()


@pytest.fixture(scope="module")
def city(policy: CityPolicy) -> Iterator[tuple[TestClient, TestClient]]:
    with city_app(policy) as clients:
        yield clients


@pytest.fixture
def admin(city: tuple[TestClient, TestClient]) -> TestClient:
    return city[0]


@pytest.fixture
def anonymous(city: tuple[TestClient, TestClient]) -> TestClient:
    return city[1]


def ids(answer: Any) -> set[str]:
    assert answer.status_code == 200, answer.text
    return {e["id"] for e in answer.json()}


def near(coordinates: list[float], metres: int) -> dict[str, str]:
    return {
        "georel": f"near;maxDistance=={metres}",
        "geometry": "Point",
        "coordinates": str(coordinates),
    }


# -- entity retrieval -----------------------------------------------------------------------


def test_retrieve_hides_entities_and_transforms_documents(
    admin: TestClient, anonymous: TestClient, policy: CityPolicy
) -> None:
    asked = policy.documents_seen
    for hidden in HIDDEN:
        answer = anonymous.get(f"{ENTITIES}/{hidden}")
        absent = anonymous.get(f"{ENTITIES}/urn:ngsi-ld:WasteBin:absent")
        assert answer.status_code == 404, answer.text  # exactly as if it did not exist
        assert answer.json()["type"] == absent.json()["type"] == ERROR_BASE + "ResourceNotFound"
        assert admin.get(f"{ENTITIES}/{hidden}").status_code == 200
    seen = anonymous.get(f"{ENTITIES}/{BIN_1['id']}").json()
    assert "owner" not in seen and seen["location"]["value"]["coordinates"] == COARSE
    assert seen["fill"]["value"] == 0.5  # what the policy keeps is there
    assert policy.documents_seen > asked
    # attrs=owner, keyValues, GeoJSON: the dropped attribute and the exact location stay away.
    picked = anonymous.get(f"{ENTITIES}/{BIN_1['id']}", params={"attrs": "owner,location"})
    assert "owner" not in picked.json() and "location" in picked.json()
    kv = anonymous.get(f"{ENTITIES}/{BIN_1['id']}", params={"options": "keyValues"}).json()
    assert "owner" not in kv and kv["location"]["coordinates"] == COARSE
    geo = anonymous.get(f"{ENTITIES}/{BIN_1['id']}", headers={"Accept": "application/geo+json"})
    assert geo.json()["geometry"]["coordinates"] == COARSE
    assert "owner" not in geo.json()["properties"]
    # The public dataset is shown as stored; the exempt admin sees everything as stored.
    bench = anonymous.get(f"{ENTITIES}/{BENCH['id']}").json()
    assert bench["owner"]["value"] == "city"
    full = admin.get(f"{ENTITIES}/{BIN_1['id']}").json()
    assert full["owner"]["value"] == "alice" and full["location"]["value"]["coordinates"] == EXACT


# -- queries ----------------------------------------------------------------------------------


def test_query_never_returns_or_counts_hidden_entities(
    admin: TestClient, anonymous: TestClient
) -> None:
    params = {"type": ALL_TYPES, "count": "true"}
    answer = anonymous.get(ENTITIES, params=params)
    assert ids(answer) == RESTRICTED_VISIBLE
    assert answer.headers["NGSILD-Results-Count"] == str(len(RESTRICTED_VISIBLE))
    for entity in answer.json():
        assert "owner" not in entity or entity["id"] == BENCH["id"]
    bins = anonymous.get(ENTITIES, params={"type": "WasteBin", "count": "true", "limit": "1"})
    assert len(bins.json()) == 1 and bins.headers["NGSILD-Results-Count"] == "2"
    assert 'rel="next"' in bins.headers["link"]
    only_hidden = anonymous.get(ENTITIES, params={"type": "SecretCamera", "count": "true"})
    assert ids(only_hidden) == set() and only_hidden.headers["NGSILD-Results-Count"] == "0"
    by_id = anonymous.get(ENTITIES, params={"id": ",".join(sorted(HIDDEN))})
    assert ids(by_id) == set()
    assert ids(anonymous.get(ENTITIES, params={"idPattern": ".*Camera.*"})) == set()
    everything = admin.get(ENTITIES, params=params)
    assert ids(everything) == RESTRICTED_VISIBLE | HIDDEN
    assert everything.headers["NGSILD-Results-Count"] == str(len(RESTRICTED_VISIBLE | HIDDEN))


def test_a_condition_on_a_removed_attribute_selects_nothing(
    admin: TestClient, anonymous: TestClient
) -> None:
    for q in ('owner=="alice"', "owner", 'owner!="nobody"', "fill>0;owner"):
        params = {"type": "WasteBin", "q": q, "count": "true"}
        answer = anonymous.get(ENTITIES, params=params)
        assert ids(answer) == set(), q
        assert answer.headers["NGSILD-Results-Count"] == "0"
        assert admin.get(ENTITIES, params=params).json(), q  # the data is there
    # attrs selects entities that have one of them: none has `owner` for this caller.
    assert ids(anonymous.get(ENTITIES, params={"type": "WasteBin", "attrs": "owner"})) == set()
    # A condition on what the policy keeps still selects, on visible data only.
    high = anonymous.get(ENTITIES, params={"type": "WasteBin", "q": "fill>0.6"})
    assert ids(high) == {BIN_2["id"]}  # not WasteBin:3 (secret) nor :9 (classified)


def test_geoq_is_decided_on_the_coarsened_location(
    admin: TestClient, anonymous: TestClient
) -> None:
    exact = {"type": "WasteBin", **near(EXACT, 50)}
    coarse = {"type": "WasteBin", **near(COARSE, 50)}
    assert ids(anonymous.get(ENTITIES, params=exact)) == set()  # the exact spot stays unknown
    assert ids(admin.get(ENTITIES, params=exact)) == {BIN_1["id"]}
    assert ids(anonymous.get(ENTITIES, params=coarse)) == {BIN_1["id"]}
    assert ids(admin.get(ENTITIES, params=coarse)) == set()
    # geoQ without a type: the secret camera beside the bench is never selected.
    around_bench = near(BENCH["location"]["value"]["coordinates"], 100)
    assert ids(anonymous.get(ENTITIES, params=around_bench)) == {BENCH["id"]}
    assert CAMERA["id"] in ids(admin.get(ENTITIES, params=around_bench))


def test_post_query_goes_through_the_policy(admin: TestClient, anonymous: TestClient) -> None:
    body = {"type": "Query", "entities": [{"type": "WasteBin"}, {"type": "SecretCamera"}]}
    answer = anonymous.post(QUERY, json=body, params={"count": "true"})
    assert ids(answer) == {BIN_1["id"], BIN_2["id"]}
    assert answer.headers["NGSILD-Results-Count"] == "2"
    assert all("owner" not in e for e in answer.json())
    on_owner = anonymous.post(QUERY, json={**body, "q": 'owner=="bob"'}, params={"count": "true"})
    assert ids(on_owner) == set() and on_owner.headers["NGSILD-Results-Count"] == "0"
    geo = {**body, "geoQ": {**near(EXACT, 50), "coordinates": EXACT}}
    assert ids(anonymous.post(QUERY, json=geo)) == set()
    assert ids(admin.post(QUERY, json=geo)) == {BIN_1["id"]}
    assert ids(admin.post(QUERY, json={**body, "q": 'owner=="bob"'})) == {BIN_2["id"]}


# -- discovery --------------------------------------------------------------------------------


def test_discovery_reveals_nothing_only_hidden_data_holds(
    admin: TestClient, anonymous: TestClient
) -> None:
    types = anonymous.get("/ngsi-ld/v1/types").json()["typeList"]
    assert "SecretCamera" not in types and {"WasteBin", "Bench"} <= set(types)
    assert "SecretCamera" in admin.get("/ngsi-ld/v1/types").json()["typeList"]
    details = anonymous.get("/ngsi-ld/v1/types", params={"details": "true"}).json()
    by_name = {t["typeName"]: t for t in details}
    assert "SecretCamera" not in by_name
    assert "owner" not in by_name["WasteBin"]["attributeNames"]
    assert "classified" not in by_name["WasteBin"]["attributeNames"]  # only a hidden bin has it
    assert "owner" in by_name["Bench"]["attributeNames"]  # the public bench keeps its owner
    info = anonymous.get("/ngsi-ld/v1/types/WasteBin").json()
    assert info["entityCount"] == 2  # not the secret bin, not the classified one
    assert {a["attributeName"] for a in info["attributeDetails"]} == {"fill", "location"}
    assert admin.get("/ngsi-ld/v1/types/WasteBin").json()["entityCount"] == 4
    assert anonymous.get("/ngsi-ld/v1/types/SecretCamera").status_code == 404
    assert admin.get("/ngsi-ld/v1/types/SecretCamera").status_code == 200

    names = anonymous.get("/ngsi-ld/v1/attributes").json()["attributeList"]
    assert "feed" not in names and "classified" not in names
    assert "owner" in names  # the bench's, from the public dataset
    owner = anonymous.get("/ngsi-ld/v1/attributes/owner").json()
    assert owner["typeNames"] == ["Bench"] and owner["attributeCount"] == 1
    assert admin.get("/ngsi-ld/v1/attributes/owner").json()["attributeCount"] == 4
    assert anonymous.get("/ngsi-ld/v1/attributes/feed").status_code == 404
    assert admin.get("/ngsi-ld/v1/attributes/feed").status_code == 200
    fill = anonymous.get("/ngsi-ld/v1/attributes/fill").json()
    assert (
        fill["attributeCount"] == 2
        and admin.get("/ngsi-ld/v1/attributes/fill").json()["attributeCount"] == 4
    )
    listed = anonymous.get("/ngsi-ld/v1/attributes", params={"details": "true"}).json()
    assert {a["attributeName"] for a in listed} == {"fill", "location", "owner", "seats"}


def test_discovery_of_a_graph_only_policy_uses_the_stored_aggregates() -> None:
    """A policy that hides graphs but transforms nothing keeps the store's aggregates, over the
    readable graphs only (no document is asked for)."""

    class GraphsOnly(CityPolicy):
        def raw_graphs(self, caller: Any, tenant: str) -> frozenset[str] | None:
            return self.graphs(caller, tenant)

    policy = GraphsOnly()
    with city_app(policy) as (_, anonymous):
        types = anonymous.get("/ngsi-ld/v1/types", params={"details": "true"}).json()
        by_name = {t["typeName"]: t for t in types}
        assert "SecretCamera" not in by_name
        assert "owner" in by_name["WasteBin"]["attributeNames"]  # not transformed: kept
        assert anonymous.get("/ngsi-ld/v1/types/WasteBin").json()["entityCount"] == 3
        assert anonymous.get("/ngsi-ld/v1/attributes/feed").status_code == 404
        assert anonymous.get("/ngsi-ld/v1/attributes/owner").json()["attributeCount"] == 3
        answer = anonymous.get(ENTITIES, params={"type": ALL_TYPES, "count": "true"})
        assert CAMERA["id"] not in ids(answer) and BIN_SECRET["id"] not in ids(answer)
        assert answer.headers["NGSILD-Results-Count"] == "4"  # the classified bin is shown
        assert policy.documents_seen == 0


# -- SPARQL -----------------------------------------------------------------------------------


def select(
    client: TestClient, query: str, headers: dict[str, str] | None = None, **params: str
) -> list[dict[str, Any]]:
    headers = {**SPARQL_JSON, **(headers or {})}
    answer = client.get("/sparql", params={"query": query, **params}, headers=headers)
    assert answer.status_code == 200, answer.text
    rows: list[dict[str, Any]] = answer.json()["results"]["bindings"]
    return rows


def ask(client: TestClient, query: str, **params: str) -> bool:
    answer = client.get("/sparql", params={"query": query, **params}, headers=SPARQL_JSON)
    assert answer.status_code == 200, answer.text
    result: bool = answer.json()["boolean"]
    return result


def values(rows: list[dict[str, Any]]) -> set[str]:
    return {cell["value"] for row in rows for cell in row.values()}


SECRET_QUERIES = [
    f"SELECT * WHERE {{ GRAPH <{SECRET}> {{ ?s ?p ?o }} }}",
    f"SELECT * FROM <{SECRET}> WHERE {{ ?s ?p ?o }}",
    f"SELECT * FROM NAMED <{SECRET}> WHERE {{ GRAPH ?g {{ ?s ?p ?o }} }}",
    f"SELECT * FROM <{PUBLIC}> FROM NAMED <{SECRET}> WHERE {{ GRAPH ?g {{ ?s ?p ?o }} }}",
    "PREFIX d: <urn:urbis:dataset:> SELECT * FROM d:secret WHERE { ?s ?p ?o }",
    "BASE <urn:urbis:dataset:> SELECT * FROM <secret> WHERE { ?s ?p ?o }",
    f"SELECT * WHERE {{ GRAPH ?g {{ <{CAMERA['id']}> ?p ?o }} }}",
    f"SELECT * WHERE {{ <{BIN_SECRET['id']}> ?p ?o }}",
    f"SELECT * WHERE {{ <{BIN_1['id']}> ?p ?o }}",  # DEFAULT is transformed: not raw
    "SELECT * WHERE { GRAPH <urn:urbis:graph:entities> { ?s ?p ?o } }",  # every document
]


@pytest.mark.parametrize("query", SECRET_QUERIES)
def test_sparql_reaches_no_graph_the_caller_may_not_read_as_stored(
    admin: TestClient, anonymous: TestClient, query: str
) -> None:
    assert select(anonymous, query) == []
    assert select(admin, query) != []  # the data is there


def test_sparql_select_ask_construct_see_the_public_dataset_only(
    admin: TestClient, anonymous: TestClient
) -> None:
    everything = values(select(anonymous, "SELECT * WHERE { ?s ?p ?o }"))
    assert BENCH["id"] in everything
    assert not everything & (HIDDEN | {BIN_1["id"], BIN_2["id"]})
    graphs = values(select(anonymous, "SELECT DISTINCT ?g WHERE { GRAPH ?g { ?s ?p ?o } }"))
    assert graphs == {PUBLIC}
    admin_graphs = values(select(admin, "SELECT DISTINCT ?g WHERE { GRAPH ?g { ?s ?p ?o } }"))
    assert {PUBLIC, SECRET, DEFAULT} <= admin_graphs
    for query in (
        f"ASK {{ GRAPH <{SECRET}> {{ ?s ?p ?o }} }}",
        f"ASK FROM <{SECRET}> {{ ?s ?p ?o }}",
        f"ASK {{ <{CAMERA['id']}> ?p ?o }}",
        "ASK { GRAPH ?g { ?s a <https://uri.etsi.org/ngsi-ld/default-context/SecretCamera> } }",
    ):
        assert ask(anonymous, query) is False, query
        assert ask(admin, query) is True, query
    construct = "CONSTRUCT { ?s ?p ?o } WHERE { GRAPH ?g { ?s ?p ?o } }"
    for client, expected in ((anonymous, False), (admin, True)):
        answer = client.get(
            "/sparql", params={"query": construct}, headers={"Accept": "application/n-triples"}
        )
        assert answer.status_code == 200
        assert (CAMERA["id"] in answer.text) is expected
        assert BENCH["id"] in answer.text
    described = anonymous.get(
        "/sparql", params={"query": f"DESCRIBE <{CAMERA['id']}>"}, headers={"Accept": "text/turtle"}
    )
    assert described.status_code == 200 and "rtsp" not in described.text


def test_sparql_protocol_dataset_is_narrowed_too(admin: TestClient, anonymous: TestClient) -> None:
    query = "SELECT * WHERE { { ?s ?p ?o } UNION { GRAPH ?g { ?s ?p ?o } } }"
    for params in (
        {"default-graph-uri": SECRET},
        {"named-graph-uri": SECRET, "default-graph-uri": PUBLIC},
        {"default-graph-uri": DEFAULT, "named-graph-uri": "urn:urbis:graph:entities"},
    ):
        seen = values(select(anonymous, query, **params))
        assert not seen & (HIDDEN | {BIN_1["id"], BIN_2["id"]}), params
        assert values(select(admin, query, **params)) & (HIDDEN | {BIN_1["id"]}), params
    posted = anonymous.post(
        "/sparql",
        data={"query": f"SELECT * WHERE {{ GRAPH <{SECRET}> {{ ?s ?p ?o }} }}"},
        headers=SPARQL_JSON,
    )
    assert posted.status_code == 200 and posted.json()["results"]["bindings"] == []


def test_geosparql_filters_see_no_hidden_geometry(admin: TestClient, anonymous: TestClient) -> None:
    """The spatial index holds every graph's geometries, and the filter rewrite puts the
    matching literals into the query: they must only ever meet the visible graphs."""
    box = "POLYGON((4.2 50.7, 4.5 50.7, 4.5 50.9, 4.2 50.9, 4.2 50.7))"
    prefixes = (
        "PREFIX geo: <http://www.opengis.net/ont/geosparql#> "
        "PREFIX geof: <http://www.opengis.net/def/function/geosparql/> "
    )
    test = f'geof:sfWithin(?w, "{box}"^^geo:wktLiteral)'
    joined = f"{prefixes} SELECT ?w WHERE {{ ?g geo:asWKT ?w FILTER({test}) }}"
    seen = values(select(anonymous, joined))
    assert seen == {BENCH_WKT}  # the public bench only
    assert len(values(select(admin, joined))) == 6
    for where in (
        f"{{ ?g geo:asWKT ?w MINUS {{ ?a ?b ?c }} FILTER({test}) }}",  # rewritten too
        f"{{ OPTIONAL {{ ?g geo:asWKT ?w }} FILTER({test}) }}",
        f"{{ FILTER({test}) }}",
    ):
        seen = values(select(anonymous, f"{prefixes} SELECT ?w WHERE {where}"))
        assert not {v for v in seen if "4.3500" in v or "4.35671" in v} - {BENCH_WKT}, where


def test_sparql_description_names_no_hidden_graph(admin: TestClient, anonymous: TestClient) -> None:
    assert SECRET not in anonymous.get("/sparql").text
    assert PUBLIC in anonymous.get("/sparql").text
    assert SECRET in admin.get("/sparql").text


def test_sparql_update_stays_admin_only(anonymous: TestClient) -> None:
    update = f"INSERT DATA {{ GRAPH <{PUBLIC}> {{ <urn:x:s> <urn:x:p> <urn:x:o> }} }}"
    assert anonymous.post("/sparql/update", data={"update": update}).status_code == 401


def test_the_dataset_clause_is_read_like_the_engine_reads_it() -> None:
    assert query_dataset("SELECT * WHERE { ?s ?p ?o }") is None
    tricky = (
        "PREFIX d: <urn:urbis:dataset:> # FROM <urn:x:commented>\n"
        "SELECT * FROM d:public FROM NAMED <urn:urbis:dataset:secret> FROM unknown:x "
        'WHERE { ?s ?p "FROM <urn:x:in-a-string>" }'
    )
    assert query_dataset(tricky) == ([PUBLIC, "unknown:x"], [SECRET])
    visible = frozenset({PUBLIC})
    default, named = visible_dataset(tricky, [], [], visible)
    assert default == [PUBLIC] and len(named) == 1 and named[0] not in (SECRET, PUBLIC)
    # The protocol's dataset replaces the query's; a side it leaves out is everything visible.
    assert visible_dataset(tricky, [SECRET], [], visible)[1] == [PUBLIC]
    assert visible_dataset("ASK {}", [], [], visible) == ([PUBLIC], [PUBLIC])


@pytest.fixture(params=["oxigraph-server", "virtuoso"])
def engine(request: pytest.FixtureRequest) -> Engine:
    name = "oxigraph_engine" if request.param == "oxigraph-server" else "virtuoso_engine"
    found: Engine = request.getfixturevalue(name)
    return found


def test_sparql_narrowing_holds_on_remote_engines(engine: Engine) -> None:
    """URBIS_STORE=sparql: the narrowed dataset goes to the engine as the protocol's graphs."""
    tenant = {"NGSILD-Tenant": "access" + uuid.uuid4().hex[:10]}
    settings = Settings(admin_token=TOKEN, demo=False, **engine.settings())  # type: ignore[arg-type]
    with city_app(CityPolicy(), settings, load=False) as (admin, anonymous):
        assert admin.post(ENTITIES, json=BIN_1, headers=tenant).status_code == 201
        for raw, graph in ((BENCH, PUBLIC), (CAMERA, SECRET), (BIN_SECRET, SECRET)):
            store_entity(admin.app, raw, graph, tenant["NGSILD-Tenant"])  # type: ignore[arg-type]
        for query in SECRET_QUERIES:
            assert select(anonymous, query, tenant) == [], query
            if not query.startswith("BASE"):  # the remote rewrite does not resolve BASE
                assert select(admin, query, tenant) != [], query
        seen = values(select(anonymous, "SELECT * WHERE { GRAPH ?g { ?s ?p ?o } }", tenant))
        assert BENCH["id"] in seen and PUBLIC in seen
        assert not seen & {CAMERA["id"], BIN_SECRET["id"], BIN_1["id"], SECRET}
        # Nothing readable asked for, in the default tenant: an empty answer, not a refusal of
        # the engine's reserved graph names.
        assert select(anonymous, f"SELECT * FROM <{SECRET}> WHERE {{ ?s ?p ?o }}") == []


# -- datasets ---------------------------------------------------------------------------------


def test_dataset_list_shows_only_readable_datasets_and_what_is_seen_of_them(
    admin: TestClient, anonymous: TestClient
) -> None:
    listed = {d["name"]: d["entities"] for d in anonymous.get("/datasets").json()}
    assert listed == {"default": 2, "public": 1}  # the classified bin is not counted
    everything = {d["name"]: d["entities"] for d in admin.get("/datasets").json()}
    assert everything == {"default": 3, "public": 1, "secret": 2}


def test_dumps_are_of_datasets_readable_as_stored_only() -> None:
    policy = CityPolicy(exempt_admin=False)  # dumps are admin-only: restrict the admin too
    with city_app(policy) as (admin, _):
        secret = admin.get("/datasets/secret/dump")
        absent = admin.get("/datasets/nothing/dump")
        assert secret.status_code == absent.status_code == 404
        assert secret.json()["type"] == absent.json()["type"]
        transformed = admin.get("/datasets/default/dump")
        assert transformed.status_code == 403, transformed.text
        assert transformed.json()["type"] == ERROR_BASE + "Forbidden"
        public = admin.get("/datasets/public/dump")
        assert public.status_code == 200
        assert BENCH["id"] in public.text and CAMERA["id"] not in public.text
        assert {d["name"] for d in admin.get("/datasets").json()} == {"default", "public"}
    with city_app(CityPolicy()) as (admin, anonymous):
        assert CAMERA["id"] in admin.get("/datasets/secret/dump").text
        assert anonymous.get("/datasets/public/dump").status_code == 401  # still admin-only


# -- denial with a reason, and the default -----------------------------------------------------


def test_a_policy_refusal_is_a_403_with_its_reason_on_every_read_path() -> None:
    with city_app(DenyingPolicy()) as (admin, anonymous):
        for method, url, kwargs in (
            ("GET", ENTITIES, {"params": {"type": "WasteBin"}}),
            ("GET", f"{ENTITIES}/{BIN_1['id']}", {}),
            ("POST", QUERY, {"json": {"type": "Query", "entities": [{"type": "WasteBin"}]}}),
            ("GET", "/ngsi-ld/v1/types", {}),
            ("GET", "/ngsi-ld/v1/attributes", {}),
            ("GET", "/datasets", {}),
            ("GET", "/sparql", {"params": {"query": "ASK { ?s ?p ?o }"}}),
        ):
            answer = anonymous.request(method, url, **kwargs)
            assert answer.status_code == 403, (url, answer.text)
            assert answer.headers["content-type"].startswith("application/problem+json")
            assert answer.json()["detail"] == DenyingPolicy.REASON
            assert admin.request(method, url, **kwargs).status_code == 200, url


def test_allow_all_default_shows_everything_as_stored() -> None:
    """No policy installed: every caller reads every graph as stored (behaviour unchanged)."""
    app = create_app(Settings(admin_token=TOKEN, demo=False))
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as admin:
        load_city(admin)
        anonymous = TestClient(app)
        answer = anonymous.get(ENTITIES, params={"type": ALL_TYPES, "count": "true"})
        assert ids(answer) == RESTRICTED_VISIBLE | HIDDEN
        assert answer.headers["NGSILD-Results-Count"] == "6"
        bin_1 = anonymous.get(f"{ENTITIES}/{BIN_1['id']}").json()
        assert bin_1["owner"]["value"] == "alice"
        assert bin_1["location"]["value"]["coordinates"] == EXACT
        assert ids(anonymous.get(ENTITIES, params={"type": "WasteBin", "q": 'owner=="alice"'}))
        assert "SecretCamera" in anonymous.get("/ngsi-ld/v1/types").json()["typeList"]
        assert ask(anonymous, f"ASK {{ GRAPH <{SECRET}> {{ ?s ?p ?o }} }}") is True
        assert {d["name"] for d in anonymous.get("/datasets").json()} == {
            "default",
            "public",
            "secret",
        }
        assert BIN_CLASSIFIED["id"] in ids(anonymous.get(ENTITIES, params={"type": "WasteBin"}))


# -- every read route is decided on -----------------------------------------------------------

# Every GET route (and every read sent by POST) of the app, with the test that holds the access
# port to it, or why it shows no entity data. A new read route fails the test below until it
# is added here: reading twin data must go through the port (CallerView, ReadScope).
READ_ROUTES: dict[str, str] = {
    "GET /ngsi-ld/v1/entities": "test_query_never_returns_or_counts_hidden_entities",
    "GET /ngsi-ld/v1/entities/": "test_query_never_returns_or_counts_hidden_entities",
    "GET /ngsi-ld/v1/entities/{entity_id:path}": (
        "test_retrieve_hides_entities_and_transforms_documents"
    ),
    "GET /ngsi-ld/v1/entities/{entity_id:path}/attrs/{attr}": "no data: always 422",
    "POST /ngsi-ld/v1/entityOperations/query": "test_post_query_goes_through_the_policy",
    "POST /ngsi-ld/v1/entityOperations/query/": "test_post_query_goes_through_the_policy",
    "GET /ngsi-ld/v1/types": "test_discovery_reveals_nothing_only_hidden_data_holds",
    "GET /ngsi-ld/v1/types/": "test_discovery_reveals_nothing_only_hidden_data_holds",
    "GET /ngsi-ld/v1/types/{type_name:path}": (
        "test_discovery_reveals_nothing_only_hidden_data_holds"
    ),
    "GET /ngsi-ld/v1/attributes": "test_discovery_reveals_nothing_only_hidden_data_holds",
    "GET /ngsi-ld/v1/attributes/": "test_discovery_reveals_nothing_only_hidden_data_holds",
    "GET /ngsi-ld/v1/attributes/{attr:path}": (
        "test_discovery_reveals_nothing_only_hidden_data_holds"
    ),
    "GET /sparql": "test_sparql_reaches_no_graph_the_caller_may_not_read_as_stored",
    "POST /sparql": "test_sparql_protocol_dataset_is_narrowed_too",
    "GET /datasets": "test_dataset_list_shows_only_readable_datasets_and_what_is_seen_of_them",
    "GET /datasets/{name}/dump": "test_dumps_are_of_datasets_readable_as_stored_only",
    # Configuration, not twin data (entities reach callers only through the routes above):
    "GET /ngsi-ld/v1/subscriptions": "no data: admin-only configuration",
    "GET /ngsi-ld/v1/subscriptions/": "no data: admin-only configuration",
    "GET /ngsi-ld/v1/subscriptions/{subscription_id:path}": "no data: admin-only configuration",
    "GET /ngsi-ld/v1/csourceRegistrations": "no data: registrations of context sources",
    "GET /ngsi-ld/v1/csourceRegistrations/": "no data: registrations of context sources",
    "GET /ngsi-ld/v1/csourceRegistrations/{reg_id:path}": "no data: registrations",
    "GET /ngsi-ld/v1/jsonldContexts": "no data: hosted @contexts",
    "GET /ngsi-ld/v1/jsonldContexts/": "no data: hosted @contexts",
    "GET /ngsi-ld/v1/jsonldContexts/{context_id:path}": "no data: hosted @contexts",
    "GET /sources": "no data: admin-only connector configuration",
    "GET /sources/{source_id}": "no data: admin-only connector configuration",
    "GET /sources/{source_id}/report": "no data: admin-only sync reports",
    "GET /sources/{source_id}/quarantine": "admin-only: records refused before the twin",
    "GET /health": "no data: liveness",
    "GET /openapi.json": "no data: the API description",
    "GET /docs": "no data: the API description",
    "GET /docs/oauth2-redirect": "no data: the API description",
    "GET /redoc": "no data: the API description",
}
DELIVERY = {  # read paths that are no route: tests/security/test_access_port_delivery.py
    "notifications": "test_notifications_show_entities_as_their_owner_may_see_them",
    "federated reads": "test_federated_entities_are_filtered_for_the_caller",
    "urbis export": "test_export_reads_through_the_port",
}


def read_routes(app: FastAPI) -> Iterator[str]:
    """`METHOD path` of every route that reads: GETs, and POSTs the gate classifies as reads."""
    from starlette.requests import Request

    stack: list[Any] = list(app.routes)
    while stack:
        route = stack.pop()
        inner = getattr(route, "original_router", None)
        if inner is not None:
            stack.extend(inner.routes)
            continue
        methods = set(getattr(route, "methods", None) or ()) - {"HEAD", "OPTIONS"}
        for method in sorted(methods):
            endpoint = route.endpoint if isinstance(route, APIRoute) else None
            request = Request({"type": "http", "method": method, "endpoint": endpoint})
            sparql_query = route.path == "/sparql"  # parses its own operation: POST reads
            if method == "GET" or not is_write(request) or sparql_query:
                yield f"{method} {route.path}"


def test_every_read_route_has_an_access_decision(admin: TestClient) -> None:
    found = set(read_routes(admin.app))  # type: ignore[arg-type]
    undecided = sorted(found - set(READ_ROUTES))
    assert not undecided, (
        "read routes without an access-port decision: read entity data through CallerView "
        f"and add a test here, or say why they show none: {undecided}"
    )
    assert not set(READ_ROUTES) - found, "READ_ROUTES names routes that are gone"
    here = Path(__file__)
    source = here.read_text() + here.with_name("test_access_port_delivery.py").read_text()
    for why in list(READ_ROUTES.values()) + list(DELIVERY.values()):
        if why.startswith("test_"):
            assert f"def {why}(" in source, why
