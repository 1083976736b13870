"""NGSI-LD entities in and out: validation into the canonical document, rendering back out.

Input may be normalized or concise (ETSI GS CIM 009 v1.8 clause 4.5); everything is checked
before anything is stored, so a bad attribute rejects the whole entity. The canonical form is
described in ontology/README.md.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from pyoxigraph import Literal

from urbis.ontology import ns
from urbis.twin.errors import BadRequestData
from urbis.twin.geo import GEOMETRY_TYPES, parse_geometry, point_position
from urbis.twin.iri import valid_iri
from urbis.twin.terms import Terms

ATTRIBUTE_TYPES = frozenset(
    {
        "Property",
        "Relationship",
        "GeoProperty",
        "LanguageProperty",
        "VocabProperty",
        "JsonProperty",
        "ListProperty",
        "ListRelationship",
    }
)
# The member that carries each attribute type's value, used to infer types in concise input.
VALUE_MEMBER = {
    "Property": "value",
    "GeoProperty": "value",
    "Relationship": "object",
    "ListRelationship": "objectList",
    "LanguageProperty": "languageMap",
    "VocabProperty": "vocab",
    "JsonProperty": "json",
    "ListProperty": "valueList",
}
_INFER_ORDER = ("object", "objectList", "languageMap", "vocab", "json", "valueList", "value")
_MEMBER_TYPE = {member: t for t, member in VALUE_MEMBER.items() if t != "GeoProperty"}
GEOJSON_TYPES = frozenset(GEOMETRY_TYPES)
GEO_ATTRIBUTES = frozenset({"location", "observationSpace", "operationSpace"})
SYSTEM_MEMBERS = frozenset({"createdAt", "modifiedAt", "deletedAt", "instanceId"})
INSTANCE_MEMBERS = (
    frozenset(
        {
            "type",
            "observedAt",
            "unitCode",
            "datasetId",
            "objectType",
            "lang",
            *VALUE_MEMBER.values(),
        }
    )
    | SYSTEM_MEMBERS
)
ENTITY_MEMBERS = frozenset({"id", "type", "scope", "@context"}) | SYSTEM_MEMBERS
NULL_URI = "urn:ngsi-ld:null"
# Never rendered as attributes: entity members, and the broker's bookkeeping predicates should
# an older store or a federated source hold them in a document.
_NOT_RENDERED = ENTITY_MEMBERS | ns.INTERNAL_PREDICATES

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:[^\s<>\"{}|\\^`]+$")
# What no IRI may hold (RFC 3987), plus the characters that break q and the type language.
_NAME_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f<>\"'=;(){}|\\^`]")
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})?$")


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def is_uri(value: object) -> bool:
    """An absolute IRI (with a scheme) that the RDF store accepts."""
    return isinstance(value, str) and bool(_URI.match(value)) and valid_iri(value)


def check_uri(value: object, what: str) -> str:
    if not is_uri(value):
        raise BadRequestData(f"{what} must be a URI (e.g. urn:ngsi-ld:Type:1), got {value!r}")
    assert isinstance(value, str)
    return value


def check_datetime(value: object, what: str) -> str:
    if not isinstance(value, str) or not _DATETIME.match(value):
        raise BadRequestData(f"{what} must be an ISO 8601 date-time, got {value!r}")
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadRequestData(f"{what} is not a valid date-time: {value!r} ({exc})") from None
    return value


Box = tuple[float, float, float, float]


def check_plausible(name: str, lon: float, lat: float, area: Box) -> None:
    """Refuse a point outside the service area whose swapped coordinates fall inside it.

    FIWARE IoT agents turn a `geo:point` "lat, lon" into GeoJSON [lat, lon] without swapping;
    trusting it would put a Montpellier sensor in the Indian Ocean.
    """
    west, south, east, north = area

    def inside(x: float, y: float) -> bool:
        return west <= x <= east and south <= y <= north

    if not inside(lon, lat) and inside(lat, lon):
        raise BadRequestData(
            f"GeoProperty {name!r}: [{lon}, {lat}] lies outside the service area but "
            f"[{lat}, {lon}] lies inside it: GeoJSON positions are [longitude, latitude]"
        )


def check_name(name: object, what: str = "attribute name") -> str:
    if isinstance(name, str) and _good_name(name):
        return name
    if isinstance(name, str) and name.startswith("@"):
        raise BadRequestData(f"invalid {what} {name!r}: a JSON-LD keyword is not a name")
    raise BadRequestData(
        f"invalid {what} {name!r}: no spaces, control characters or any of <>\"'=;(){{}}|\\^`"
    )


# Names and IRIs repeat across the entities of a city: each is judged once (ingestion speed).
@lru_cache(maxsize=65536)
def _good_name(name: str) -> bool:
    # JSON-LD keywords (@id, @type...) name no attribute or type.
    return bool(name) and not name.startswith("@") and not _NAME_FORBIDDEN.search(name)


@lru_cache(maxsize=65536)
def _storable(iri: str) -> bool:
    return is_uri(iri) and iri not in ns.INTERNAL_PREDICATES


def expand_name(terms: Terms, name: object, what: str = "attribute name") -> str:
    """A checked name expanded with the @context into an IRI the store can hold.

    The @context has the last word on expansion: a term aliased to a keyword (`"x": "@id"`),
    to a blank node or to a broken IRI is refused here, before any triple is built.
    """
    if not (isinstance(name, str) and _good_name(name)):
        check_name(name, what)  # raises the precise error
    assert isinstance(name, str)
    iri = terms.expand(name)
    if not _storable(iri):
        if iri in ns.INTERNAL_PREDICATES:
            raise BadRequestData(f"{what} {name!r} is reserved: {iri} is the broker's own")
        raise BadRequestData(
            f"{what} {name!r} expands to {iri!r}, which is not an absolute IRI: map it to "
            "one in the @context (e.g. 'https://example.org/name')"
        )
    return iri


@lru_cache(maxsize=1024)
def _language_tag(tag: str) -> bool:
    """A BCP 47 tag the store accepts (the regex below lets through e.g. 'a' or 'en-x')."""
    try:
        Literal("", language=tag)
    except ValueError:
        return False
    return True


class EntityReader:
    """Turns request bodies into canonical documents with one resolved @context."""

    def __init__(self, terms: Terms, *, now: str | None = None, area: Box | None = None) -> None:
        """`area` (min lon, min lat, max lon, max lat) is where this city's things can be."""
        self.terms = terms
        self.now = now or now_iso()
        self.area = area

    # -- entities -----------------------------------------------------------------------

    def entity(self, body: object, *, entity_id: str | None = None) -> dict[str, Any]:
        """A full entity (create, replace, upsert). `entity_id` comes from the URL if any."""
        if not isinstance(body, dict):
            raise BadRequestData("an entity must be a JSON object")
        if entity_id is not None and "id" in body and body["id"] != entity_id:
            raise BadRequestData(f"entity id {body['id']!r} does not match the URL ({entity_id!r})")
        eid = check_uri(body.get("id", entity_id), "entity id")
        doc: dict[str, Any] = {"id": eid, "type": self.types(body.get("type"))}
        if "scope" in body:
            doc["scope"] = self.scope(body["scope"])
        doc.update(self.attributes(body, allow_null=False))
        doc["createdAt"] = doc["modifiedAt"] = self.now
        return doc

    def types(self, value: object) -> list[str]:
        items = value if isinstance(value, list) else [value]
        if not items or value is None:
            raise BadRequestData("entity type is required (a string or a list of strings)")
        out: list[str] = []
        for item in items:
            expanded = expand_name(self.terms, item, "entity type")
            if expanded not in out:
                out.append(expanded)
        return out

    @staticmethod
    def scope(value: object) -> list[str]:
        items = value if isinstance(value, list) else [value]
        for item in items:
            if not isinstance(item, str) or not re.match(r"^/?[^\s/]+(/[^\s/]+)*$|^/$", item):
                raise BadRequestData(f"scope must be a path like /City/District, got {item!r}")
        return list(items)

    def attributes(self, body: dict[str, Any], *, allow_null: bool) -> dict[str, list[Any]]:
        """The attributes of a body (entity or attribute fragment), expanded and validated."""
        out: dict[str, list[Any]] = {}
        for name, raw in body.items():
            if name in ENTITY_MEMBERS:
                continue
            iri = expand_name(self.terms, name)
            out[iri] = self.instances(name, raw, allow_null=allow_null)
        return out

    def instances(self, name: str, raw: object, *, allow_null: bool) -> list[Any]:
        """One attribute: a single instance or an array of datasetId instances."""
        if isinstance(raw, list) and raw and all(_looks_like_instance(x) for x in raw):
            result = [self.instance(name, x, allow_null=allow_null) for x in raw]
            seen: set[str | None] = set()
            for inst in result:
                if inst.get("datasetId") in seen:
                    raise BadRequestData(
                        f"attribute {name!r} has two instances with datasetId "
                        f"{inst.get('datasetId')!r}"
                    )
                seen.add(inst.get("datasetId"))
            return result
        return [self.instance(name, raw, allow_null=allow_null)]

    def instance(self, name: str, raw: object, *, allow_null: bool) -> dict[str, Any]:
        inst = self._infer(name, raw, allow_null=allow_null)
        kind = inst["type"]
        member = VALUE_MEMBER[kind]
        if member not in inst:
            raise BadRequestData(f"attribute {name!r} of type {kind} needs a {member!r} member")
        out: dict[str, Any] = {"type": kind}
        value = inst[member]
        if allow_null and (value == NULL_URI or value is None):
            out[member] = NULL_URI
        else:
            out[member] = self._value(name, kind, value)
        for key, sub in inst.items():
            if key in ("type", member) or key in SYSTEM_MEMBERS:
                continue
            if key == "observedAt":
                out[key] = check_datetime(sub, f"{name}.observedAt")
            elif key == "datasetId":
                out[key] = check_uri(sub, f"{name}.datasetId")
            elif key == "unitCode":
                if not isinstance(sub, str) or not sub:
                    raise BadRequestData(f"{name}.unitCode must be a non-empty string")
                out[key] = sub
            elif key == "objectType" and kind in ("Relationship", "ListRelationship"):
                out[key] = self.types(sub)
            elif key == "lang" and kind == "Property":
                out[key] = sub
            elif key in INSTANCE_MEMBERS:
                raise BadRequestData(f"member {key!r} is not allowed in a {kind} ({name!r})")
            else:
                iri = expand_name(self.terms, key, "sub-attribute name")
                out[iri] = self.instances(key, sub, allow_null=allow_null)
        out["createdAt"] = out["modifiedAt"] = self.now
        return out

    def _infer(self, name: str, raw: object, *, allow_null: bool) -> dict[str, Any]:
        """Normalized instances pass through; concise ones get their type (clause 4.5.2)."""
        if isinstance(raw, dict):
            kind = raw.get("type")
            if kind is not None and not isinstance(kind, str):
                raise BadRequestData(f"attribute {name!r}: 'type' must be a string, not {kind!r}")
            if kind in ATTRIBUTE_TYPES:
                return raw
            if (kind in GEOJSON_TYPES and "coordinates" in raw) or kind == "GeometryCollection":
                return {"type": "GeoProperty", "value": raw}
            if isinstance(kind, str) and kind not in GEOJSON_TYPES and "value" in raw:
                raise BadRequestData(
                    f"attribute {name!r} has unknown type {kind!r}; expected one of "
                    + ", ".join(sorted(ATTRIBUTE_TYPES))
                )
            for member in _INFER_ORDER:
                if member in raw:
                    kind = _MEMBER_TYPE[member]
                    if member == "value" and name in GEO_ATTRIBUTES and _is_geojson(raw["value"]):
                        kind = "GeoProperty"
                    return {**raw, "type": kind}
            if "type" in raw:
                raise BadRequestData(f"attribute {name!r} has an invalid type {kind!r}")
        if raw is None and not allow_null:
            raise BadRequestData(f"attribute {name!r} has no value (null)")
        if raw is None or raw == NULL_URI:
            return {"type": "Property", "value": raw}
        return {"type": "Property", "value": raw}

    def _value(self, name: str, kind: str, value: Any) -> Any:
        if kind == "Property":
            if value is None:
                raise BadRequestData(f"attribute {name!r}: value must not be null")
            if isinstance(value, dict) and value.get("@type") in ("DateTime", "Date", "Time"):
                if not isinstance(value.get("@value"), str):
                    raise BadRequestData(f"attribute {name!r}: @value must be a string")
                if value["@type"] == "DateTime":
                    check_datetime(value["@value"], name)
            return value
        if kind == "GeoProperty":
            position = point_position(value)  # the common case, checked without shapely
            if position is None:  # another type, or an invalid Point: the precise error
                parse_geometry(value, what=f"GeoProperty {name!r}")
            elif self.area is not None:
                check_plausible(name, position[0], position[1], self.area)
            return value
        if kind == "Relationship":
            if isinstance(value, list):
                return [check_uri(v, f"object of {name!r}") for v in value]
            return check_uri(value, f"object of Relationship {name!r}")
        if kind == "ListRelationship":
            if not isinstance(value, list):
                raise BadRequestData(f"objectList of {name!r} must be an array")
            return [
                {"object": check_uri(v.get("object"), f"objectList item of {name!r}")}
                if isinstance(v, dict)
                else check_uri(v, f"objectList item of {name!r}")
                for v in value
            ]
        if kind == "LanguageProperty":
            if not isinstance(value, dict) or not value:
                raise BadRequestData(f"languageMap of {name!r} must be an object of lang: string")
            for lang, text in value.items():
                if not re.match(r"^([A-Za-z]{1,8}(-[A-Za-z0-9]{1,8})*|@none)$", lang) or (
                    lang != "@none" and not _language_tag(lang)
                ):
                    raise BadRequestData(f"languageMap of {name!r}: invalid language tag {lang!r}")
                texts = text if isinstance(text, list) else [text]
                if not all(isinstance(t, str) for t in texts):
                    raise BadRequestData(f"languageMap of {name!r}: values must be strings")
            return value
        if kind == "VocabProperty":
            items = value if isinstance(value, list) else [value]
            if not items or not all(isinstance(v, str) and v for v in items):
                raise BadRequestData(f"vocab of {name!r} must be a string or list of strings")
            expanded = [self.terms.expand_vocab(v) for v in items]
            for v, iri in zip(items, expanded, strict=True):
                if not _storable(iri):
                    raise BadRequestData(
                        f"vocab of {name!r}: {v!r} expands to {iri!r}, which is not an IRI"
                    )
            return expanded if isinstance(value, list) else expanded[0]
        if kind == "ListProperty":
            if not isinstance(value, list):
                raise BadRequestData(f"valueList of {name!r} must be an array")
            return value
        return value  # JsonProperty: any JSON


def _is_geojson(value: object) -> bool:
    return isinstance(value, dict) and _kind(value) in GEOJSON_TYPES


def _kind(item: dict[str, Any]) -> str | None:
    """The "type" member if it is a string: a JSON object or array there is unhashable."""
    kind = item.get("type")
    return kind if isinstance(kind, str) else None


def _looks_like_instance(item: object) -> bool:
    return isinstance(item, dict) and (
        _kind(item) in ATTRIBUTE_TYPES or any(m in item for m in _INFER_ORDER)
    )


# -- rendering ------------------------------------------------------------------------------


class EntityWriter:
    """Renders canonical documents in the representation a request asked for (clause 4.5)."""

    def __init__(
        self,
        terms: Terms,
        *,
        form: str = "normalized",
        sys_attrs: bool = False,
        lang: str | None = None,
    ) -> None:
        self.terms = terms
        self.form = form
        self.sys_attrs = sys_attrs
        self.lang = lang

    def entity(
        self,
        doc: dict[str, Any],
        *,
        attrs: set[str] | None = None,
        pick: set[str] | None = None,
        omit: set[str] | None = None,
    ) -> dict[str, Any]:
        """`attrs`, `pick`, `omit` hold expanded IRIs, or `id`/`type` for the core members."""
        out: dict[str, Any] = {}
        if _kept("id", pick, omit):
            out["id"] = doc["id"]
        if _kept("type", pick, omit):
            types = [self.terms.compact(t) for t in doc["type"]]
            out["type"] = types[0] if len(types) == 1 else types
        if "scope" in doc and _kept("scope", pick, omit):
            scope = doc["scope"]
            out["scope"] = scope[0] if len(scope) == 1 else scope
        if self.sys_attrs and self.form != "keyValues":
            out["createdAt"] = doc.get("createdAt")
            out["modifiedAt"] = doc.get("modifiedAt")
        for iri, instances in doc.items():
            if iri in _NOT_RENDERED or not isinstance(instances, list):
                continue
            if attrs is not None and iri not in attrs:
                continue
            if not _kept(iri, pick, omit):
                continue
            out[self.terms.compact(iri)] = self.attribute(instances)
        return out

    def attribute(self, instances: list[dict[str, Any]]) -> Any:
        if self.form == "keyValues":
            default = next((i for i in instances if "datasetId" not in i), instances[0])
            return self.simple_value(default)
        rendered = [self.instance(i) for i in instances]
        return rendered[0] if len(rendered) == 1 else rendered

    def simple_value(self, inst: dict[str, Any]) -> Any:
        kind = inst["type"]
        value = inst.get(VALUE_MEMBER[kind])
        if kind == "LanguageProperty":
            return self._pick_language(value) if self.lang and isinstance(value, dict) else value
        if kind == "VocabProperty":
            return self._compact_vocab(value)
        if kind == "ListRelationship":
            return [v["object"] if isinstance(v, dict) else v for v in value or []]
        return value

    def instance(self, inst: dict[str, Any]) -> Any:
        kind = inst["type"]
        member = VALUE_MEMBER[kind]
        out: dict[str, Any] = {}
        if kind == "LanguageProperty" and self.lang:
            out = {"type": "Property", "value": self._pick_language(inst[member])}
            out["lang"] = self._chosen_language(inst[member])
        else:
            out["type"] = kind
            out[member] = (
                self._compact_vocab(inst[member]) if kind == "VocabProperty" else inst[member]
            )
        for key, sub in inst.items():
            if key in ("type", member):
                continue
            if key in SYSTEM_MEMBERS:
                if self.sys_attrs:
                    out[key] = sub
            elif key == "objectType":
                out[key] = [self.terms.compact(t) for t in sub]
                if len(out[key]) == 1:
                    out[key] = out[key][0]
            elif key in INSTANCE_MEMBERS:
                out[key] = sub
            else:
                out[self.terms.compact(key)] = self.attribute(sub)
        if self.form == "concise":
            return _concise(out)
        return out

    def _compact_vocab(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.terms.compact_vocab(v) for v in value]
        return self.terms.compact_vocab(value)

    def _chosen_language(self, language_map: dict[str, Any]) -> str:
        assert self.lang is not None
        wanted = [x.split(";")[0].strip() for x in self.lang.split(",")]
        for tag in wanted:
            if tag == "*" and language_map:
                return next(iter(language_map))
            if tag in language_map:
                return tag
            for key in language_map:  # "en" matches "en-GB"
                if key.split("-")[0] == tag.split("-")[0]:
                    return key
        return "@none" if "@none" in language_map else next(iter(language_map))

    def _pick_language(self, language_map: dict[str, Any]) -> Any:
        return language_map[self._chosen_language(language_map)]


def _concise(inst: dict[str, Any]) -> Any:
    """Drop what the type makes implicit (clause 4.5.2.2): the type, and `value` if alone."""
    kind = inst.pop("type")
    if kind == "GeoProperty" and len(inst) == 1:
        return inst["value"]
    if kind == "Property" and list(inst) == ["value"] and not _ambiguous(inst["value"]):
        return inst["value"]
    return inst


def _ambiguous(value: Any) -> bool:
    """A bare value that a reader would take for something else must keep its `value` member."""
    if isinstance(value, dict):
        return "type" in value or any(m in value for m in _INFER_ORDER)
    if isinstance(value, list):
        return any(_looks_like_instance(v) for v in value)
    return False


def _kept(key: str, pick: set[str] | None, omit: set[str] | None) -> bool:
    if pick is not None and key not in pick:
        return False
    return not (omit is not None and key in omit)
