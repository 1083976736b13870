"""Which graphs a SPARQL query may see: its dataset, narrowed to what the caller may read.

A query names its dataset in the protocol (`default-graph-uri`, `named-graph-uri`), which
replaces the query's own `FROM` / `FROM NAMED` (SPARQL 1.1 Protocol 2.1.4), or in the query, or
not at all (the union of the tenant's graphs, every named graph). For a caller that the access
port restricts, whichever applies is intersected with the graphs it may read as stored, and
both lists always go to the store, so no `FROM`, `FROM NAMED`, `GRAPH <g>` or `GRAPH ?g` can
reach another graph. An empty list would mean "everything" to the engines: it becomes a graph
named afresh for each query, which nothing can have written to.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from urllib.parse import urljoin

from urbis.twin.store.sparql_text import tokens

NO_GRAPH_PREFIX = "urn:urbis:graph:none:"


def query_dataset(text: str) -> tuple[list[str], list[str]] | None:
    """The FROM and FROM NAMED graphs of a query, None when it has no dataset clause. A graph
    name that cannot be resolved (an unknown prefix) is kept as written, so it matches none."""
    prefixes: dict[str, str] = {}
    base = ""
    default: list[str] = []
    named: list[str] = []
    found = False
    previous: list[str] = []  # significant tokens, words upper-cased
    for kind, value in tokens(text):
        if kind in ("ws", "comment"):
            continue
        upper = value.upper() if kind == "word" else value
        last = previous[-1] if previous else ""
        if kind == "iri" and last == "BASE":
            base = urljoin(base, value[1:-1])
        elif kind == "iri" and len(previous) > 1 and previous[-2] == "PREFIX":
            prefixes[last.removesuffix(":")] = urljoin(base, value[1:-1])
        elif kind in ("iri", "pname") and last in ("FROM", "NAMED"):
            found = True
            graph = _resolve(kind, value, base, prefixes)
            named_clause = last == "NAMED" and len(previous) > 1 and previous[-2] == "FROM"
            (named if named_clause else default).append(graph)
        previous.append(upper)
    return (default, named) if found else None


def _resolve(kind: str, value: str, base: str, prefixes: dict[str, str]) -> str:
    if kind == "iri":
        return urljoin(base, value[1:-1]) if base else value[1:-1]
    prefix, _, local = value.partition(":")
    namespace = prefixes.get(prefix)
    return value if namespace is None else namespace + local.replace("\\", "")


def visible_dataset(
    text: str,
    default_graphs: Sequence[str],
    named_graphs: Sequence[str],
    visible: frozenset[str],
) -> tuple[list[str], list[str]]:
    """The default and named graphs to run a query over, for a caller who may read `visible`.

    Mirrors what the store does for an unrestricted caller: a protocol dataset that names only
    one side leaves the other at its default (the union, every named graph); a query's own
    dataset clause that names one side leaves the other empty (SPARQL 1.1 section 13.2).
    """
    everything = sorted(visible)
    if default_graphs or named_graphs:
        default = list(default_graphs) or everything
        named = list(named_graphs) or everything
    elif (clause := query_dataset(text)) is not None:
        default, named = clause
    else:
        default, named = everything, everything
    return _within(default, visible), _within(named, visible)


def _within(graphs: Sequence[str], visible: frozenset[str]) -> list[str]:
    return list(dict.fromkeys(g for g in graphs if g in visible)) or [no_graph()]


def no_graph() -> str:
    """A graph that holds nothing: not the remote store's reserved name, which the default
    tenant may not use, and not one an update could have filled beforehand."""
    return NO_GRAPH_PREFIX + uuid.uuid4().hex
