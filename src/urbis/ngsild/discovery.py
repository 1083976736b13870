"""What types and attributes the twin holds (NGSI-LD discovery, clause 5.7.5-5.7.8).

Counts and names come from aggregate SPARQL over the plain triples; attribute types (Property,
Relationship, ...) come from one sample document per attribute, since the plain triples do not
say whether an IRI object is a Relationship or a VocabProperty.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from urbis.ontology import ns
from urbis.twin.entities import EntityService
from urbis.twin.query.sparql import iri

_DOC = f"GRAPH {iri(ns.ENTITIES_GRAPH)} {{ ?e {iri(ns.URBIS + 'document')} ?doc }}"
# Triples of the entity that are no attribute: its types, scope (an entity member), the
# location shortcut, and the broker's bookkeeping (urbis:document, urbis:dataset).
_SKIPPED = {ns.RDF + "type", ns.NGSI_LD + "scope", ns.GEO + "hasGeometry"} | ns.INTERNAL_PREDICATES
_NOT_ATTRS = ", ".join(iri(p) for p in sorted(_SKIPPED))


@dataclass
class AttributeInfo:
    iri: str
    count: int = 0
    types: set[str] = field(default_factory=set)
    type_names: set[str] = field(default_factory=set)


@dataclass
class TypeInfo:
    iri: str
    count: int = 0
    attributes: dict[str, AttributeInfo] = field(default_factory=dict)


def types(service: EntityService, only: str | None = None) -> dict[str, TypeInfo]:
    """Every entity type (or one) with its entity count and attributes."""
    bind = f"VALUES ?t {{ {iri(only)} }}" if only else ""
    found: dict[str, TypeInfo] = {}
    for t, n in service.store.select(
        f"SELECT ?t (COUNT(DISTINCT ?e) AS ?n) WHERE {{ {bind} ?e a ?t . {_DOC} }} GROUP BY ?t"
    ):
        if t is not None and n is not None:
            found[t] = TypeInfo(t, int(n))
    rows = service.store.select(
        f"SELECT ?t ?p (COUNT(DISTINCT ?e) AS ?n) (SAMPLE(?e) AS ?ex) WHERE {{ {bind} "
        f"?e a ?t . {_DOC} ?e ?p ?o . FILTER(?p NOT IN ({_NOT_ATTRS})) }} GROUP BY ?t ?p"
    )
    samples: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for t, p, n, ex in rows:
        if t is None or p is None or n is None or ex is None or t not in found:
            continue
        info = AttributeInfo(p, int(n), type_names={t})
        found[t].attributes[p] = info
        samples[ex].append((t, p))
    docs = service.get_many(list(samples))
    for entity_id, pairs in samples.items():
        if entity_id not in docs:
            continue
        doc = docs[entity_id][0]
        for t, p in pairs:
            for inst in doc.get(p, []):
                found[t].attributes[p].types.add(inst.get("type", "Property"))
    return found


def attributes(service: EntityService, only: str | None = None) -> dict[str, AttributeInfo]:
    """Every attribute (or one) with the types that use it and its attribute types."""
    merged: dict[str, AttributeInfo] = {}
    counts: dict[str, int] = {}
    bind = f"VALUES ?p {{ {iri(only)} }}" if only else ""
    for p, n in service.store.select(
        f"SELECT ?p (COUNT(DISTINCT ?e) AS ?n) WHERE {{ {bind} {_DOC} ?e ?p ?o . "
        f"FILTER(?p NOT IN ({_NOT_ATTRS})) }} GROUP BY ?p"
    ):
        if p is not None and n is not None:
            counts[p] = int(n)
    for type_info in types(service).values():
        for attr in type_info.attributes.values():
            if only is not None and attr.iri != only:
                continue
            target = merged.setdefault(attr.iri, AttributeInfo(attr.iri))
            target.types |= attr.types
            target.type_names |= attr.type_names
    for name, info in merged.items():
        info.count = counts.get(name, 0)
    return merged
