"""The example SPARQL queries of ontology/README.md run against the demo city and answer."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from urbis.demo.loading import load_demo

README = Path(__file__).resolve().parents[2] / "src" / "urbis" / "ontology" / "README.md"
TEXT = README.read_text()
PREFIXES = re.search(r"```text\n(PREFIX.*?)```", TEXT, re.S)
QUERIES = re.findall(r"```sparql\n(.*?)```", TEXT, re.S)


def test_readme_has_examples() -> None:
    assert PREFIXES is not None and len(QUERIES) >= 6


@pytest.mark.parametrize("query", QUERIES, ids=[f"query{i}" for i in range(len(QUERIES))])
def test_example_query_answers(client: TestClient, query: str) -> None:
    state = client.app.state.urbis  # type: ignore[attr-defined]
    load_demo(state.sources)
    store = state.twin.tenant("").store.store
    assert PREFIXES is not None
    rows = list(store.query(PREFIXES.group(1) + query, use_default_graph_as_union=True))
    assert rows, query
    assert all(row[0] is not None for row in rows)
