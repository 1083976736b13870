"""A small GML 3.2 / 3.1 reader for WFS responses: features to properties + GeoJSON geometry.

There is no GDAL binding here, and a WFS that offers no GeoJSON still answers in GML, so this
reads the simple-features subset that GIS servers emit (Point, LineString, Curve, Polygon,
Surface, LinearRing and their Multi* forms, with pos, posList or coordinates). Coordinates keep
the order of the CRS's axes except where the srsName is an OGC URN/URI of a CRS whose first axis
is north (EPSG:4326 as urn:ogc:def:crs:EPSG::4326): those are swapped, so the geometry is always
x/y (lon/lat) as GeoJSON and pyproj's `always_xy` expect.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from urbis.connectors.errors import ConnectorError

GML_NAMESPACES = ("http://www.opengis.net/gml/3.2", "http://www.opengis.net/gml")
WFS_MEMBERS = {
    "{http://www.opengis.net/wfs/2.0}member",
    "{http://www.opengis.net/gml}featureMember",
    "{http://www.opengis.net/gml}featureMembers",
    "{http://www.opengis.net/gml/3.2}featureMember",
    "{http://www.opengis.net/gml/3.2}featureMembers",
}
_SKIPPED = {"boundedBy", "name", "description", "descriptionReference", "identifier", "location"}
_GEOMETRIES = {
    "Point",
    "LineString",
    "Curve",
    "Polygon",
    "Surface",
    "LinearRing",
    "MultiPoint",
    "MultiLineString",
    "MultiCurve",
    "MultiPolygon",
    "MultiSurface",
    "MultiGeometry",
}


class GmlError(ConnectorError, ValueError):
    """GML this reader cannot turn into GeoJSON; the message says what."""

    error_type, status, title = "GmlError", 502, "Unreadable GML"


@dataclass(frozen=True)
class GmlFeature:
    fid: str | None  # gml:id
    properties: dict[str, Any]
    geometry: dict[str, Any] | None
    srs_name: str | None  # the geometry's srsName, as written


@dataclass(frozen=True)
class GmlPage:
    features: list[GmlFeature]
    number_matched: int | None  # None when the server says "unknown"
    number_returned: int | None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _is_gml(element: ET.Element) -> bool:
    return element.tag.startswith("{") and element.tag[1:].split("}", 1)[0] in GML_NAMESPACES


def _attr(element: ET.Element, name: str) -> str | None:
    for namespace in GML_NAMESPACES:
        value = element.get(f"{{{namespace}}}{name}")
        if value is not None:
            return value
    return element.get(name)


@lru_cache(maxsize=64)
def north_first(srs_name: str | None) -> bool:
    """Whether coordinates in `srs_name` come latitude/northing first (so must be swapped)."""
    if not srs_name or not ("urn:ogc:def:crs" in srs_name or "opengis.net/def/crs" in srs_name):
        return False  # "EPSG:4326" and friends: x/y by long-standing WFS practice
    try:
        from pyproj import CRS

        axes = CRS.from_user_input(srs_name).axis_info
    except Exception:  # an srsName pyproj does not know: take it as x/y
        return False
    return bool(axes) and axes[0].direction.lower() in {"north", "south"}


def _numbers(text: str | None) -> list[float]:
    try:
        return [float(v) for v in (text or "").split()]
    except ValueError as e:
        raise GmlError(f"coordinates that are not numbers: {(text or '')[:60]!r}") from e


def _positions(element: ET.Element, dimension: int, swap: bool) -> list[list[float]]:
    """Every position under `element` (posList, pos, coordinates, or nested Points)."""
    positions: list[list[float]] = []
    for child in element.iter():
        name = _local(child.tag)
        if name == "posList":
            dim = int(child.get("srsDimension") or dimension)
            values = _numbers(child.text)
            if len(values) % dim:
                raise GmlError(f"a posList of {len(values)} numbers in dimension {dim}")
            positions.extend(values[i : i + dim] for i in range(0, len(values), dim))
        elif name == "pos":
            positions.append(_numbers(child.text))
        elif name == "coordinates":  # GML 2 style: "x,y x,y"
            decimal, cs, ts = child.get("decimal", "."), child.get("cs", ","), child.get("ts", " ")
            for tuple_text in re.split(f"[{re.escape(ts)}]+", (child.text or "").strip()):
                if tuple_text:
                    parts = (
                        tuple_text.replace(decimal, ".").split(cs)
                        if decimal != "."
                        else (tuple_text.split(cs))
                    )
                    positions.append(_numbers(" ".join(parts)))
    if swap:
        for p in positions:
            p[0], p[1] = p[1], p[0]
    return positions


def _ring(element: ET.Element, dimension: int, swap: bool) -> list[list[float]]:
    ring = _positions(element, dimension, swap)
    if len(ring) < 4:
        raise GmlError(f"a ring of {len(ring)} positions (at least 4 needed)")
    return ring


def _polygon(element: ET.Element, dimension: int, swap: bool) -> list[list[list[float]]]:
    """Rings of a Polygon or PolygonPatch: exterior first, then interiors."""
    rings: list[list[list[float]]] = []
    for boundary in ("exterior", "outerBoundaryIs"):
        for child in element:
            if _local(child.tag) == boundary:
                rings.append(_ring(child, dimension, swap))
    if not rings:
        raise GmlError("a polygon without an exterior ring")
    for child in element:
        if _local(child.tag) in {"interior", "innerBoundaryIs"}:
            rings.append(_ring(child, dimension, swap))
    return rings


def geometry(element: ET.Element, srs_name: str | None = None) -> dict[str, Any]:
    """The GeoJSON geometry of a GML geometry element (x/y order; see module docstring)."""
    srs_name = element.get("srsName") or srs_name
    swap = north_first(srs_name)
    dimension = int(element.get("srsDimension") or 2)
    name = _local(element.tag)
    if name == "Point":
        points = _positions(element, dimension, swap)
        if len(points) != 1:
            raise GmlError(f"a Point with {len(points)} positions")
        return {"type": "Point", "coordinates": points[0]}
    if name in {"LineString", "Curve", "LinearRing"}:
        line = _positions(element, dimension, swap)
        if len(line) < 2:
            raise GmlError(f"a line of {len(line)} positions")
        return {"type": "LineString", "coordinates": line}
    if name == "Polygon":
        return {"type": "Polygon", "coordinates": _polygon(element, dimension, swap)}
    if name == "Surface":  # patches: one polygon each
        patches = [p for p in element.iter() if _local(p.tag) in {"PolygonPatch", "Polygon"}]
        rings = [_polygon(p, dimension, swap) for p in patches]
        if len(rings) == 1:
            return {"type": "Polygon", "coordinates": rings[0]}
        return {"type": "MultiPolygon", "coordinates": rings}
    if name == "MultiPoint":
        points = [geometry(m, srs_name)["coordinates"] for m in _iter_parts(element, {"Point"})]
        return {"type": "MultiPoint", "coordinates": points}
    if name in {"MultiLineString", "MultiCurve"}:
        parts = [geometry(m, srs_name) for m in _iter_parts(element, {"LineString", "Curve"})]
        return {"type": "MultiLineString", "coordinates": [p["coordinates"] for p in parts]}
    if name in {"MultiPolygon", "MultiSurface"}:
        polygons: list[Any] = []
        for part in _iter_parts(element, {"Polygon", "Surface"}):
            g = geometry(part, srs_name)
            polygons.extend([g["coordinates"]] if g["type"] == "Polygon" else g["coordinates"])
        return {"type": "MultiPolygon", "coordinates": polygons}
    if name == "MultiGeometry":
        return {
            "type": "GeometryCollection",
            "geometries": [geometry(m, srs_name) for m in _iter_parts(element, _GEOMETRIES)],
        }
    raise GmlError(f"unsupported GML geometry {name}")


def _iter_parts(element: ET.Element, kinds: set[str]) -> Iterator[ET.Element]:
    """Direct geometry parts of a multi-geometry, under *Member or *Members elements."""
    for member in element:
        for child in member:
            if _is_gml(child) and _local(child.tag) in kinds:
                yield child


def convert(value: str, xsd_type: str | None) -> Any:
    """A property's text as the type its schema (DescribeFeatureType) gives it."""
    kind = (xsd_type or "").rsplit(":", 1)[-1].lower()
    try:
        if kind in {"int", "integer", "long", "short", "byte", "nonnegativeinteger"}:
            return int(value)
        if kind in {"double", "float", "decimal"}:
            return float(value)
    except ValueError:
        return value  # the server's text, untouched: the mapping decides
    if kind == "boolean":
        return value.strip().lower() in {"true", "1"}
    return value


def _feature(element: ET.Element, types: Mapping[str, str]) -> GmlFeature:
    properties: dict[str, Any] = {}
    found: dict[str, Any] | None = None
    srs_name: str | None = None
    for child in element:
        name = _local(child.tag)
        if _is_gml(child) and name in _SKIPPED:
            continue
        parts = [c for c in child if _is_gml(c) and _local(c.tag) in _GEOMETRIES]
        if parts:
            if found is None:
                srs_name = parts[0].get("srsName")
                found = geometry(parts[0])
            continue  # a second geometry property is not a GeoJSON thing: dropped
        nil = child.get("{http://www.w3.org/2001/XMLSchema-instance}nil") == "true"
        text = child.text
        properties[name] = None if nil or text is None else convert(text, types.get(name))
    return GmlFeature(_attr(element, "id"), properties, found, srs_name)


def parse_feature_collection(data: bytes, types: Mapping[str, str] | None = None) -> GmlPage:
    """Every feature of a wfs:FeatureCollection (WFS 2.0 or 1.1) in one GetFeature answer."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise GmlError(f"the WFS answer is not XML: {e}") from e
    if _local(root.tag) in {"ExceptionReport", "ServiceExceptionReport"}:
        text = " ".join(t.strip() for t in root.itertext() if t.strip())
        raise GmlError(f"the WFS answered with an exception: {text[:500]}")
    features: list[GmlFeature] = []
    for member in root:
        if member.tag in WFS_MEMBERS:
            features.extend(_feature(f, types or {}) for f in member)
    return GmlPage(features, _int(root.get("numberMatched")), _int(root.get("numberReturned")))


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


_URN = re.compile(r"^urn:ogc:def:crs:(?P<auth>[A-Za-z]+):[^:]*:(?P<code>[^:]+)$", re.IGNORECASE)
_URI = re.compile(r"^https?://www\.opengis\.net/def/crs/(?P<auth>[^/]+)/[^/]+/(?P<code>[^/]+)$")


def crs_code(srs_name: str | None) -> str | None:
    """`AUTHORITY:CODE` for an srsName in any of its OGC spellings (URN, URI, short)."""
    if not srs_name:
        return None
    text = srs_name.strip()
    match = _URN.match(text) or _URI.match(text)
    if match:
        return f"{match['auth'].upper()}:{match['code']}"
    if text.lower().startswith("http://www.opengis.net/gml/srs/epsg.xml#"):
        return "EPSG:" + text.rsplit("#", 1)[1]
    return text
