"""Issue 8, item 2: federated SPARQL SERVICE is off by default (sparql/service.py).

pyoxigraph makes SERVICE calls itself, past the outbound guard, so every spelling of SERVICE
is aimed at a real loopback listener that counts connections: it must get none, on GET, on a
POST form and a POST application/sparql-query, and on /sparql/update. With an allow-list the
listed endpoints work, for admin callers only.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import TOKEN
from urbis.api.app import create_app
from urbis.api.settings import Settings
from urbis.sparql.service import DISABLED, service_endpoints
from urbis.testing.listener import Listener
from urbis.testing.server import free_port

ADMIN = {"Authorization": f"Bearer {TOKEN}"}
RESULTS = {
    "head": {"vars": ["x"]},
    "results": {"bindings": [{"x": {"type": "literal", "value": "remote"}}]},
}


@contextmanager
def app(**settings: Any) -> Iterator[TestClient]:
    built = Settings(admin_token=TOKEN, demo=False, sources_scheduler=False, **settings)
    with TestClient(create_app(built)) as client:
        yield client


def spellings(endpoint: str) -> list[str]:
    """SERVICE as a query may write it, each one calling `endpoint` for pyoxigraph."""
    host = endpoint.removesuffix("/sparql")
    return [
        f"SELECT * WHERE {{ SERVICE <{endpoint}> {{ ?s ?p ?o }} }}",
        f"select * where {{ service silent <{endpoint}> {{ ?s ?p ?o }} }}",
        f"PREFIX e: <{host}/> SELECT * WHERE {{ SERVICE e:sparql {{ ?s ?p ?o }} }}",
        f"PREFIX : <{host}/> SELECT * WHERE {{ SERVICE:sparql {{ ?s ?p ?o }} }}",
        f"BASE <{host}/> SELECT * WHERE {{ SERVICE <sparql> {{ ?s ?p ?o }} }}",
        f"SELECT * WHERE {{ BIND(<{endpoint}> AS ?x) SERVICE ?x {{ ?s ?p ?o }} }}",
        f"SELECT * WHERE {{ ?a ?b ?c FILTER EXISTS {{ SERVICE <{endpoint}> {{ ?s ?p ?o }} }} }}",
        f"SELECT * WHERE {{ {{ SELECT ?s WHERE {{ SERVICE <{endpoint}> {{ ?s ?p ?o }} }} }} }}",
        f"ASK {{ SERVICE <{endpoint}> {{ ?s ?p ?o }} }}",
        f"CONSTRUCT {{ ?s ?p ?o }} WHERE {{ SERVICE <{endpoint}> {{ ?s ?p ?o }} }}",
        # no keyword boundary: oxigraph reads SERVICE then SILENT
        f"SELECT * WHERE {{ SERVICESILENT<{endpoint}> {{ ?s ?p ?o }} }}",
        # a comment ends at \r for oxigraph
        f"SELECT * WHERE {{ # just a comment\rSERVICE <{endpoint}> {{ ?s ?p ?o }} }}",
        # `<` as less-than: what looks like an IRI up to `#>` is an operator, SERVICE, comment
        "SELECT * WHERE { BIND(1 AS ?x) FILTER(?x<2)SERVICE?y#>\n{?s?p?o} }",
        # an escaped quote: rdflib would end the string there, oxigraph does not
        f'SELECT * WHERE {{ VALUES ?v {{ "a\\u0022" }} SERVICE <{endpoint}> {{?s ?p ?o}} }}',
    ]


def ask(client: TestClient, form: str, query: str, **headers: str) -> Any:
    if form == "GET":
        return client.get("/sparql", params={"query": query}, headers=headers)
    if form == "form":
        return client.post("/sparql", data={"query": query}, headers=headers)
    return client.post(
        "/sparql",
        content=query.encode(),
        headers={"Content-Type": "application/sparql-query", **headers},
    )


@pytest.mark.parametrize("form", ["GET", "form", "sparql-query"])
def test_service_is_refused_by_default_in_every_form(listener: Listener, form: str) -> None:
    with app() as client:
        for query in spellings(f"{listener.url}/sparql"):
            for headers in ({}, ADMIN):  # anonymous or admin: off is off
                answer = ask(client, form, query, **headers)
                assert answer.status_code == 400, (query, answer.text)
                problem = answer.json()
                assert problem["type"].endswith("/BadRequestData"), query
                assert "SERVICE" in problem["detail"], query
    assert listener.connections == 0


def test_the_refusal_does_not_depend_on_the_port(listener: Listener) -> None:
    closed = f"http://127.0.0.1:{free_port()}/sparql"
    with app() as client:
        details = {
            ask(client, "GET", f"SELECT * {{ SERVICE <{url}> {{ ?s ?p ?o }} }}").json()["detail"]
            for url in (f"{listener.url}/sparql", closed, "http://169.254.169.254/")
        }
    assert details == {DISABLED}
    assert listener.connections == 0


def test_on_disk_store_and_its_query_workers_too(listener: Listener, tmp_path: Path) -> None:
    with app(data_dir=tmp_path) as client:
        answer = ask(client, "GET", f"SELECT * {{ SERVICE <{listener.url}/s> {{ ?s ?p ?o }} }}")
        assert answer.status_code == 400 and answer.json()["detail"] == DISABLED
    assert listener.connections == 0


def test_update_with_service_is_refused(listener: Listener) -> None:
    update = (
        "INSERT { GRAPH <urn:x:notes> { ?s ?p ?o } } "
        f"WHERE {{ SERVICE <{listener.url}/sparql> {{ ?s ?p ?o }} }}"
    )
    with app() as client:
        answer = client.post(
            "/sparql/update",
            content=update.encode(),
            headers={"Content-Type": "application/sparql-update", **ADMIN},
        )
        assert answer.status_code == 400, answer.text
        assert answer.json()["detail"] == DISABLED
    assert listener.connections == 0


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * WHERE { ?s ?p ?o } # a SERVICE in a comment",
        'SELECT ?x WHERE { BIND("SERVICE <http://127.0.0.1:9/> { }" AS ?x) }',
        "SELECT * WHERE { ?s <http://example.org/service> ?o }",
        "PREFIX sd: <http://www.w3.org/ns/sparql-service-description#> "
        "SELECT * WHERE { ?s a sd:Service }",
        "SELECT ?service WHERE { ?service ?p ?o }",
    ],
)
def test_queries_that_only_mention_service_still_run(query: str) -> None:
    with app() as client:
        answer = ask(client, "GET", query, Accept="application/sparql-results+json")
        assert answer.status_code == 200, answer.text


def test_service_endpoints_are_read_from_the_parsed_query() -> None:
    assert service_endpoints("SELECT * { ?s ?p ?o }") == []
    assert service_endpoints(
        "PREFIX e: <http://a.example/> SELECT * { SERVICE e:q { ?s ?p ?o } "
        "SERVICE ?v { ?s ?p ?o } }"
    ) == ["http://a.example/q", None]


@pytest.fixture
def remote() -> Iterator[str]:
    """A SPARQL endpoint on loopback that answers one row to any query."""

    class Handler(BaseHTTPRequestHandler):
        def answer(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            body = json.dumps(RESULTS).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/sparql-results+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = answer

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/sparql"
    server.shutdown()
    server.server_close()


def test_allowed_endpoints_work_for_admins_only(remote: str, listener: Listener) -> None:
    with app(sparql_service_allow=[remote]) as client:
        query = f"SELECT ?x WHERE {{ SERVICE <{remote}> {{ ?x ?p ?o }} }}"
        accept = {"Accept": "application/sparql-results+json"}
        anonymous = ask(client, "GET", query, **accept)
        assert anonymous.status_code == 403, anonymous.text
        answer = ask(client, "GET", query, **ADMIN, **accept)
        assert answer.status_code == 200, answer.text
        assert answer.json()["results"]["bindings"] == [
            {"x": {"type": "literal", "value": "remote"}}
        ]
        for other in (
            f"SELECT * {{ SERVICE <{remote}> {{ ?s ?p ?o }} "
            f"SERVICE <{listener.url}/s> {{ ?s ?p ?o }} }}",
            f"SELECT * {{ BIND(<{remote}> AS ?x) SERVICE ?x {{ ?s ?p ?o }} }}",
            f"SELECT * {{ SERVICE <{remote}\\u0041> {{ ?s ?p ?o }} }}",
        ):
            refused = ask(client, "GET", other, **ADMIN)
            assert refused.status_code == 400, (other, refused.text)
    assert listener.connections == 0
