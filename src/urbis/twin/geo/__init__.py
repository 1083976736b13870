"""Geometry for the twin: GeoProperty validation, WKT literals, geo-queries, spatial index."""

from urbis.twin.geo.geometry import (
    CRS84,
    GEOMETRY_TYPES,
    geojson_wkt,
    parse_geometry,
    point_position,
    wkt_literal,
)
from urbis.twin.geo.index import SpatialIndex
from urbis.twin.geo.query import GeoQuery, match_points, matches, parse_geoq

__all__ = [
    "CRS84",
    "GEOMETRY_TYPES",
    "GeoQuery",
    "SpatialIndex",
    "geojson_wkt",
    "match_points",
    "matches",
    "parse_geometry",
    "parse_geoq",
    "point_position",
    "wkt_literal",
]
