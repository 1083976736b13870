"""Canonical NGSI-LD documents -> RDF quads (the model in ontology/README.md).

One entity becomes plain current-value triples in its dataset graph (what researchers query)
plus its canonical JSON in the entities graph (what NGSI-LD clients get back). Both are built
here so that one store transaction always writes the two views together.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import orjson
from pyoxigraph import Literal, NamedNode, Quad

from twin import ns
from twin.geo import parse_geometry, wkt_literal
from twin.query.qlang import TemporalKind, xsd_lexical

XSD_STRING = NamedNode(ns.XSD + "string")
XSD_INTEGER = NamedNode(ns.XSD + "integer")
XSD_DOUBLE = NamedNode(ns.XSD + "double")
XSD_BOOLEAN = NamedNode(ns.XSD + "boolean")
XSD_DATETIME = NamedNode(ns.XSD + "dateTime")
XSD_DATE = NamedNode(ns.XSD + "date")
XSD_TIME = NamedNode(ns.XSD + "time")
RDF_JSON = NamedNode(ns.RDF + "JSON")
RDF_TYPE = NamedNode(ns.RDF + "type")
GEO_GEOMETRY = NamedNode(ns.GEO + "Geometry")
GEO_HAS_GEOMETRY = NamedNode(ns.GEO + "hasGeometry")
GEO_AS_WKT = NamedNode(ns.GEO + "asWKT")
GEO_WKT_LITERAL = NamedNode(ns.GEO + "wktLiteral")
URBIS_DOCUMENT = NamedNode(ns.URBIS + "document")
URBIS_DATASET = NamedNode(ns.URBIS + "dataset")
ENTITIES_GRAPH = NamedNode(ns.ENTITIES_GRAPH)
LOCATION = ns.NGSI_LD + "location"
SCOPE = NamedNode(ns.NGSI_LD + "scope")

_TEMPORAL: dict[str, tuple[NamedNode, TemporalKind]] = {
    "DateTime": (XSD_DATETIME, "dateTime"),
    "Date": (XSD_DATE, "date"),
    "Time": (XSD_TIME, "time"),
}
_TEMPORAL.update({ns.NGSI_LD + k: v for k, v in list(_TEMPORAL.items())})
# An attribute instance whose value yields no triple (empty array, null) still exists.
EMPTY = NamedNode(ns.RDF + "nil")


def dataset_graph(name: str) -> str:
    """The named graph of a dataset: `urn:urbis:dataset:<name>`."""
    return ns.DATASET_PREFIX + name


def geometry_node(entity_id: str, attr: str, dataset_id: str | None) -> NamedNode:
    """Deterministic IRI of a GeoProperty instance's geometry, so rewrites replace it."""
    key = f"{entity_id}\x00{attr}\x00{dataset_id or ''}".encode()
    return NamedNode("urn:urbis:geometry:" + hashlib.sha1(key).hexdigest()[:24])


def json_literal(value: Any) -> Literal:
    return Literal(orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode(), datatype=RDF_JSON)


def value_literal(value: Any) -> Literal | None:
    """The typed literal of one primitive or structured Property value (None for JSON null)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return Literal("true" if value else "false", datatype=XSD_BOOLEAN)
    if isinstance(value, int):
        return Literal(str(value), datatype=XSD_INTEGER)
    if isinstance(value, float):
        return Literal(repr(value), datatype=XSD_DOUBLE)
    if isinstance(value, str):
        return Literal(value)
    if isinstance(value, dict) and "@value" in value:
        temporal = _temporal_literal(value)
        if temporal is not None:
            return temporal
        inner = value["@value"]
        if not isinstance(inner, dict | list):
            return value_literal(inner)
    return json_literal(value)


def _temporal_literal(value: dict[str, Any]) -> Literal | None:
    """DateTime/Date/Time in strict XSD form (seconds, `+01:00`), so the store can compare them."""
    kind = _TEMPORAL.get(str(value.get("@type", "")))
    text = value.get("@value")
    if kind is None or not isinstance(text, str):
        return None
    datatype, name = kind
    try:
        return Literal(xsd_lexical(name, text), datatype=datatype)
    except ValueError:
        return Literal(text, datatype=datatype)


def _values(value: Any) -> Iterator[Any]:
    """An array becomes one triple per element (structured elements as rdf:JSON)."""
    if isinstance(value, list):
        yield from value
    else:
        yield value


def instance_objects(
    entity_id: str, attr: str, instance: dict[str, Any], graph: NamedNode
) -> Iterator[Quad]:
    """Plain triples for one attribute instance: at least one, so that `attr` exists in SPARQL."""
    produced = False
    for quad in _instance_objects(entity_id, attr, instance, graph):
        produced = True
        yield quad
    if not produced:
        yield Quad(NamedNode(entity_id), NamedNode(attr), EMPTY, graph)


def _instance_objects(
    entity_id: str, attr: str, instance: dict[str, Any], graph: NamedNode
) -> Iterator[Quad]:
    subject = NamedNode(entity_id)
    predicate = NamedNode(attr)
    kind = instance.get("type")
    if kind == "Relationship" or kind == "ListRelationship":
        objects = (
            instance.get("objectList") if kind == "ListRelationship" else instance.get("object")
        )
        targets = objects if isinstance(objects, list) else [objects]
        for target in targets:
            if isinstance(target, dict):  # ListRelationship items may be {"object": iri}
                target = target.get("object")
            if isinstance(target, str):
                yield Quad(subject, predicate, NamedNode(target), graph)
    elif kind == "GeoProperty":
        node = geometry_node(entity_id, attr, instance.get("datasetId"))
        wkt = wkt_literal(parse_geometry(instance["value"]))
        yield Quad(subject, predicate, node, graph)
        if attr == LOCATION:
            yield Quad(subject, GEO_HAS_GEOMETRY, node, graph)
        yield Quad(node, RDF_TYPE, GEO_GEOMETRY, graph)
        yield Quad(node, GEO_AS_WKT, Literal(wkt, datatype=GEO_WKT_LITERAL), graph)
    elif kind == "LanguageProperty":
        for lang, text in (instance.get("languageMap") or {}).items():
            for item in text if isinstance(text, list) else [text]:
                if lang == "@none":
                    yield Quad(subject, predicate, Literal(str(item)), graph)
                else:
                    yield Quad(subject, predicate, Literal(str(item), language=lang), graph)
    elif kind == "VocabProperty":
        vocab = instance.get("vocab")
        for item in vocab if isinstance(vocab, list) else [vocab]:
            if isinstance(item, str):
                yield Quad(subject, predicate, NamedNode(item), graph)
    elif kind == "JsonProperty":
        yield Quad(subject, predicate, json_literal(instance.get("json")), graph)
    else:
        raw = instance.get("valueList") if kind == "ListProperty" else instance.get("value")
        for item in _values(raw):
            literal = value_literal(item)
            if literal is not None:
                yield Quad(subject, predicate, literal, graph)


def plain_quads(doc: dict[str, Any], graph: str) -> list[Quad]:
    """The researchers' view of one canonical document."""
    g = NamedNode(graph)
    entity_id = doc["id"]
    subject = NamedNode(entity_id)
    out = [Quad(subject, RDF_TYPE, NamedNode(t), g) for t in doc["type"]]
    out.extend(Quad(subject, SCOPE, Literal(s), g) for s in doc.get("scope", ()))
    for attr, instances in doc.items():
        if not isinstance(instances, list) or attr in ("type", "scope"):
            continue
        for instance in instances:
            out.extend(instance_objects(entity_id, attr, instance, g))
    return out


def document_quads(doc: dict[str, Any], graph: str) -> list[Quad]:
    """The canonical document and the dataset the entity belongs to."""
    subject = NamedNode(doc["id"])
    return [
        Quad(
            subject, URBIS_DOCUMENT, Literal(dump_document(doc), datatype=RDF_JSON), ENTITIES_GRAPH
        ),
        Quad(subject, URBIS_DATASET, NamedNode(graph), ENTITIES_GRAPH),
    ]


def entity_quads(doc: dict[str, Any], graph: str) -> list[Quad]:
    """All quads one entity contributes to the store."""
    return plain_quads(doc, graph) + document_quads(doc, graph)


def dump_document(doc: dict[str, Any]) -> str:
    return orjson.dumps(doc).decode()


def load_document(text: str) -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads(text)
    return loaded
