"""A uniform-grid spatial index over GeoProperty geometries, kept in step with writes.

Points, the bulk of a city twin, sit in grid cells as bare coordinates, so a query tests them
with vectorised calls (``match_points``). Other geometries are registered in every cell their
bounding box covers, or kept in a short list of large geometries when it covers many cells.
"""

from __future__ import annotations

import math
import threading
from array import array
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from itertools import compress
from typing import TypeVar

import numpy as np
import shapely

from urbis.twin.geo.geometry import Position, parse_geometry, point_position
from urbis.twin.geo.query import Floats, GeoQuery, NearFrame, match_points, matches

Cell = tuple[int, int]
Box = tuple[float, float, float, float]  # min lon, min lat, max lon, max lat

_MAX_SHAPE_CELLS = 64
# A non-point geometry's box is widened by this fraction of its span: ``near`` is decided on
# straight edges in the local projection, which stray from the straight CRS84 edges by at most
# span²/16 (radians), under 10 % of the span for spans below 90°.
_SHAPE_MARGIN = 0.1
_EDGE_SAMPLES = 16
_V = TypeVar("_V")


@dataclass(frozen=True, slots=True)
class _Entry:
    geometry: shapely.Geometry
    point: tuple[float, float] | None  # longitude, latitude of a Point
    box: Box
    cells: tuple[Cell, ...]  # cells of a shape's widened box; empty for points and large ones


class _PointCell:
    """The points of one cell as parallel arrays, so a query copies them in bulk."""

    __slots__ = ("keys", "lats", "lons", "slot")

    def __init__(self) -> None:
        self.keys: list[Hashable] = []
        self.lons = array("d")
        self.lats = array("d")
        self.slot: dict[Hashable, int] = {}

    def add(self, key: Hashable, lon: float, lat: float) -> None:
        self.slot[key] = len(self.keys)
        self.keys.append(key)
        self.lons.append(lon)
        self.lats.append(lat)

    def remove(self, key: Hashable) -> None:
        """Move the last point into the freed slot: O(1)."""
        i = self.slot.pop(key)
        last = self.keys.pop()
        lon, lat = self.lons.pop(), self.lats.pop()
        if last != key:
            self.keys[i], self.lons[i], self.lats[i] = last, lon, lat
            self.slot[last] = i


@dataclass(frozen=True, slots=True)
class _Plan:
    box: Box | None  # where the keys that decide the answer lie; None: anywhere
    complement: bool  # the answer is every key except the non-matching ones in ``box``


class SpatialIndex:
    """Geometries by key, answering geo-queries exactly (``query``) or as a superset
    (``candidates``). Thread-safe; updates cost a dict operation per cell.

    A ``near`` region holding a pole or crossing the antimeridian is answered by a full scan.
    """

    def __init__(self, cell_size: float = 0.01) -> None:
        if not cell_size > 0:
            raise ValueError("cell_size must be positive (degrees)")
        self.cell_size = cell_size
        self._lock = threading.Lock()
        self._entries: dict[Hashable, _Entry] = {}
        self._points: dict[Cell, _PointCell] = {}
        self._shapes: dict[Cell, set[Hashable]] = {}
        self._large: set[Hashable] = set()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def add(self, key: Hashable, geom: shapely.Geometry) -> None:
        """Index ``geom`` under ``key``, replacing what the key held."""
        entry = self._entry(geom)
        with self._lock:
            self._put(key, entry)

    def _put(self, key: Hashable, entry: _Entry) -> None:
        """With the lock held: ``entry`` replaces what ``key`` held."""
        self._discard(key)
        self._entries[key] = entry
        if entry.point is not None:
            where = self._cell(*entry.point)
            points = self._points.get(where)
            if points is None:
                points = self._points[where] = _PointCell()
            points.add(key, *entry.point)
        elif entry.cells:
            for cell in entry.cells:
                self._shapes.setdefault(cell, set()).add(key)
        else:
            self._large.add(key)

    def add_geojson(self, items: Iterable[tuple[Hashable, object]]) -> None:
        """Index validated GeoJSON geometries (a write's GeoProperty values) in one go.

        Points, checked by ``point_position`` only, are built by one vectorised shapely call
        per write instead of a parse each: the write path's third parse of every geometry.
        """
        point_keys: list[Hashable] = []
        positions: list[Position] = []
        for key, value in items:
            position = point_position(value)
            if position is None:
                self.add(key, parse_geometry(value))
            else:
                point_keys.append(key)
                positions.append(position)
        if not point_keys:
            return
        for dims in (2, 3):
            chosen = [i for i, p in enumerate(positions) if len(p) == dims]
            if not chosen:
                continue
            coords = np.array([positions[i] for i in chosen], dtype=float)
            points = shapely.points(coords)
            entries = []
            for i, geom in zip(chosen, points.tolist(), strict=True):
                lon, lat = positions[i][0], positions[i][1]
                entries.append((point_keys[i], _Entry(geom, (lon, lat), (lon, lat, lon, lat), ())))
            with self._lock:
                for key, entry in entries:
                    self._put(key, entry)

    def remove(self, key: Hashable) -> None:
        """Forget ``key``; a key that is not indexed is ignored."""
        with self._lock:
            self._discard(key)

    def geometry(self, key: Hashable) -> shapely.Geometry | None:
        with self._lock:
            entry = self._entries.get(key)
        return None if entry is None else entry.geometry

    def candidates(self, query: GeoQuery) -> set[Hashable]:
        """Keys that may match ``query`` (never misses one); ``matches`` decides."""
        plan = _plan(query)
        with self._lock:
            if plan.complement:
                return set(self._entries)
            keys, _, _, shapes = self._gather(plan.box)
        return set(keys).union(key for key, _ in shapes)

    def query(self, query: GeoQuery) -> set[Hashable]:
        """Keys whose geometry matches ``query`` (exactly ``matches``)."""
        plan = _plan(query)
        with self._lock:
            keys, lons, lats, shapes = self._gather(plan.box)
            everything = set(self._entries) if plan.complement else None
        hits = match_points(query, lons, lats)
        found = set(compress(keys, (~hits if plan.complement else hits).tolist()))
        found.update(key for key, geom in shapes if matches(query, geom) != plan.complement)
        return found if everything is None else everything - found

    # -- internals (callers hold the lock unless said otherwise) ---------------------------

    def _cell(self, lon: float, lat: float) -> Cell:
        return math.floor(lon / self.cell_size), math.floor(lat / self.cell_size)

    def _entry(self, geom: shapely.Geometry) -> _Entry:
        """Without the lock: the cells a geometry occupies."""
        if isinstance(geom, shapely.Point):
            lon, lat = geom.x, geom.y
            return _Entry(geom, (lon, lat), (lon, lat, lon, lat), ())
        minx, miny, maxx, maxy = shapely.bounds(geom).tolist()
        margin = _SHAPE_MARGIN * max(maxx - minx, maxy - miny) + 1e-9
        box = (minx - margin, miny - margin, maxx + margin, maxy + margin)
        (x0, y0), (x1, y1) = self._cell(box[0], box[1]), self._cell(box[2], box[3])
        if (x1 - x0 + 1) * (y1 - y0 + 1) > _MAX_SHAPE_CELLS:
            return _Entry(geom, None, box, ())
        cells = tuple((x, y) for x in range(x0, x1 + 1) for y in range(y0, y1 + 1))
        return _Entry(geom, None, box, cells)

    def _discard(self, key: Hashable) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        if entry.point is not None:
            cell = self._cell(*entry.point)
            points = self._points[cell]
            points.remove(key)
            if not points.keys:
                del self._points[cell]
        for cell in entry.cells:
            shapes = self._shapes[cell]
            shapes.discard(key)
            if not shapes:
                del self._shapes[cell]
        self._large.discard(key)

    def _gather(
        self, box: Box | None
    ) -> tuple[list[Hashable], Floats, Floats, list[tuple[Hashable, shapely.Geometry]]]:
        """Points inside ``box`` (keys, longitudes, latitudes) and shapes whose box meets it."""
        keys: list[Hashable] = []
        if box is None:
            cells = list(self._points.values())
            shape_keys: Iterable[Hashable] = (
                k for k, e in self._entries.items() if e.point is None
            )
        else:
            cells = self._occupied(self._points, box)
            found: set[Hashable] = set(self._large)
            found.update(*self._occupied(self._shapes, box))
            shape_keys = (k for k in found if _meets(self._entries[k].box, box))
        shapes = [(k, self._entries[k].geometry) for k in shape_keys]
        for cell in cells:
            keys.extend(cell.keys)
        lons = np.concatenate([np.frombuffer(c.lons) for c in cells] or [np.empty(0)])
        lats = np.concatenate([np.frombuffer(c.lats) for c in cells] or [np.empty(0)])
        if box is not None:
            inside = (lons >= box[0]) & (lats >= box[1]) & (lons <= box[2]) & (lats <= box[3])
            keys = list(compress(keys, inside.tolist()))
            lons, lats = lons[inside], lats[inside]
        return keys, lons, lats, shapes

    def _occupied(self, grid: dict[Cell, _V], box: Box) -> list[_V]:
        """Values of the cells meeting ``box``: by cell range, or by scanning when shorter."""
        (x0, y0), (x1, y1) = self._cell(box[0], box[1]), self._cell(box[2], box[3])
        if (x1 - x0 + 1) * (y1 - y0 + 1) <= len(grid):
            cells = (grid.get((x, y)) for x in range(x0, x1 + 1) for y in range(y0, y1 + 1))
            return [v for v in cells if v is not None]
        return [v for (x, y), v in grid.items() if x0 <= x <= x1 and y0 <= y <= y1]


def _meets(a: Box, b: Box) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def _plan(query: GeoQuery) -> _Plan:
    if query.georel == "near":
        # Only minDistance: the non-matching keys are those closer than it.
        distance = query.max_distance if query.max_distance is not None else query.min_distance
        assert distance is not None
        return _Plan(_near_box(query.frame, distance), query.max_distance is None)
    minx, miny, maxx, maxy = shapely.bounds(query.geometry).tolist()
    return _Plan((minx, miny, maxx, maxy), query.georel == "disjoint")


def _near_box(frame: NearFrame, distance: float) -> Box | None:
    """CRS84 box holding every point within ``distance`` metres of the reference in the
    frame's projection, or None when that region holds a pole or crosses the antimeridian."""
    minx, miny, maxx, maxy = shapely.bounds(frame.reference).tolist()
    minx, miny, maxx, maxy = minx - distance, miny - distance, maxx + distance, maxy + distance
    for pole in (90.0, -90.0):
        x, y = frame.transformer.transform(0.0, pole)
        if minx <= x <= maxx and miny <= y <= maxy:
            return None
    t = np.linspace(0.0, 1.0, _EDGE_SAMPLES, endpoint=False)
    xs = np.concatenate([minx + (maxx - minx) * t, np.full_like(t, maxx)])
    ys = np.concatenate([np.full_like(t, miny), miny + (maxy - miny) * t])
    xs = np.concatenate([xs, maxx - (maxx - minx) * t, np.full_like(t, minx)])
    ys = np.concatenate([ys, np.full_like(t, maxy), maxy - (maxy - miny) * t])
    lons, lats = frame.transformer.transform(xs, ys, direction="INVERSE")
    lons, lats = np.asarray(lons), np.asarray(lats)
    if not (np.isfinite(lons).all() and np.isfinite(lats).all()):
        return None
    if (np.abs(np.diff(lons, append=lons[:1])) > 180.0).any():
        return None
    # The sampled outline misses the bulge of the region's edges between samples.
    dlon = 0.01 * float(lons.max() - lons.min()) + 1e-9
    dlat = 0.01 * float(lats.max() - lats.min()) + 1e-9
    return (
        float(lons.min()) - dlon,
        max(float(lats.min()) - dlat, -90.0),
        float(lons.max()) + dlon,
        min(float(lats.max()) + dlat, 90.0),
    )
