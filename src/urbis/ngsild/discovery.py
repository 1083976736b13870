"""What types and attributes the twin holds (NGSI-LD discovery, clause 5.7.5-5.7.8).

Counts and names come from aggregate SPARQL over the plain triples; attribute types (Property,
Relationship, ...) come from one sample document per attribute, since the plain triples do not
say whether an IRI object is a Relationship or a VocabProperty.

Discovery answers for one caller (the access port, twin/access.py): a caller restricted to some
graphs gets the same aggregates over the entities of those graphs only; a caller whose
documents the policy transforms gets them from the documents as it sees them, so no type or
attribute shows that only hidden entities or removed attributes hold.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from urbis.ontology import ns
from urbis.twin.caller_view import CallerView
from urbis.twin.entities import EntityService
from urbis.twin.query.plan import EntityQuery
from urbis.twin.query.sparql import iri
from urbis.twin.query.typeexpr import TypeName
from urbis.twin.writes import attribute_items

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


def types(view: CallerView, only: str | None = None) -> dict[str, TypeInfo]:
    """Every entity type (or one) the caller can see, with its entity count and attributes."""
    if view.scope.transforms:
        selected = EntityQuery(types=TypeName(only) if only else None)
        found, _ = _seen(view.documents(selected))
        return {t: info for t, info in found.items() if only is None or t == only}
    return _stored_types(view.service, only, view.scope.graphs)


def attributes(view: CallerView, only: str | None = None) -> dict[str, AttributeInfo]:
    """Every attribute (or one) the caller can see, with the types that use it."""
    if view.scope.transforms:
        per_type, counts = _seen(view.documents(EntityQuery()))
    else:
        per_type = _stored_types(view.service, None, view.scope.graphs)
        counts = _stored_counts(view.service, only, view.scope.graphs)
    merged: dict[str, AttributeInfo] = {}
    for type_info in per_type.values():
        for attr in type_info.attributes.values():
            if only is not None and attr.iri != only:
                continue
            target = merged.setdefault(attr.iri, AttributeInfo(attr.iri))
            target.types |= attr.types
            target.type_names |= attr.type_names
    for name, info in merged.items():
        info.count = counts.get(name, 0)
    return merged


# -- from the stored triples ----------------------------------------------------------------


def _where(graphs: frozenset[str] | None, before: str, after: str = "") -> str:
    """Patterns on the entity's triples around its document: from any graph, or only from its
    own dataset graph when the caller reads some graphs only (so triples written elsewhere
    about it stay out of reach too)."""
    if graphs is None:
        return f"{before} {_DOC} {after}"
    values = " ".join(iri(g) for g in sorted(graphs))
    return (
        f"VALUES ?entityGraph {{ {values} }} {_DOC} GRAPH {iri(ns.ENTITIES_GRAPH)} "
        f"{{ ?e {iri(ns.URBIS + 'dataset')} ?entityGraph }} "
        f"GRAPH ?entityGraph {{ {before} {after} }}"
    )


def _stored_types(
    service: EntityService, only: str | None, graphs: frozenset[str] | None
) -> dict[str, TypeInfo]:
    bind = f"VALUES ?t {{ {iri(only)} }}" if only else ""
    found: dict[str, TypeInfo] = {}
    where = _where(graphs, "?e a ?t .")
    for t, n in service.select(
        f"SELECT ?t (COUNT(DISTINCT ?e) AS ?n) WHERE {{ {bind} {where} }} GROUP BY ?t"
    ):
        if t is not None and n is not None:
            found[t] = TypeInfo(t, int(n))
    where = _where(graphs, "?e a ?t .", "?e ?p ?o .")
    rows = service.select(
        f"SELECT ?t ?p (COUNT(DISTINCT ?e) AS ?n) (SAMPLE(?e) AS ?ex) WHERE {{ {bind} "
        f"{where} FILTER(?p NOT IN ({_NOT_ATTRS})) }} GROUP BY ?t ?p"
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


def _stored_counts(
    service: EntityService, only: str | None, graphs: frozenset[str] | None
) -> dict[str, int]:
    counts: dict[str, int] = {}
    bind = f"VALUES ?p {{ {iri(only)} }}" if only else ""
    where = _where(graphs, "", "?e ?p ?o .")
    for p, n in service.select(
        f"SELECT ?p (COUNT(DISTINCT ?e) AS ?n) WHERE {{ {bind} {where} "
        f"FILTER(?p NOT IN ({_NOT_ATTRS})) }} GROUP BY ?p"
    ):
        if p is not None and n is not None:
            counts[p] = int(n)
    return counts


# -- from the documents as the caller sees them -----------------------------------------------


def _seen(docs: Iterable[dict[str, Any]]) -> tuple[dict[str, TypeInfo], dict[str, int]]:
    """Types with their attributes, and entities per attribute, counted over `docs`."""
    found: dict[str, TypeInfo] = {}
    counts: dict[str, int] = defaultdict(int)
    for doc in docs:
        attrs = dict(attribute_items(doc))
        for name in attrs:
            counts[name] += 1
        for t in doc.get("type", []):
            info = found.setdefault(t, TypeInfo(t))
            info.count += 1
            for name, instances in attrs.items():
                attr = info.attributes.setdefault(name, AttributeInfo(name, type_names={t}))
                attr.count += 1
                attr.types.update(
                    i.get("type", "Property") for i in instances if isinstance(i, dict)
                )
    return found, counts
