"""GeoJSON geometries in (RFC 7946, NGSI-LD GeoProperty, clause 4.7) and WKT literals out.

Validation is done here rather than by ``shapely.from_geojson`` so that every error can say
which geometry, ring and position is wrong; shapely then only judges topological validity.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import shapely

from urbis.twin.errors import BadRequestData

CRS84 = "<http://www.opengis.net/def/crs/OGC/1.3/CRS84>"
GEOMETRY_TYPES = (
    "Point",
    "MultiPoint",
    "LineString",
    "MultiLineString",
    "Polygon",
    "MultiPolygon",
    "GeometryCollection",
)

Position = tuple[float, ...]


def parse_geometry(value: object, *, what: str = "GeoProperty value") -> shapely.Geometry:
    """Validate a GeoJSON geometry object and return it as a shapely geometry (CRS84).

    A geometry keeps its altitudes only when all its positions have one; mixed 2D/3D positions
    give a 2D geometry. Every problem raises ``BadRequestData`` naming the offending member.
    """
    position = point_position(value)
    if position is not None:  # a valid position is always a valid Point
        return shapely.Point(position)
    geom = _Parser(what).geometry(value, "", nested=False)
    reason = shapely.is_valid_reason(geom)
    if reason != "Valid Geometry":
        raise BadRequestData(f"{what} is not a valid geometry: {reason}")
    return geom


def point_position(value: object) -> Position | None:
    """The position of a well-formed GeoJSON Point within CRS84 bounds, else None.

    Points are the bulk of a city twin: checking them here, without building a shapely
    geometry, keeps validation, WKT writing and indexing cheap on the write path. None means
    "not a valid Point": ``parse_geometry`` then says precisely why, or handles other types.
    """
    if not isinstance(value, dict) or value.get("type") != "Point":
        return None
    coords = value.get("coordinates")
    if not isinstance(coords, list) or not 2 <= len(coords) <= 3:
        return None
    position: list[float] = []
    for item in coords:
        if isinstance(item, bool) or not isinstance(item, int | float):
            return None
        try:
            number = float(item)
        except OverflowError:
            return None
        if not math.isfinite(number):
            return None
        position.append(number)
    if not (-180.0 <= position[0] <= 180.0 and -90.0 <= position[1] <= 90.0):
        return None
    return tuple(position)


def geojson_wkt(value: object, *, what: str = "GeoProperty value") -> str:
    """``wkt_literal(parse_geometry(value))``, written straight from the numbers for Points."""
    position = point_position(value)
    if position is None:
        return wkt_literal(parse_geometry(value, what=what))
    tag = "POINT Z(" if len(position) == 3 else "POINT("
    return f"{CRS84} {tag}{' '.join(_number(v) for v in position)})"


def wkt_literal(geom: shapely.Geometry) -> str:
    """GeoSPARQL ``geo:wktLiteral`` text: the CRS84 IRI then WKT with round-trip precision.

    Written by hand because GEOS's writer keeps only 16 significant digits.
    """
    return f"{CRS84} {_wkt(geom)}"


class _Parser:
    def __init__(self, what: str) -> None:
        self.what = what
        self.dims: set[int] = set()  # position lengths seen in the current simple geometry

    def fail(self, path: str, message: str) -> BadRequestData:
        where = f"{self.what}: {path}" if path else self.what
        return BadRequestData(f"{where}: {message}")

    def geometry(self, value: object, path: str, *, nested: bool) -> shapely.Geometry:
        if not isinstance(value, dict):
            raise self.fail(
                path,
                'expected a GeoJSON geometry object such as {"type": "Point", "coordinates": '
                f"[longitude, latitude]}}, got {show_json(value)}",
            )
        kind = value.get("type")
        if kind is None:
            raise self.fail(path, f"missing member 'type' (one of {', '.join(GEOMETRY_TYPES)})")
        if kind not in GEOMETRY_TYPES:
            raise self.fail(
                _join(path, "type"),
                f"unknown geometry type {show_json(kind)}; "
                f"expected one of {', '.join(GEOMETRY_TYPES)}",
            )
        if kind == "GeometryCollection":
            return self.collection(value, path, nested=nested)
        if "coordinates" not in value:
            raise self.fail(path, f"a {kind} needs a member 'coordinates'")
        self.dims = set()
        coords = self.coordinates(kind, value["coordinates"], _join(path, "coordinates"))
        if len(self.dims) > 1:  # mixed 2D/3D positions: a shapely geometry has one dimension
            coords = _drop_z(coords)
        return _BUILD[kind](coords)

    def coordinates(self, kind: str, coords: object, path: str) -> Any:
        if kind == "Point":
            return self.position(coords, path)
        if kind == "LineString":
            return self.line(coords, path)
        if kind == "Polygon":
            return self.polygon(coords, path)
        part = kind.removeprefix("Multi")
        items = self.items(coords, path, kind, 1, "position" if part == "Point" else part)
        return [self.coordinates(part, c, f"{path}[{i}]") for i, c in enumerate(items)]

    def collection(self, value: dict[str, Any], path: str, *, nested: bool) -> shapely.Geometry:
        if nested:
            raise self.fail(
                path, "a GeometryCollection inside a GeometryCollection is not supported"
            )
        members = value.get("geometries")
        gpath = _join(path, "geometries")
        if not isinstance(members, list) or not members:
            raise self.fail(
                gpath, f"expected a non-empty array of geometries, got {show_json(members)}"
            )
        return shapely.GeometryCollection(
            [self.geometry(m, f"{gpath}[{i}]", nested=True) for i, m in enumerate(members)]
        )

    def items(self, value: object, path: str, kind: str, minimum: int, noun: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(path, f"a {kind} needs an array of {noun}s, got {show_json(value)}")
        if len(value) < minimum:
            least = f"one {noun}" if minimum == 1 else f"{minimum} {noun}s"
            raise self.fail(path, f"a {kind} needs at least {least}, got {len(value)}")
        return value

    def line(self, value: object, path: str) -> list[Position]:
        items = self.items(value, path, "LineString", 2, "position")
        return [self.position(p, f"{path}[{i}]") for i, p in enumerate(items)]

    def polygon(self, value: object, path: str) -> list[list[Position]]:
        rings = self.items(value, path, "Polygon", 1, "linear ring")
        return [self.ring(r, f"{path}[{i}]", i) for i, r in enumerate(rings)]

    def ring(self, value: object, path: str, index: int) -> list[Position]:
        name = "exterior ring" if index == 0 else f"interior ring {index}"
        if not isinstance(value, list):
            raise self.fail(path, f"{name}: expected an array of positions, got {show_json(value)}")
        if len(value) < 4:
            raise self.fail(
                path, f"{name}: a linear ring needs at least 4 positions, got {len(value)}"
            )
        ring = [self.position(p, f"{path}[{i}]") for i, p in enumerate(value)]
        if ring[0] != ring[-1]:
            raise self.fail(
                path,
                f"{name} is not closed: the first position {show_json(value[0])} differs from "
                f"the last {show_json(value[-1])}",
            )
        return ring

    def position(self, value: object, path: str) -> Position:
        if not isinstance(value, list):
            raise self.fail(
                path,
                "expected a position [longitude, latitude] or [longitude, latitude, altitude], "
                f"got {show_json(value)}",
            )
        if len(value) not in (2, 3):
            raise self.fail(path, f"a position has 2 or 3 numbers, got {len(value)}")
        lon = self.number(value[0], path, "longitude")
        lat = self.number(value[1], path, "latitude")
        if not -180.0 <= lon <= 180.0:
            raise self.fail(path, f"longitude {show_json(value[0])} is outside [-180, 180]")
        if not -90.0 <= lat <= 90.0:
            raise self.fail(path, f"latitude {show_json(value[1])} is outside [-90, 90]")
        self.dims.add(len(value))
        if len(value) == 2:
            return (lon, lat)
        return (lon, lat, self.number(value[2], path, "altitude"))

    def number(self, value: object, path: str, name: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(path, f"{name} must be a number, got {show_json(value)}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise self.fail(path, f"{name} must be a finite number, got {show_json(value)}")
        return number


_BUILD: dict[str, Callable[[Any], shapely.Geometry]] = {
    "Point": shapely.Point,
    "MultiPoint": shapely.MultiPoint,
    "LineString": shapely.LineString,
    "MultiLineString": shapely.MultiLineString,
    "Polygon": lambda rings: shapely.Polygon(rings[0], rings[1:]),
    "MultiPolygon": lambda polygons: shapely.MultiPolygon([(p[0], p[1:]) for p in polygons]),
}


def _drop_z(coords: Any) -> Any:
    if isinstance(coords, tuple):
        return coords[:2]
    return [_drop_z(c) for c in coords]


def _join(path: str, member: str) -> str:
    return f"{path}.{member}" if path else member


def show_json(value: object) -> str:
    """A JSON rendering of a client's value for error details, cut at 80 characters."""
    try:
        text = json.dumps(value, default=repr, ensure_ascii=False)
    except (RecursionError, ValueError):
        text = f"a deeply nested {type(value).__name__}"
    return text if len(text) <= 80 else text[:77] + "..."


# -- WKT ------------------------------------------------------------------------------------


def _wkt(geom: shapely.Geometry) -> str:
    if isinstance(geom, shapely.GeometryCollection):
        return "GEOMETRYCOLLECTION(" + ",".join(_wkt(g) for g in geom.geoms) + ")"
    z = bool(shapely.has_z(geom))
    tag: str = geom.geom_type.upper() + (" Z" if z else "")
    if isinstance(geom, shapely.Point | shapely.LineString):
        body = _coords(geom, z)
    elif isinstance(geom, shapely.Polygon):
        body = _rings(geom, z)
    elif isinstance(geom, shapely.MultiPoint | shapely.MultiLineString):
        body = ",".join(f"({_coords(g, z)})" for g in geom.geoms)
    elif isinstance(geom, shapely.MultiPolygon):
        body = ",".join(f"({_rings(g, z)})" for g in geom.geoms)
    else:
        raise TypeError(f"cannot write {geom.geom_type} as WKT")
    return f"{tag}({body})"


def _rings(polygon: shapely.Polygon, z: bool) -> str:
    rings = [polygon.exterior, *polygon.interiors]
    return ",".join(f"({_coords(r, z)})" for r in rings)


def _coords(geom: shapely.Geometry, z: bool) -> str:
    rows = shapely.get_coordinates(geom, include_z=z).tolist()
    return ",".join(" ".join(_number(v) for v in row) for row in rows)


def _number(value: float) -> str:
    """Shortest text that reads back as the same float, without exponent notation."""
    text = repr(value)
    if "e" in text:
        text = format(Decimal(text), "f")
    return text[:-2] if text.endswith(".0") else text
