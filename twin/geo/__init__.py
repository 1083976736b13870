"""Geometry for the twin: GeoProperty validation, WKT literals, geo-queries, spatial index."""

from twin.geo.geometry import CRS84, GEOMETRY_TYPES, parse_geometry, wkt_literal
from twin.geo.index import SpatialIndex
from twin.geo.query import GeoQuery, match_points, matches, parse_geoq

__all__ = [
    "CRS84",
    "GEOMETRY_TYPES",
    "GeoQuery",
    "SpatialIndex",
    "match_points",
    "matches",
    "parse_geometry",
    "parse_geoq",
    "wkt_literal",
]
