"""Harmonisation: a source's record -> one canonical NGSI-LD document of the twin.

Shared by every connector kind, so that a street light from a WFS and one from a Shapefile end
up alike: the id from the definition's template, mapped attributes converted and given their
UN/CEFACT `unitCode`, the geometry reprojected to CRS84 and repaired when invalid, times in UTC.

A repaired geometry is recorded on the entity itself, as the sub-property
`https://urbis.city/ns#geometryRepair` of its GeoProperty (the reason shapely gave), and counted
in the sync report: a client can see which positions the twin changed and why.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import numpy as np
import orjson
import shapely
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from urbis.connectors.base import BadRecord, Feature, NgsiEntity, Record
from urbis.connectors.definition import AttributeMapping, SourceDefinition, template_fields
from urbis.ontology import ns
from urbis.twin.errors import NgsiLdError
from urbis.twin.model import EntityReader
from urbis.twin.terms import Terms

GEOMETRY_REPAIR = ns.URBIS + "geometryRepair"
CRS84_NAMES = frozenset(
    {
        "OGC:CRS84",
        "CRS84",
        "EPSG:4326",
        "urn:ogc:def:crs:OGC:1.3:CRS84",
        "urn:ogc:def:crs:OGC::CRS84",
        "urn:ogc:def:crs:EPSG::4326",
        ns.CRS84,
        "http://www.opengis.net/def/crs/EPSG/0/4326",
    }
)
_NAME_FORBIDDEN = re.compile(r"[\s<>\"'=;()]")
_TRUE = frozenset({"true", "1", "yes", "y", "t", "oui", "vrai"})
_FALSE = frozenset({"false", "0", "no", "n", "f", "non", "faux"})
_KEY_SAFE = "-._~:@!$&'*+,;="

Doc = dict[str, Any]
ContextTerms = Callable[[Any], Terms]


# -- coordinate reference systems -------------------------------------------------------------


def is_crs84(crs: str | None) -> bool:
    return crs is None or crs in CRS84_NAMES


@lru_cache(maxsize=64)
def transformer(crs: str) -> Transformer:
    """A cached source-CRS -> CRS84 transformer (x = longitude, y = latitude)."""
    try:
        source = CRS.from_user_input(crs)
    except CRSError as exc:
        raise BadRecord(f"unknown CRS {crs!r}: {exc}") from None
    return Transformer.from_crs(source, "OGC:CRS84", always_xy=True)


@lru_cache(maxsize=64)
def crs_from_prj(prj: str) -> str:
    """The CRS named by a Shapefile's `.prj` (ESRI WKT): 'EPSG:n' when pyproj identifies it.

    Cached: identifying a CRS searches pyproj's database (0.2-0.3 s), on every sync of a file.
    """
    crs = CRS.from_user_input(prj)
    epsg = crs.to_epsg()
    if epsg is None:
        epsg = crs.to_epsg(min_confidence=50)
    return f"EPSG:{epsg}" if epsg is not None else crs.to_wkt()


def crs_from_geojson(member: object) -> str | None:
    """The CRS of a (pre-RFC 7946) GeoJSON `crs` member: {"type": "name", ...}."""
    if not isinstance(member, Mapping):
        return None
    props = member.get("properties")
    if isinstance(props, Mapping):
        name = props.get("name") or props.get("href")
        if isinstance(name, str) and name:
            return name
    return None


def _check_lonlat(geom: BaseGeometry, crs: str) -> None:
    xmin, ymin, xmax, ymax = geom.bounds
    if not all(math.isfinite(v) for v in (xmin, ymin, xmax, ymax)):
        raise BadRecord(f"geometry has non-finite coordinates after reprojection from {crs}")
    if xmin < -180 or xmax > 180 or ymin < -90 or ymax > 90:
        raise BadRecord(
            f"geometry lies outside longitude/latitude range ({xmin:.6g}, {ymin:.6g}, "
            f"{xmax:.6g}, {ymax:.6g}) once read as {crs}: is the source CRS right? "
            "(set `crs` in the definition, e.g. 'EPSG:2154')"
        )


def _transform_coords(tr: Transformer) -> Callable[[Any], Any]:
    def apply(coords: Any) -> Any:
        x, y = tr.transform(coords[:, 0], coords[:, 1])
        return np.column_stack([x, y])

    return apply


def harmonize_geometry(geometry: Mapping[str, Any], crs: str | None) -> tuple[Doc, str | None]:
    """GeoJSON in `crs` -> (GeoJSON in CRS84, the repair reason or None)."""
    crs = crs or "OGC:CRS84"
    kind = geometry.get("type")
    if kind == "Point":  # the common case, kept off shapely's slower path
        coords = geometry.get("coordinates")
        if not isinstance(coords, list | tuple) or len(coords) < 2:
            raise BadRecord(f"Point without [x, y] coordinates: {coords!r}")
        try:
            x, y = float(coords[0]), float(coords[1])
        except (TypeError, ValueError):
            raise BadRecord(f"Point coordinates are not numbers: {coords!r}") from None
        if not is_crs84(crs):
            x, y = transformer(crs).transform(x, y)
        if not (math.isfinite(x) and math.isfinite(y)):
            raise BadRecord(f"Point has non-finite coordinates after reprojection from {crs}")
        if not (-180 <= x <= 180 and -90 <= y <= 90):
            raise BadRecord(
                f"point ({x:.6g}, {y:.6g}) lies outside longitude/latitude range once read as "
                f"{crs}: is the source CRS right? (set `crs` in the definition, e.g. 'EPSG:2154')"
            )
        return {"type": "Point", "coordinates": [x, y]}, None
    try:
        geom = shape(geometry)
    except Exception as exc:  # shapely raises several types for malformed GeoJSON
        raise BadRecord(f"invalid {kind} geometry: {exc}") from None
    if geom.is_empty:
        raise BadRecord("empty geometry")
    if not is_crs84(crs):
        geom = shapely.transform(geom, _transform_coords(transformer(crs)))
    _check_lonlat(geom, crs)
    repair = None
    if not geom.is_valid:
        repair = shapely.is_valid_reason(geom)
        geom = shapely.make_valid(geom)
        if geom.is_empty:
            raise BadRecord(f"geometry is invalid ({repair}) and nothing is left once repaired")
        repair = f"{repair}: repaired with make_valid into a {geom.geom_type}"
    out: Doc = orjson.loads(shapely.to_geojson(geom))
    return out, repair


# -- times ------------------------------------------------------------------------------------


def _utc_text(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ" if moment.microsecond else "%Y-%m-%dT%H:%M:%SZ"
    return moment.strftime(fmt)


def to_utc(value: object, timezone: str = "UTC") -> str:
    """An ISO 8601 text, datetime, date or epoch (s or ms) -> 'YYYY-MM-DDThh:mm:ssZ' in UTC.

    Times without an offset are read in `timezone` (the definition's), then converted.
    """
    zone = ZoneInfo(timezone)
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value / 1000 if abs(value) > 1e11 else value
        moment = datetime.fromtimestamp(seconds, UTC)
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            moment = datetime.fromisoformat(text.replace(" ", "T", 1) if "T" not in text else text)
        except ValueError:
            raise BadRecord(f"{value!r} is not an ISO 8601 date-time") from None
    else:
        raise BadRecord(f"{value!r} is not a date-time")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return _utc_text(moment)


def _to_date(value: object) -> str:
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        text = value.strip()
        for fmt in ("%Y-%m-%d", "%Y%m%d", "%d/%m/%Y"):
            try:
                return datetime.strptime(text[:10], fmt).date().isoformat()
            except ValueError:
                continue
    raise BadRecord(f"{value!r} is not a date (YYYY-MM-DD)")


# -- values -----------------------------------------------------------------------------------


def _number_text(value: str) -> str:
    text = value.strip().replace("\u00a0", "").replace(" ", "")
    if "," in text and "." not in text:
        text = text.replace(",", ".")  # a decimal comma, as French open data writes
    return text


def convert(value: Any, conversion: str | None, timezone: str = "UTC") -> Any:
    """One source value -> an NGSI-LD Property value; BadRecord says why it cannot."""
    if conversion is None:
        if isinstance(value, datetime):
            return {"@type": "DateTime", "@value": to_utc(value, timezone)}
        if isinstance(value, date):
            return {"@type": "Date", "@value": value.isoformat()}
        if isinstance(value, float) and not math.isfinite(value):
            raise BadRecord(f"{value!r} is not a finite number")
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        return value
    try:
        if conversion == "float":
            number = float(_number_text(value) if isinstance(value, str) else value)
            if not math.isfinite(number):
                raise ValueError("not finite")
            return number
        if conversion == "int":
            if isinstance(value, bool):
                return int(value)
            if isinstance(value, str):
                value = _number_text(value)
                return int(value) if re.match(r"^[+-]?\d+$", value) else _whole(float(value))
            return _whole(float(value))
        if conversion == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().casefold()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError("not a boolean")
        if conversion == "str":
            if isinstance(value, float) and value.is_integer():
                return str(int(value))
            return str(value)
        if conversion == "datetime":
            return {"@type": "DateTime", "@value": to_utc(value, timezone)}
        if conversion == "date":
            return {"@type": "Date", "@value": _to_date(value)}
        if conversion == "json":
            return json.loads(value) if isinstance(value, str) else value
    except BadRecord:
        raise
    except (ValueError, TypeError, OverflowError) as exc:
        raise BadRecord(f"cannot convert {value!r} to {conversion} ({exc})") from None
    raise BadRecord(f"unknown conversion {conversion!r}")


def _whole(number: float) -> int:
    if not number.is_integer():
        raise ValueError(f"{number} is not a whole number")
    return int(number)


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def clean_name(name: str) -> str:
    """A source field name usable as an attribute name (unmapped sources keep their fields)."""
    return _NAME_FORBIDDEN.sub("_", name.strip()) or "_"


@lru_cache(maxsize=256)
def _template_fields(template: str) -> tuple[str, ...]:
    return tuple(template_fields(template))


class _Fields(dict[str, str]):
    """Template fields; a missing one is a bad record, not a KeyError."""

    def __missing__(self, key: str) -> str:
        raise BadRecord(f"id_template needs field {key!r}, which this record lacks or has empty")


# -- the harmoniser ---------------------------------------------------------------------------


@dataclass
class Harmonized:
    """A canonical document ready for the twin, and the geometry repair made, if any."""

    doc: Doc
    repair: str | None = None


class Harmonizer:
    """Turns one source's records into canonical documents (one instance per sync run)."""

    def __init__(
        self,
        source: SourceDefinition,
        terms: Terms,
        *,
        context_terms: ContextTerms,
        now: str,
        area: tuple[float, float, float, float] | None = None,
    ) -> None:
        """`terms` resolve the definition's context; `context_terms` a record's own @context."""
        self.source = source
        self.now = now
        self.area = area
        self.reader = EntityReader(terms, now=now, area=area)
        self.context_terms = context_terms
        self._readers: dict[str, EntityReader] = {}

    def key(self, record: Feature) -> str:
        field = self.source.key
        value = record.properties.get(field) if field else record.key
        if _empty(value):
            where = f"field {field!r}" if field else "the record's own id"
            raise BadRecord(f"no key: {where} is missing or empty")
        return convert(value, "str")  # type: ignore[no-any-return]

    def entity_id(self, record: Feature, key: str) -> str:
        template = self.source.id_template
        if template is None:
            if re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*:", key) and not key.isdigit():
                return key
            template = f"urn:ngsi-ld:{self.source.entity_type}:{self.source.id}-{{key}}"
        fields = _Fields(key=quote(key, safe=_KEY_SAFE))
        for name in _template_fields(template):  # only the fields the template names
            value = record.properties.get(name)
            if name != "key" and not _empty(value):
                fields[name] = quote(convert(value, "str"), safe=_KEY_SAFE)
        return template.format_map(fields)

    def to_ngsi(self, record: Feature) -> tuple[Doc, str | None]:
        """A Feature -> a normalized NGSI-LD entity (terms of the definition's context)."""
        if self.source.entity_type is None:
            raise BadRecord(
                "the definition has no entity_type and the record is not NGSI-LD: set "
                "entity_type (and a mapping) to build entities from it"
            )
        key = self.key(record)
        entity: Doc = {"id": self.entity_id(record, key), "type": self.source.entity_type}
        observed = self._observed_at(record)
        if self.source.mapping:
            for item in self.source.mapping:
                raw = record.properties.get(item.source)
                if _empty(raw):
                    continue
                try:
                    attr = self._attribute(item, raw, record.crs)
                except BadRecord as exc:
                    raise BadRecord(f"field {item.source!r} -> {item.attribute}: {exc}") from None
                if observed is not None and attr["type"] == "Property":
                    attr["observedAt"] = observed
                self._put(entity, item.attribute, attr, item.dataset_id)
        else:
            for name, raw in record.properties.items():
                if _empty(raw) or name in (self.source.key, self.source.observed_at):
                    continue
                attr = {"type": "Property", "value": convert(raw, None, self.source.timezone)}
                if observed is not None:
                    attr["observedAt"] = observed
                entity.setdefault(clean_name(name), attr)
        repair = None
        if record.geometry is not None:
            crs = record.crs or self.source.crs
            value, repair = harmonize_geometry(record.geometry, crs)
            geo: Doc = {"type": "GeoProperty", "value": value}
            if repair is not None:
                geo[GEOMETRY_REPAIR] = {"type": "Property", "value": repair}
            entity[self.source.geometry_attribute] = geo
        return entity, repair

    @staticmethod
    def _put(entity: Doc, name: str, attr: Doc, dataset_id: str | None) -> None:
        if dataset_id is None:
            entity[name] = attr
            return
        attr["datasetId"] = dataset_id
        current = entity.get(name)
        entity[name] = [*current, attr] if isinstance(current, list) else [attr]

    def _observed_at(self, record: Feature) -> str | None:
        raw: Any = record.observed_at
        if raw is None and self.source.observed_at:
            raw = record.properties.get(self.source.observed_at)
        if _empty(raw):
            return None
        try:
            return to_utc(raw, self.source.timezone)
        except BadRecord as exc:
            raise BadRecord(f"observation time: {exc}") from None

    def _attribute(self, item: AttributeMapping, raw: Any, crs: str | None) -> Doc:
        if item.type == "Relationship":
            text = convert(raw, "str")
            target = (
                item.template.format(value=quote(text, safe=_KEY_SAFE)) if item.template else text
            )
            return {"type": "Relationship", "object": target}
        if item.type == "GeoProperty":
            geometry = _geometry_value(raw)
            value, repair = harmonize_geometry(geometry, crs or self.source.crs)
            attr: Doc = {"type": "GeoProperty", "value": value}
            if repair is not None:
                attr[GEOMETRY_REPAIR] = {"type": "Property", "value": repair}
            return attr
        value = convert(raw, item.convert, self.source.timezone)
        if item.type == "JsonProperty":
            return {"type": "JsonProperty", "json": value}
        attr = {"type": "Property", "value": value}
        if item.unit is not None:
            attr["unitCode"] = item.unit
        return attr

    def document(self, record: Record) -> Harmonized:
        """The canonical document of a record; BadRecord or NgsiLdError when it cannot be."""
        if isinstance(record, NgsiEntity):
            return Harmonized(self._ngsi_document(record))
        if record.problem is not None:  # the connector saw it was bad (e.g. a ragged CSV row)
            raise BadRecord(record.problem)
        entity, repair = self.to_ngsi(record)
        return Harmonized(self.reader.entity(entity), repair)

    def attempt(self, record: Record) -> Harmonized | str:
        """The document, or the reason the record goes to the quarantine (pull and live sync
        share this, so a record is judged the same way wherever it comes from)."""
        try:
            return self.document(record)
        except BadRecord as exc:
            return str(exc)
        except NgsiLdError as exc:
            return exc.detail
        except (ValueError, TypeError, KeyError) as exc:
            return f"{type(exc).__name__}: {exc}"

    def _ngsi_document(self, record: NgsiEntity) -> Doc:
        entity = dict(record.entity)
        context = record.context if record.context is not None else entity.get("@context")
        reader = self.reader
        if context is not None:
            cache_key = context if isinstance(context, str) else orjson.dumps(context).decode()
            reader = self._readers.get(cache_key)  # type: ignore[assignment]
            if reader is None:
                reader = EntityReader(self.context_terms(context), now=self.now, area=self.area)
                self._readers[cache_key] = reader
        for value in entity.values():
            for inst in value if isinstance(value, list) else [value]:
                if isinstance(inst, dict) and isinstance(inst.get("observedAt"), str):
                    inst["observedAt"] = to_utc(inst["observedAt"], self.source.timezone)
        return reader.entity(entity)


def _geometry_value(raw: Any) -> Doc:
    """A GeoProperty's source value: GeoJSON (object or text) or WKT."""
    if isinstance(raw, Mapping):
        return dict(raw)
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("{"):
            loaded: Doc = json.loads(text)
            return loaded
        try:
            geo: Doc = orjson.loads(shapely.to_geojson(shapely.from_wkt(text)))
        except Exception as exc:
            raise BadRecord(f"neither GeoJSON nor WKT: {exc}") from None
        return geo
    raise BadRecord(f"{raw!r} is not a geometry")
