"""Loads the packaged vocabulary and SHACL shapes and validates the twin's plain RDF view.

The shapes (ontology/shapes/*.ttl) describe the researchers' view that twin/rdf.py writes, so a
connector or a test can check a dataset graph the same way a researcher's tool would see it.
pyshacl works on rdflib graphs: quads from the store are copied once through N-Triples, which
is fast enough for a dataset of a few thousand entities (the demo city: about a second).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import pyoxigraph
import rdflib
from pyshacl import validate as pyshacl_validate

from urbis.ontology import ns

SH = rdflib.Namespace("http://www.w3.org/ns/shacl#")
_DATA = resources.files("urbis.ontology")


def _load(folder: str) -> rdflib.Graph:
    graph = rdflib.Graph()
    for entry in sorted(_DATA.joinpath(folder).iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".ttl"):
            graph.parse(data=entry.read_text(encoding="utf-8"), format="turtle")
    return graph


@lru_cache(maxsize=1)
def shapes_graph() -> rdflib.Graph:
    """Every SHACL shape of ontology/shapes/ in one graph (parsed once; do not modify it)."""
    return _load("shapes")


@lru_cache(maxsize=1)
def vocabulary_graph() -> rdflib.Graph:
    """The Urbis vocabulary and its alignments (ontology/vocab/), parsed once."""
    return _load("vocab")


@lru_cache(maxsize=1)
def prefixes() -> dict[str, str]:
    """Prefix -> namespace of every namespace the twin writes (sh:declare in vocab/urbis.ttl)."""
    graph = vocabulary_graph()
    out = {
        str(graph.value(decl, SH.prefix)): str(graph.value(decl, SH.namespace))
        for decl in graph.objects(None, SH.declare)
    }
    return dict(sorted(out.items()))


def sparql_prefixes() -> str:
    """The prefixes as a SPARQL prologue."""
    return "".join(f"PREFIX {p}: <{iri}>\n" for p, iri in prefixes().items())


@dataclass(frozen=True)
class Violation:
    """One SHACL result: which node, which property path, what is wrong."""

    focus: str
    path: str | None
    message: str
    severity: str
    shape: str | None


@dataclass(frozen=True)
class Report:
    conforms: bool
    violations: list[Violation]
    text: str

    def paths(self, focus: str | None = None) -> set[str]:
        """The property paths reported (for one focus node if given)."""
        return {
            v.path
            for v in self.violations
            if v.path is not None and (focus is None or v.focus == focus)
        }


def graph_from_quads(quads: Iterable[pyoxigraph.Quad]) -> rdflib.Graph:
    """The triples of store quads as one rdflib graph (the union of their graphs)."""
    triples = (pyoxigraph.Triple(q.subject, q.predicate, q.object) for q in quads)
    data = pyoxigraph.serialize(triples, format=pyoxigraph.RdfFormat.N_TRIPLES)
    graph = rdflib.Graph()
    if data:
        graph.parse(data=data.decode("utf-8"), format="nt")
    return graph


def dataset_quads(store: pyoxigraph.Store) -> Iterable[pyoxigraph.Quad]:
    """The plain view only: every dataset graph, without documents or metadata."""
    for graph in store.named_graphs():
        if isinstance(graph, pyoxigraph.NamedNode) and graph.value.startswith(ns.DATASET_PREFIX):
            yield from store.quads_for_pattern(None, None, None, graph)


def validate(data: rdflib.Graph) -> Report:
    """Validate a data graph (the plain RDF view) against every shape."""
    conforms, results, text = pyshacl_validate(
        data, shacl_graph=shapes_graph(), inference="none", advanced=False, allow_warnings=True
    )
    assert isinstance(results, rdflib.Graph)
    violations = []
    for result in results.subjects(rdflib.RDF.type, SH.ValidationResult):
        path = results.value(result, SH.resultPath)
        shape = results.value(result, SH.sourceShape)
        violations.append(
            Violation(
                focus=str(results.value(result, SH.focusNode)),
                path=str(path) if isinstance(path, rdflib.URIRef) else None,
                message=str(results.value(result, SH.resultMessage) or ""),
                severity=str(results.value(result, SH.resultSeverity)).rsplit("#", 1)[-1],
                shape=str(shape) if isinstance(shape, rdflib.URIRef) else None,
            )
        )
    return Report(conforms=bool(conforms), violations=violations, text=str(text))
