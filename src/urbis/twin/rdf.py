"""Canonical NGSI-LD documents -> RDF quads (the model in ontology/README.md).

One entity becomes plain current-value triples in its dataset graph (what researchers query)
plus its canonical JSON in the entities graph (what NGSI-LD clients get back). Both are built
here so that one store transaction always writes the two views together.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any
from urllib.parse import quote, unquote

import orjson
from pyoxigraph import Literal, NamedNode, Quad

from urbis.ontology import ns
from urbis.twin.geo import geojson_wkt
from urbis.twin.query.qlang import TemporalKind, xsd_lexical

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


GEOMETRY_PREFIX = "urn:urbis:geometry:"


def geometry_node(entity_id: str, attr: str, dataset_id: str | None) -> NamedNode:
    """The IRI of a GeoProperty instance's geometry: deterministic, so rewrites replace it, and
    reversible, so the spatial index rebuilds from one scan of `geo:asWKT` at start."""
    return NamedNode(
        f"{GEOMETRY_PREFIX}{_quote_part(entity_id)}/{_quoted_name(attr)}/"
        f"{_quoted_name(dataset_id) if dataset_id else ''}"
    )


# `quote(text, safe="")` for ASCII text by one str.translate (urllib's quote costs ~4 us a call,
# three calls per GeoProperty on the write path).
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")
_QUOTE_ASCII = {c: f"%{c:02X}" for c in range(128) if chr(c) not in _UNRESERVED}


def _quote_part(text: str) -> str:
    return text.translate(_QUOTE_ASCII) if text.isascii() else quote(text, safe="")


@lru_cache(maxsize=4096)
def _quoted_name(text: str) -> str:
    """Attribute IRIs and datasetIds repeat across entities: quote each once."""
    return _quote_part(text)


def geometry_owner(node_iri: str) -> tuple[str, str, str | None] | None:
    """(entity id, attribute IRI, datasetId) of a geometry node, None for foreign nodes."""
    if not node_iri.startswith(GEOMETRY_PREFIX):
        return None
    parts = node_iri[len(GEOMETRY_PREFIX) :].split("/")
    if len(parts) != 3:
        return None
    entity_id, attr, dataset_id = (unquote(p) for p in parts)
    return entity_id, attr, dataset_id or None


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


@lru_cache(maxsize=65536)
def node(iri: str) -> NamedNode:
    """NamedNodes of attribute and type IRIs repeat across entities: build each once."""
    return NamedNode(iri)


def instance_objects(
    subject: NamedNode, attr: str, instance: dict[str, Any], graph: NamedNode, out: list[Quad]
) -> None:
    """Append the plain triples of one attribute instance: at least one, so `attr` exists."""
    predicate = node(attr)
    before = len(out)
    kind = instance.get("type")
    if kind == "Relationship" or kind == "ListRelationship":
        objects = (
            instance.get("objectList") if kind == "ListRelationship" else instance.get("object")
        )
        for target in objects if isinstance(objects, list) else [objects]:
            if isinstance(target, dict):  # ListRelationship items may be {"object": iri}
                target = target.get("object")
            if isinstance(target, str):
                out.append(Quad(subject, predicate, NamedNode(target), graph))
    elif kind == "GeoProperty":
        geometry = geometry_node(subject.value, attr, instance.get("datasetId"))
        wkt = geojson_wkt(instance["value"])
        out.append(Quad(subject, predicate, geometry, graph))
        if attr == LOCATION:
            out.append(Quad(subject, GEO_HAS_GEOMETRY, geometry, graph))
        out.append(Quad(geometry, RDF_TYPE, GEO_GEOMETRY, graph))
        out.append(Quad(geometry, GEO_AS_WKT, Literal(wkt, datatype=GEO_WKT_LITERAL), graph))
    elif kind == "LanguageProperty":
        for lang, text in (instance.get("languageMap") or {}).items():
            for item in text if isinstance(text, list) else [text]:
                literal = (
                    Literal(str(item)) if lang == "@none" else Literal(str(item), language=lang)
                )
                out.append(Quad(subject, predicate, literal, graph))
    elif kind == "VocabProperty":
        vocab = instance.get("vocab")
        for item in vocab if isinstance(vocab, list) else [vocab]:
            if isinstance(item, str):
                out.append(Quad(subject, predicate, node(item), graph))
    elif kind == "JsonProperty":
        out.append(Quad(subject, predicate, json_literal(instance.get("json")), graph))
    else:
        raw = instance.get("valueList") if kind == "ListProperty" else instance.get("value")
        for item in raw if isinstance(raw, list) else [raw]:  # one triple per array element
            value = value_literal(item)
            if value is not None:
                out.append(Quad(subject, predicate, value, graph))
    if len(out) == before:
        out.append(Quad(subject, predicate, EMPTY, graph))


def plain_quads(doc: dict[str, Any], graph: str, subject: NamedNode | None = None) -> list[Quad]:
    """The researchers' view of one canonical document."""
    g = node(graph)
    subject = NamedNode(doc["id"]) if subject is None else subject
    out = [Quad(subject, RDF_TYPE, node(t), g) for t in doc["type"]]
    out.extend(Quad(subject, SCOPE, Literal(s), g) for s in doc.get("scope", ()))
    for attr, instances in doc.items():
        if not isinstance(instances, list) or attr in ("type", "scope"):
            continue
        for instance in instances:
            instance_objects(subject, attr, instance, g, out)
    return out


def document_quads(doc: dict[str, Any], graph: str, subject: NamedNode | None = None) -> list[Quad]:
    """The canonical document and the dataset the entity belongs to."""
    subject = NamedNode(doc["id"]) if subject is None else subject
    return [
        Quad(
            subject, URBIS_DOCUMENT, Literal(dump_document(doc), datatype=RDF_JSON), ENTITIES_GRAPH
        ),
        Quad(subject, URBIS_DATASET, node(graph), ENTITIES_GRAPH),
    ]


def entity_quads(doc: dict[str, Any], graph: str) -> list[Quad]:
    """All quads one entity contributes to the store."""
    subject = NamedNode(doc["id"])
    out = plain_quads(doc, graph, subject)
    out.extend(document_quads(doc, graph, subject))
    return out


def dump_document(doc: dict[str, Any]) -> str:
    return orjson.dumps(doc).decode()


def load_document(text: str) -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads(text)
    return loaded
