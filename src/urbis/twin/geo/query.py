"""NGSI-LD geo-queries (ETSI GS CIM 009 v1.8 clause 4.10): parsing and the exact test.

Topological relations are evaluated by shapely in planar CRS84 coordinates, as GeoJSON defines
edges as straight lines in longitude/latitude. ``near`` distances are metres on the WGS84
ellipsoid: both geometries are projected to an azimuthal equidistant projection centred on the
reference geometry (the centre of its bounding box). Distances from the centre are then exact
geodesic distances, so ``near`` around a point is exact; around an extended geometry, distances
from other points are stretched by under 0.01 % within 100 km of the centre.
"""

from __future__ import annotations

import json
import math
import re
import threading
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import shapely
from numpy.typing import NDArray
from pyproj import Transformer

from urbis.twin.errors import BadRequestData
from urbis.twin.geo.geometry import parse_geometry, show_json

GEORELS = ("near", "within", "contains", "intersects", "equals", "disjoint", "overlaps")
QUERY_GEOMETRIES = (
    "Point",
    "MultiPoint",
    "LineString",
    "MultiLineString",
    "Polygon",
    "MultiPolygon",
)
_DISTANCE = re.compile(r"(maxDistance|minDistance)==(.*)")
_NUMBER = re.compile(r"\d+(\.\d+)?([eE][+-]?\d+)?")

Floats = NDArray[np.float64]
Bools = NDArray[np.bool_]


@dataclass(frozen=True)
class GeoQuery:
    """One geo-query: ``georel`` (with distances in metres for ``near``) against ``geometry``.

    ``geoproperty`` is the attribute term as given; the caller expands it.
    """

    georel: str
    geometry: shapely.Geometry
    max_distance: float | None = None
    min_distance: float | None = None
    geoproperty: str = "location"

    def __post_init__(self) -> None:
        if self.georel not in GEORELS:
            raise ValueError(f"unknown georel {self.georel!r}")
        if (self.georel == "near") != (
            self.max_distance is not None or self.min_distance is not None
        ):
            raise ValueError("near needs max_distance or min_distance; other relations none")

    @cached_property
    def frame(self) -> NearFrame:
        """The local projection ``near`` distances are measured in (built once per query)."""
        return NearFrame.around(self.geometry)

    @cached_property
    def _per_thread(self) -> threading.local:
        return threading.local()

    def prepared(self) -> shapely.Geometry:
        """A prepared copy of the reference geometry owned by the calling thread.

        GEOS prepared geometries build their indexes lazily and are not thread-safe
        (libgeos/geos#825), and shapely releases the GIL, so each thread gets its own.
        """
        local = self._per_thread
        geom: shapely.Geometry | None = getattr(local, "geometry", None)
        if geom is None:
            geom = shapely.from_wkb(shapely.to_wkb(self.geometry))
            shapely.prepare(geom)
            local.geometry = geom
        return geom


@dataclass(frozen=True)
class NearFrame:
    """An azimuthal equidistant projection (metres) and the reference geometry in it."""

    transformer: Transformer
    reference: shapely.Geometry
    centred_point: bool  # the reference is a single point, at the origin

    @classmethod
    def around(cls, geometry: shapely.Geometry) -> NearFrame:
        minx, miny, maxx, maxy = shapely.bounds(geometry).tolist()
        lon, lat = (minx + maxx) / 2, (miny + maxy) / 2
        transformer = Transformer.from_pipeline(
            f"+proj=aeqd +lat_0={lat!r} +lon_0={lon!r} +ellps=WGS84"
        )
        reference = _project(transformer, geometry)
        return cls(transformer, reference, isinstance(geometry, shapely.Point))

    def project(self, geometry: shapely.Geometry) -> shapely.Geometry:
        return _project(self.transformer, geometry)

    def distances(self, lons: Floats, lats: Floats) -> Floats:
        """Metres from each point to the reference geometry."""
        xs, ys = self.transformer.transform(lons, lats)
        if self.centred_point:
            return np.asarray(np.hypot(xs, ys), dtype=np.float64)
        return np.asarray(shapely.distance(self.reference, shapely.points(xs, ys)))


def _project(transformer: Transformer, geometry: shapely.Geometry) -> shapely.Geometry:
    def forward(coords: Floats) -> Floats:
        xs, ys = transformer.transform(coords[:, 0], coords[:, 1])
        return np.column_stack([xs, ys])

    return shapely.transform(geometry, forward)


def parse_geoq(
    georel: str | None,
    geometry: str | None,
    coordinates: str | list[Any] | None,
    geoproperty: str | None,
) -> GeoQuery | None:
    """Build a GeoQuery from the query-string parameters or a ``geoQ`` object's members.

    ``coordinates`` is the JSON text of a GeoJSON coordinates array (query string) or the
    array itself (``geoQ``). Returns None when no geo-query is given.
    """
    given = {"georel": georel, "geometry": geometry, "coordinates": coordinates}
    if all(v is None for v in given.values()):
        if geoproperty is not None:
            raise BadRequestData(
                "geoproperty is only meaningful in a geo-query: give georel, geometry and "
                "coordinates too, or drop geoproperty"
            )
        return None
    missing = [name for name, v in given.items() if v is None]
    if missing:
        raise BadRequestData(
            "a geo-query needs georel, geometry and coordinates together; missing: "
            + ", ".join(missing)
        )
    if not isinstance(georel, str):
        raise BadRequestData(f"georel must be a string, got {show_json(georel)}")
    relation, max_distance, min_distance = _parse_georel(georel)
    if not isinstance(geometry, str) or geometry not in QUERY_GEOMETRIES:
        raise BadRequestData(
            f"geometry {show_json(geometry)} is not supported; expected one of "
            f"{', '.join(QUERY_GEOMETRIES)} (case-sensitive)"
        )
    coords: object = coordinates
    if isinstance(coordinates, str):
        try:
            coords = json.loads(coordinates)
        except (ValueError, RecursionError) as exc:
            raise BadRequestData(
                f"coordinates must be a JSON array such as [8.0,40.0]; {coordinates[:80]!r} is "
                f"not valid JSON: {exc}"
            ) from None
    if not isinstance(coords, list):
        raise BadRequestData(
            f"coordinates must be a JSON array such as [8.0,40.0], got {show_json(coords)}"
        )
    shape = parse_geometry({"type": geometry, "coordinates": coords}, what="geo-query")
    if geoproperty is not None and (not isinstance(geoproperty, str) or not geoproperty):
        raise BadRequestData(
            f"geoproperty must be a non-empty attribute name, got {show_json(geoproperty)}"
        )
    return GeoQuery(
        georel=relation,
        geometry=shape,
        max_distance=max_distance,
        min_distance=min_distance,
        geoproperty=geoproperty or "location",
    )


def _parse_georel(text: str) -> tuple[str, float | None, float | None]:
    relation, *modifiers = text.split(";")
    if relation not in GEORELS:
        raise BadRequestData(
            f"georel {text!r}: unknown relation {relation!r}; expected one of "
            f"{', '.join(GEORELS)} (near with ;maxDistance==<metres> or ;minDistance==<metres>)"
        )
    if relation != "near":
        if modifiers:
            raise BadRequestData(f"georel {text!r}: {relation!r} takes no ';' modifiers")
        return relation, None, None
    distances: dict[str, float] = {}
    for modifier in modifiers:
        match = _DISTANCE.fullmatch(modifier)
        if match is None:
            raise BadRequestData(
                f"georel {text!r}: {modifier!r} is not maxDistance==<metres> or "
                "minDistance==<metres>"
            )
        name, value = match.groups()
        if name in distances:
            raise BadRequestData(f"georel {text!r}: {name} is given twice")
        number = float(value) if _NUMBER.fullmatch(value) else math.nan
        if not math.isfinite(number):
            raise BadRequestData(
                f"georel {text!r}: {name} must be a non-negative number of metres, got {value!r}"
            )
        distances[name] = number
    if not distances:
        raise BadRequestData(
            f"georel {text!r}: near needs ;maxDistance==<metres> or ;minDistance==<metres>"
        )
    max_distance, min_distance = distances.get("maxDistance"), distances.get("minDistance")
    if max_distance is not None and min_distance is not None and min_distance > max_distance:
        raise BadRequestData(
            f"georel {text!r}: minDistance {min_distance:g} exceeds maxDistance {max_distance:g}"
        )
    return relation, max_distance, min_distance


def matches(query: GeoQuery, geom: shapely.Geometry) -> bool:
    """Whether a target geometry satisfies the geo-query."""
    if isinstance(geom, shapely.Point):
        lon, lat = np.array([geom.x]), np.array([geom.y])
        return bool(match_points(query, lon, lat)[0])
    if query.georel == "near":
        frame = query.frame
        distance = shapely.distance(frame.reference, frame.project(geom))
        return bool(_within_distances(query, np.array([distance]))[0])
    ref = query.prepared()
    # The reference is the prepared side, so relations are written from its point of view.
    relation = {
        "within": shapely.contains,
        "contains": shapely.within,
        "intersects": shapely.intersects,
        "disjoint": shapely.disjoint,
        "equals": shapely.equals,
        "overlaps": shapely.overlaps,
    }[query.georel]
    return bool(relation(ref, geom))


def match_points(query: GeoQuery, lons: Floats, lats: Floats) -> Bools:
    """``matches`` for many points at once; ``matches`` itself uses it for every Point."""
    if query.georel == "near":
        return _within_distances(query, query.frame.distances(lons, lats))
    ref = query.prepared()
    if query.georel == "within":
        return np.asarray(shapely.contains_xy(ref, lons, lats))
    if query.georel == "intersects":
        return np.asarray(shapely.intersects_xy(ref, lons, lats))
    if query.georel == "disjoint":
        return ~np.asarray(shapely.intersects_xy(ref, lons, lats))
    points = shapely.points(lons, lats)
    relation = {"contains": shapely.within, "equals": shapely.equals, "overlaps": shapely.overlaps}
    return np.asarray(relation[query.georel](ref, points))


def _within_distances(query: GeoQuery, distance: Floats) -> Bools:
    ok = np.ones(distance.shape, dtype=np.bool_)
    if query.max_distance is not None:
        ok &= distance <= query.max_distance
    if query.min_distance is not None:
        ok &= distance >= query.min_distance
    return ok
