"""Issue 8 item 1: the SPARQL tokenizers (spatial rewrite, remote-store rewrite) are linear.

Their prefixed-name alternative rescanned every run of name characters without a ':' from each
start position ("a-a-a-...": 12 s of CPU for 40 KB, anonymous), and the remote-store one
rescanned unterminated strings ("'\\'\\'\\'..."). The Link header of an NGSI-LD source is read
by the linear parser of the API (twin/linkheader.py), not by a regex of its own.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient

from urbis.connectors.base import Cursor
from urbis.connectors.definition import SourceDefinition
from urbis.connectors.ngsild import NgsiLdConnector
from urbis.twin.errors import ERROR_BASE
from urbis.twin.geo import geosparql
from urbis.twin.outbound import OutboundGuard
from urbis.twin.store.sparql_text import rewrite, tokens

# Units repeated into long runs: name characters with '-', '.', digits, non-ASCII letters and
# no ':', quotes with escapes, '<' without '>', triple quotes.
UNITS = ["a-", "a.", "a1", "1a-", "a_b-", "\u00e9-", "a\u00e9", "'\\", '"\\', '"""\\"', "<a", "<"]
LIMIT = 100_000  # characters: the default sparql_max_query_length
REPRODUCER = "SELECT * WHERE { ?s ?p ?o } # distance " + "a-" * 20000  # the query


def _query(unit: str, size: int) -> str:
    """A query with the run inside its text (not a comment), naming a spatial hint."""
    head, tail = "SELECT * WHERE { ?s ?p ?o FILTER(?o = ", ") } # distance"
    return head + unit * ((size - len(head) - len(tail)) // len(unit)) + tail


def _cpu(run: Callable[[], Any]) -> float:
    """The least CPU time of three runs (this process, every thread: the query's too)."""
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        run()
        best = min(best, time.process_time() - started)
    return best


def _to_stored(graph: str) -> str:
    return "urn:urbis:tenant:t:" + graph


def _post(client: TestClient, query: str) -> Any:
    headers = {"Content-Type": "application/sparql-query"}
    return client.post("/sparql", content=query, headers=headers)


def _assert_answered(response: Any) -> None:
    """200, or a precise NGSI-LD 400 problem: never a 500."""
    assert response.status_code in (200, 400), response.text[:300]
    if response.status_code == 400:
        assert response.json()["type"].startswith(ERROR_BASE)


def test_the_reproducer_is_answered_promptly(anonymous: TestClient) -> None:
    started = time.monotonic()
    response = _post(anonymous, REPRODUCER)
    assert time.monotonic() - started < 10
    assert response.status_code == 200
    assert response.json()["results"]["bindings"] == []


@pytest.mark.parametrize("unit", UNITS)
def test_post_sparql_cost_is_linear(anonymous: TestClient, unit: str) -> None:
    small, large = _query(unit, 2_500), _query(unit, 20_000)
    _assert_answered(_post(anonymous, small))
    small_time = _cpu(lambda: _post(anonymous, small))
    large_time = _cpu(lambda: _post(anonymous, large))
    assert large_time < 16 * small_time + 0.1  # 8x the input: at most ~2x the cost per byte


@pytest.mark.parametrize("unit", UNITS)
def test_post_sparql_at_the_length_limit_is_prompt(anonymous: TestClient, unit: str) -> None:
    query = _query(unit, LIMIT)
    started = time.monotonic()
    response = _post(anonymous, query)
    assert time.monotonic() - started < 10  # the quadratic tokenizer took over a minute
    _assert_answered(response)


@pytest.mark.parametrize("unit", UNITS)
def test_remote_store_rewrite_is_linear(unit: str) -> None:
    small, large = _query(unit, 5_000), _query(unit, 40_000)
    small_time = _cpu(lambda: rewrite(small, _to_stored))
    large_time = _cpu(lambda: rewrite(large, _to_stored))
    assert large_time < 16 * small_time + 0.05
    started = time.process_time()
    rewrite(_query(unit, LIMIT), _to_stored)
    assert time.process_time() - started < 2


@pytest.mark.parametrize("unit", UNITS)
def test_spatial_tokenizer_is_linear(unit: str) -> None:
    def tokenize(text: str) -> None:
        with contextlib.suppress(geosparql._Unsupported):  # the query then runs unchanged
            geosparql._tokenize(text)

    small, large = _query(unit, 5_000), _query(unit, 40_000)
    small_time, large_time = _cpu(lambda: tokenize(small)), _cpu(lambda: tokenize(large))
    assert large_time < 16 * small_time + 0.05
    started = time.process_time()
    tokenize(_query(unit, LIMIT))
    assert time.process_time() - started < 2


def test_runs_are_still_tokenized_exactly() -> None:
    # A run without ':' is words and punctuation; a run with one is a single prefixed name.
    assert [t for t in tokens("a-b.c d-e.f:g") if t[0] != "ws"] == [
        ("word", "a"),
        ("other", "-"),
        ("word", "b"),
        ("other", "."),
        ("word", "c"),
        ("pname", "d-e.f:g"),
    ]
    spatial = [(t.kind, t.text) for t in geosparql._tokenize("a-b d-e:f")]
    assert spatial == [("word", "a"), ("punct", "-"), ("word", "b"), ("pname", "d-e:f")]


def test_an_unterminated_string_hides_no_graph_from_the_rewrite() -> None:
    # Strings skipped as unclosed must still let the rewriter see the graph IRIs after them.
    for text in ("SELECT * { '\\' GRAPH <g> { ?s ?p ?o } }", 'SELECT * { """\\" GRAPH <g> {} }'):
        rewritten = rewrite(text, _to_stored)
        assert "<urn:urbis:tenant:t:g>" in rewritten.text and "<g>" not in rewritten.text
    closed = rewrite("SELECT * { ?s ?p 'GRAPH <g>' . GRAPH <h> {} }", _to_stored)
    assert "'GRAPH <g>'" in closed.text and "<urn:urbis:tenant:t:h>" in closed.text


# -- the NGSI-LD connector's Link header --------------------------------------------------

LOOPBACK = OutboundGuard(allow_loopback=True)
CONTEXT = "https://example.org/vendor.jsonld"
CONTEXT_REL = "http://www.w3.org/ns/json-ld#context"


@contextlib.contextmanager
def _broker(link: str) -> Iterator[str]:
    """A loopback NGSI-LD broker answering every GET with one entity and this Link header."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'[{"id": "urn:ngsi-ld:Bin:1", "type": "Bin"}]'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Link", link)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _pull(base: str) -> list[Any]:
    source = SourceDefinition(
        id="vendor",
        kind="ngsild",
        endpoint=base,
        options={"type": "Bin", "accept": "application/json"},
    )
    connector = NgsiLdConnector(source, guard=LOOPBACK)
    try:
        return list(connector.fetch(Cursor()))
    finally:
        connector.close()


def test_a_hostile_link_header_from_a_source_is_refused_promptly() -> None:
    with _broker("<" * 64000) as base:  # the old regex took minutes on it
        started = time.monotonic()
        with pytest.raises(ValueError, match="Link header"):
            _pull(base)
        assert time.monotonic() - started < 10


def test_a_long_valid_link_header_gives_the_context_promptly() -> None:
    link = '<https://example.org/x>; rel="next", ' * 1500 + f'<{CONTEXT}>; rel="{CONTEXT_REL}"'
    with _broker(link) as base:
        started = time.monotonic()
        records = _pull(base)
        assert time.monotonic() - started < 10
        assert [r.context for r in records] == [CONTEXT]
