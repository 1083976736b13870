"""SPARQL Update on the twin without breaking it: what an update may write, and what follows.

The rule: an update may write any graph except the ones the twin derives from NGSI-LD
entities: the documents graph (`urn:urbis:graph:entities`), the dataset graphs
(`urn:urbis:dataset:*`) and the other `urn:urbis:graph:*` graphs the twin maintains (metadata).
Every entity write keeps a document and its triples in step and diffs the quads it replaces; a
SPARQL edit of either view would be undone, duplicated or silently kept apart from the other by
the next NGSI-LD write. Entities change through the NGSI-LD API; researchers' own graphs
(annotations, links, derived data) change through SPARQL Update.

Graphs are read from the parsed update (rdflib's SPARQL parser: prefixes, BASE and `\\u`
escapes are resolved). An operation whose target graph is a variable (`GRAPH ?g` in a
template), `ALL` or `NAMED` could reach a managed graph, so it is refused; `LOAD` is refused
because it fetches from the network.

After an update the tenant's spatial index is rebuilt from the store (the same scan as at
start-up), so the index always equals what a restart would build.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from rdflib.plugins.sparql.algebra import translateUpdate
from rdflib.plugins.sparql.parser import parseUpdate
from rdflib.plugins.sparql.sparql import Update
from rdflib.term import Variable

from urbis.ontology import ns
from urbis.twin.entities import EntityService
from urbis.twin.errors import BadRequestData, Forbidden

MANAGED_PREFIXES = (ns.DATASET_PREFIX, "urn:urbis:graph:")
DEFAULT = "DEFAULT"  # the store's default graph (not a twin graph)


def is_managed(graph: str) -> bool:
    return graph.startswith(MANAGED_PREFIXES)


def target_graphs(update: str) -> set[str]:
    """Every graph the update may write ("DEFAULT" for the default graph).

    Raises BadRequestData for a malformed update and Forbidden for a target that cannot be
    known before running it.
    """
    try:
        parsed = translateUpdate(parseUpdate(update))
    except Exception as error:  # pyparsing's ParseException and friends
        raise BadRequestData(f"invalid SPARQL update: {error}") from None
    if not isinstance(parsed, Update):  # a bare list: no operation at all, which is valid
        return set()  # SPARQL (an empty update, or a prologue alone) that writes nothing
    graphs: set[str] = set()
    for op in parsed.algebra:
        graphs.update(_targets(op))
    return graphs


def _targets(op: Any) -> Iterator[str]:
    name = op.name
    if name in ("InsertData", "DeleteData", "DeleteWhere"):
        yield from _template_graphs(op, None)
    elif name == "Modify":
        with_graph = op.get("withClause")
        for part in (op.get("delete"), op.get("insert")):
            if part is not None:
                yield from _template_graphs(part, with_graph)
    elif name in ("Clear", "Drop", "Create"):
        yield _named(op.graphiri, name)
    elif name in ("Add", "Copy"):
        yield _named(op.graph[1], name)
    elif name == "Move":
        yield _named(op.graph[0], name)
        yield _named(op.graph[1], name)
    elif name == "Load":
        raise Forbidden("LOAD is not allowed: insert the data with INSERT DATA instead")
    else:
        raise Forbidden(f"SPARQL Update operation {name} is not supported here")


def _template_graphs(part: Any, with_graph: Any) -> Iterator[str]:
    if part.get("triples"):
        yield _named(with_graph, "the template") if with_graph is not None else DEFAULT
    for graph in part.get("quads") or {}:
        yield _named(graph, "GRAPH")


def _named(graph: Any, where: str) -> str:
    if isinstance(graph, Variable) or graph in ("ALL", "NAMED"):
        label = f"?{graph}" if isinstance(graph, Variable) else str(graph)
        raise Forbidden(
            f"{where} {label} could write the twin's own graphs; name the target graph "
            "(GRAPH <iri>), which must not be urn:urbis:dataset:* or urn:urbis:graph:*"
        )
    return DEFAULT if graph == "DEFAULT" else str(graph)


def check_update(update: str) -> set[str]:
    """The target graphs, or Forbidden when one of them is managed by the twin."""
    graphs = target_graphs(update)
    managed = sorted(g for g in graphs if is_managed(g))
    if managed:
        raise Forbidden(
            f"SPARQL Update may not write {', '.join(managed)}: the twin derives these graphs "
            "from NGSI-LD entities; change entities through the NGSI-LD API, or write your "
            "own graph"
        )
    return graphs


def apply_update(service: EntityService, update: str) -> set[str]:
    """Check, run atomically under the tenant's write lock, rebuild the spatial index."""
    graphs = check_update(update)
    service.sparql_update(update)
    return graphs


def graphs_text(graphs: Iterable[str]) -> str:
    return ", ".join(sorted(graphs)) or "(none)"
