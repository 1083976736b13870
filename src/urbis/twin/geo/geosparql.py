"""GeoSPARQL for researchers: spatial filters answered by the twin's spatial index, and the
`geof:` functions pyoxigraph lacks or gets wrong.

`prepare(query, index)` rewrites a filter on a constant geometry, such as
`FILTER(geof:sfWithin(?wkt, "<CRS84> POLYGON(...)"^^geo:wktLiteral))`, into
`VALUES ?wkt { <every stored literal that satisfies it> }` appended to the same group, with the
matches computed exactly by the index (GEOS predicates, geodesic distances). The engine then
joins from the matching literals instead of testing every geometry of the tenant (more than 999
go into a UNION of copies of the group, a block of at most 999 in each: pyoxigraph joins a
larger block row by row), and an engine without `geof:` (Virtuoso 7) answers the query too.
A rewrite happens only where the meaning is certainly kept; anything the rewriter does not
fully understand is left to the engine unchanged.

The custom functions (registered under the standard `geof:` IRIs) give `distance` in metres on
the WGS84 ellipsoid for every geometry type, `buffer` in metres, `boundary`, and the set
operations with GEOS precision. Literals are CRS84 `geo:wktLiteral`s (the IRI prefix may be
omitted; EPSG:4326 literals are read with their latitude-first axis order).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import shapely
from pyoxigraph import Literal, NamedNode
from pyproj import Geod

from urbis.ontology import ns
from urbis.twin.geo import CRS84, GeoQuery, SpatialIndex, wkt_literal
from urbis.twin.geo.geometry import _number as wkt_number  # the writer of stored literals
from urbis.twin.geo.query import Floats, NearFrame

UOM = "http://www.opengis.net/def/uom/OGC/1.0/"
WKT_LITERAL = ns.GEO + "wktLiteral"
EPSG_4326 = "http://www.opengis.net/def/crs/EPSG/0/4326"
# Most rows of one VALUES block. pyoxigraph 0.5.13's greedy planner starts a join from its
# smallest operand: a pattern with a constant object (`?e a waste:WasteContainer`) is estimated
# at 1,000 rows, a VALUES block at its row count. A block of 1,000 rows or more loses, and is
# then joined by a nested loop (the block scanned once per row of the group): 999 literals
# answer in 11 ms over 100,000 points, 1,001 in 3.7 s. So a larger match set is written as a
# UNION of copies of the group, one block of at most this many rows each.
VALUES_CHUNK = 999
# Most literals one rewrite injects (in chunks); beyond this the engine's own scan is kept.
# A literal costs about 5 us to parse and 5 us to join, and the copies grow slightly worse than
# linearly (over 100,000 points: 6,283 rows 60 ms, 14,895 rows 240 to 600 ms, 50,000 rows
# 4.5 s, against a scan of 600 to 900 ms).
MAX_VALUES = 10_000
# Distances above this are left to the engine: the candidate margin below assumes the local
# projection's stretch stays small (under 0.01 % within 100 km of its centre).
MAX_REWRITE_DISTANCE = 200_000.0
_CANDIDATE_MARGIN = 1.05

_GEOD = Geod(ellps="WGS84")
_WKT_NODE = NamedNode(WKT_LITERAL)
_UNITS = {UOM + "metre": 1.0, UOM + "kilometre": 1000.0}
_RELATIONS = {"sfWithin": "within", "sfContains": "contains", "sfIntersects": "intersects"}
_CONVERSE = {"within": "contains", "contains": "within", "intersects": "intersects"}

Term = Any  # a pyoxigraph term (NamedNode, Literal, BlankNode, Triple) or None
CustomFunction = Callable[..., Any]


# -- literals --------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def parse_wkt(text: str) -> shapely.Geometry | None:
    """The CRS84 geometry of a `geo:wktLiteral`'s text, None when unreadable or in another CRS."""
    body = text.strip()
    crs = ns.CRS84
    if body.startswith("<"):
        end = body.find(">")
        if end < 0:
            return None
        crs, body = body[1:end], body[end + 1 :].strip()
    if crs not in (ns.CRS84, EPSG_4326):
        return None
    try:
        geom = shapely.from_wkt(body)
    except shapely.errors.GEOSException:
        return None
    if crs == EPSG_4326:
        geom = shapely.transform(geom, lambda xy: xy[:, ::-1])
    return geom


def read_geometry(term: Term) -> shapely.Geometry | None:
    if not isinstance(term, Literal) or term.datatype != _WKT_NODE:
        return None
    return parse_wkt(term.value)


def wkt_term(geom: shapely.Geometry) -> Literal:
    """A CRS84 `geo:wktLiteral`; empty results are written `<CRS84> POINT EMPTY` and the like."""
    text = f"{CRS84} {geom.geom_type.upper()} EMPTY" if geom.is_empty else wkt_literal(geom)
    return Literal(text, datatype=_WKT_NODE)


def _metres_per_unit(term: Term) -> float | None:
    return _UNITS.get(term.value) if isinstance(term, NamedNode) else None


def _number(term: Term) -> float | None:
    if not isinstance(term, Literal):
        return None
    try:
        value = float(term.value)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


# -- distances in metres ---------------------------------------------------------------------


@lru_cache(maxsize=256)
def _frame(geom: shapely.Geometry) -> NearFrame:
    """The azimuthal equidistant projection centred on a geometry (shared with NGSI-LD near)."""
    return NearFrame.around(geom)


def _geodesic(lon1: Floats, lat1: Floats, lon2: Floats, lat2: Floats) -> Floats:
    """Geodesic distances on WGS84 (Karney's algorithm: exact to nanometres)."""
    return np.asarray(_GEOD.inv(lon1, lat1, lon2, lat2)[2], dtype=np.float64)


def _to_shape(shape: shapely.Geometry, lons: Floats, lats: Floats) -> Floats:
    """Metres from points to a non-point geometry: 0 where the point meets it in CRS84."""
    distances = _frame(shape).distances(lons, lats)
    return np.where(shapely.intersects_xy(shape, lons, lats), 0.0, distances)


def _array(value: float) -> Floats:
    return np.array([value], dtype=np.float64)


def distance_metres(a: shapely.Geometry, b: shapely.Geometry) -> float:
    """The distance `geof:distance(a, b, uom:metre)` answers.

    Point to point: geodesic (exact). Point to any other geometry: in the azimuthal equidistant
    projection centred on that geometry, as NGSI-LD `near` measures. Two extended geometries:
    0 when they intersect, else in the projection centred on both.
    """
    if a.is_empty or b.is_empty:
        raise ValueError("distance to an empty geometry")
    a_point, b_point = isinstance(a, shapely.Point), isinstance(b, shapely.Point)
    if a_point and b_point:
        return float(_geodesic(_array(a.x), _array(a.y), _array(b.x), _array(b.y))[0])
    if a_point:
        return float(_to_shape(b, _array(a.x), _array(a.y))[0])
    if b_point:
        return float(_to_shape(a, _array(b.x), _array(b.y))[0])
    if shapely.intersects(a, b):
        return 0.0
    frame = NearFrame.around(shapely.GeometryCollection([a, b]))
    return float(shapely.distance(frame.project(a), frame.project(b)))


def buffer_metres(geom: shapely.Geometry, radius: float) -> shapely.Geometry:
    """`geom` grown by `radius` metres, built in the projection centred on it."""
    frame = _frame(geom)
    grown = shapely.buffer(frame.reference, radius, quad_segs=16)
    transformer = frame.transformer

    def inverse(xy: Floats) -> Floats:
        lons, lats = transformer.transform(xy[:, 0], xy[:, 1], direction="INVERSE")
        return np.column_stack([lons, lats])

    return shapely.transform(grown, inverse)


# -- custom functions (pyoxigraph terms in and out; None is a SPARQL error: unbound) ---------


_POINT = re.compile(
    r"\s*(?:<http://www\.opengis\.net/def/crs/OGC/1\.3/CRS84>\s*)?POINT\s*\(\s*"
    r"([-+0-9.eE]+)\s+([-+0-9.eE]+)\s*\)\s*"
)
_XSD_DOUBLE = NamedNode(ns.XSD + "double")


def _point_xy(term: Term) -> tuple[float, float] | None:
    """Longitude and latitude of a 2D CRS84 point literal, read without GEOS (the hot path of
    distance joins: a fifth of the cost)."""
    if not isinstance(term, Literal) or term.datatype != _WKT_NODE:
        return None
    match = _POINT.fullmatch(term.value)
    if match is None:
        return None
    try:
        return float(match.group(1)), float(match.group(2))
    except ValueError:
        return None


def geof_distance(a: Term, b: Term, unit: Term = None) -> Literal | None:
    per_unit = _metres_per_unit(unit)
    pa, pb = _point_xy(a), _point_xy(b)
    if pa is not None and pb is not None and per_unit is not None:
        metres = _GEOD.inv(pa[0], pa[1], pb[0], pb[1])[2]  # as _geodesic, one pair
        return Literal(repr(float(metres) / per_unit), datatype=_XSD_DOUBLE)
    ga, gb = read_geometry(a), read_geometry(b)
    if ga is None or gb is None or per_unit is None or ga.is_empty or gb.is_empty:
        return None
    return Literal(repr(distance_metres(ga, gb) / per_unit), datatype=_XSD_DOUBLE)


def geof_buffer(geom: Term, radius: Term, unit: Term = None) -> Literal | None:
    g, r, per_unit = read_geometry(geom), _number(radius), _metres_per_unit(unit)
    if g is None or r is None or per_unit is None or g.is_empty:
        return None
    return wkt_term(buffer_metres(g, r * per_unit))


def geof_boundary(geom: Term) -> Literal | None:
    g = read_geometry(geom)
    return None if g is None else wkt_term(shapely.boundary(g))


def _set_operation(operation: Callable[..., Any], a: Term, b: Term) -> Literal | None:
    ga, gb = read_geometry(a), read_geometry(b)
    if ga is None or gb is None:
        return None
    try:
        return wkt_term(operation(ga, gb))
    except shapely.errors.GEOSException:
        return None


# Module-level (not closures) so that they pickle by name: a query process receives them.
def geof_intersection(a: Term, b: Term) -> Literal | None:
    return _set_operation(shapely.intersection, a, b)


def geof_union(a: Term, b: Term) -> Literal | None:
    return _set_operation(shapely.union, a, b)


def geof_difference(a: Term, b: Term) -> Literal | None:
    return _set_operation(shapely.difference, a, b)


def geof_sym_difference(a: Term, b: Term) -> Literal | None:
    return _set_operation(shapely.symmetric_difference, a, b)


FUNCTIONS: dict[str, CustomFunction] = {
    ns.GEOF + "distance": geof_distance,
    ns.GEOF + "buffer": geof_buffer,
    ns.GEOF + "boundary": geof_boundary,
    ns.GEOF + "intersection": geof_intersection,
    ns.GEOF + "union": geof_union,
    ns.GEOF + "difference": geof_difference,
    ns.GEOF + "symDifference": geof_sym_difference,
}


# -- the rewrite ------------------------------------------------------------------------------

_BEFORE_PNAME = r"""
    (?P<ws>[ \t\r\n]+|\#[^\r\n]*)
  | (?P<iri><[^<>"{}|^`\\\x00-\x20]*>)
  | (?P<string>\"\"\"(?:[^"\\]|\\.|"(?!""))*\"\"\"|'''(?:[^'\\]|\\.|'(?!''))*'''
      |"(?:[^"\\\r\n]|\\.)*"|'(?:[^'\\\r\n]|\\.)*')
  | (?P<var>[?$][A-Za-z0-9_\u00b7\u00c0-\uffff]+)
  | (?P<number>\d*\.\d+(?:[eE][+-]?\d+)?|\d+\.\d*[eE][+-]?\d+|\d+(?:[eE][+-]?\d+)?)
  | (?P<lang>@[A-Za-z]+(?:-[A-Za-z0-9]+)*)
"""
_PNAME = r"""
  | (?P<pname>(?:[A-Za-z\u00c0-\uffff][\w\u00b7\u00c0-\uffff.\-]*)?:
      (?:[\w\u00b7\u00c0-\uffff:%\-]|\.(?=[\w\u00b7\u00c0-\uffff:%\-]))*)
"""
_AFTER_PNAME = r"""
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>\^\^|&&|\|\||<=|>=|!=|[{}()\[\].,;=<>!+\-*/|^])
"""
_TOKEN = re.compile(_BEFORE_PNAME + _PNAME + _AFTER_PNAME, re.X)
# A failed pname scans the whole run of name characters after it (the prefix may hold '-'
# and '.'), so trying it again inside that run would make tokenizing quadratic ("a-a-a-...").
# It fails at every later position of the run too (same run, same end): _NAME_RUN finds where
# the run ends, and the tokens up to there come from _TOKEN_NO_PNAME.
_TOKEN_NO_PNAME = re.compile(_BEFORE_PNAME + _AFTER_PNAME, re.X)
_NAME_RUN = re.compile(r"[A-Za-z\u00c0-\uffff][\w\u00b7\u00c0-\uffff.\-]*")
_OPEN = {"(": ")", "{": "}", "[": "]"}
_HINTS = ("sfWithin", "sfContains", "sfIntersects", "distance")
# Keywords that mean a brace is not a plain group graph pattern.
_NOT_A_GROUP = frozenset(
    {"SELECT", "CONSTRUCT", "ASK", "DESCRIBE", "INSERT", "DELETE", "WHERE", "LOAD", "CLEAR"}
)


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str
    text: str
    start: int
    end: int

    def word(self) -> str:
        return self.text.upper() if self.kind == "word" else ""


class _Unsupported(Exception):
    """The query uses something the rewriter does not fully understand: leave it unchanged."""


def prepare(
    query: str, index: SpatialIndex, *, max_values: int | None = MAX_VALUES
) -> tuple[str, dict[str, CustomFunction]]:
    """The query with its constant-geometry spatial filters answered from `index`, and the
    custom functions to register (IRI -> callable on pyoxigraph terms).

    A query without such a filter comes back byte-identical. `max_values=None` rewrites however
    many literals match (for engines that cannot evaluate `geof:` at all).
    """
    functions = dict(FUNCTIONS)
    if not any(hint in query for hint in _HINTS):
        return query, functions
    try:
        return _Rewriter(query, index, max_values).rewrite(), functions
    except _Unsupported:
        return query, functions


def _tokenize(query: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos, plain_until = 0, 0  # no pname can start before plain_until (see _TOKEN_NO_PNAME)
    while pos < len(query):
        match = (_TOKEN if pos >= plain_until else _TOKEN_NO_PNAME).match(query, pos)
        if match is None or match.end() == pos:
            raise _Unsupported(f"unexpected character at {pos}")
        kind = match.lastgroup
        assert kind is not None
        if kind != "pname" and pos >= plain_until and (run := _NAME_RUN.match(query, pos)):
            plain_until = run.end()
        if kind != "ws":
            tokens.append(_Tok(kind, match.group(), pos, match.end()))
        pos = match.end()
    return tokens


def _pairs(tokens: list[_Tok]) -> dict[int, int]:
    """Index of each bracket's partner; unbalanced brackets raise _Unsupported."""
    partner: dict[int, int] = {}
    stack: list[int] = []
    for i, tok in enumerate(tokens):
        if tok.kind != "punct":
            continue
        if tok.text in _OPEN:
            stack.append(i)
        elif tok.text in (")", "}", "]"):
            if not stack or _OPEN[tokens[stack[-1]].text] != tok.text:
                raise _Unsupported("unbalanced brackets")
            opened = stack.pop()
            partner[opened], partner[i] = i, opened
    if stack:
        raise _Unsupported("unbalanced brackets")
    return partner


@dataclass(frozen=True, slots=True)
class _Spatial:
    """One conjunct `relation(?var, constant)` or `distance(?var, constant) < limit`."""

    var: str
    geometry: shapely.Geometry
    relation: str  # within | contains | intersects | distance
    limit: float = 0.0
    inclusive: bool = False
    var_first: bool = True


class _Rewriter:
    def __init__(self, query: str, index: SpatialIndex, max_values: int | None) -> None:
        self.query = query
        self.index = index
        self.max_values = max_values
        self.tokens = _tokenize(query)
        self.partner = _pairs(self.tokens)
        self.prefixes = self._prefixes()

    def _prefixes(self) -> dict[str, str]:
        found: dict[str, str] = {}
        toks = self.tokens
        for i, tok in enumerate(toks[:-2]):
            if tok.word() == "PREFIX" and toks[i + 1].kind == "pname" and toks[i + 2].kind == "iri":
                name, value = toks[i + 1].text, toks[i + 2].text[1:-1]
                if found.get(name, value) != value:
                    raise _Unsupported(f"prefix {name} declared twice")
                found[name] = value
        return found

    def iri(self, tok: _Tok) -> str | None:
        """The absolute IRI a token names, None when it names none or a relative one."""
        if tok.kind == "iri":
            value = tok.text[1:-1]
            return value if ":" in value else None
        if tok.kind == "pname" and "\\" not in tok.text:
            prefix, _, local = tok.text.partition(":")
            base = self.prefixes.get(prefix + ":")
            return None if base is None else base + local
        return None

    def rewrite(self) -> str:
        edits: list[_Edit] = []
        for i, tok in enumerate(self.tokens):
            if tok.text == "{" and tok.kind == "punct" and self._eligible(i):
                edits.extend(self._group(i))
        if not edits:
            return self.query
        return self._render(0, len(self.query), sorted(edits, key=lambda e: (e[0], -e[1])))

    def _render(self, lo: int, hi: int, edits: list[_Edit]) -> str:
        """The text of query[lo:hi] with `edits` (sorted, all inside) applied; a template edit
        receives its range's text with the edits nested in it already applied."""
        out: list[str] = []
        pos, i = lo, 0
        while i < len(edits):
            start, end, replacement = edits[i]
            j = i + 1
            while j < len(edits) and edits[j][0] >= start and edits[j][1] <= end:
                j += 1
            out.append(self.query[pos:start])
            if isinstance(replacement, str):
                if j > i + 1:
                    raise _Unsupported("overlapping edits")
                out.append(replacement)
            else:
                out.append(replacement(self._render(start, end, edits[i + 1 : j])))
            pos, i = end, j
        out.append(self.query[pos:hi])
        return "".join(out)

    # -- groups ---------------------------------------------------------------------------

    def _eligible(self, brace: int) -> bool:
        """Not the body of EXISTS or SERVICE (substitution semantics, remote data), nor inside
        one."""
        stack: list[int] = []
        for i in range(brace + 1):
            tok = self.tokens[i]
            if tok.kind == "punct" and tok.text == "{":
                stack.append(i)
            elif tok.kind == "punct" and tok.text == "}":
                stack.pop()
        return not any(self._guarded(i) for i in stack)

    def _guarded(self, brace: int) -> bool:
        before = [t.word() for t in self.tokens[max(0, brace - 3) : brace]]
        return "EXISTS" in before[-1:] or "SERVICE" in before[-3:] or "SILENT" in before[-2:]

    def _group(self, open_: int) -> list[_Edit]:
        """Edits for the spatial filters at the top level of the group opened at `open_`."""
        close = self.partner[open_]
        toks = self.tokens
        bound: set[str] = set()  # variables of top-level triple patterns: bound in every row
        filters: list[tuple[int, int]] = []  # (FILTER token, index after its constraint)
        i = open_ + 1
        while i < close:
            tok = toks[i]
            word = tok.word()
            if tok.text in ("{", "}") and tok.kind == "punct":
                i = self.partner[i] + 1
            elif word in _NOT_A_GROUP:
                return []
            elif word == "FILTER":
                end = self._constraint_end(i + 1, close)
                filters.append((i, end))
                i = end
            elif word in ("BIND", "VALUES"):
                i = self._skip_to_block(i + 1, close)
            else:  # triples (OPTIONAL, MINUS, GRAPH, SERVICE and UNION open nested groups)
                if tok.kind == "var" and not self._graph_name(i):
                    bound.add(tok.text[1:])
                i += 1
        plans = [plan for start, end in filters if (plan := self._filter(start, end, bound))]
        answers = [answer for plan in plans for answer in plan.answers]
        big = [a for a in answers if len(a.literals) > VALUES_CHUNK]
        chunked = max(big, key=lambda a: len(a.literals)) if big else None
        if chunked is not None and not self._copyable(open_, close):
            chunked = None
        if self.max_values is not None:  # other large blocks would be joined row by row
            for plan in plans:
                plan.answers = [
                    a for a in plan.answers if len(a.literals) <= VALUES_CHUNK or a is chunked
                ]
        edits: list[_Edit] = []
        moved: list[str] = []  # all the group's filters, kept outside the UNION of its copies
        values: list[str] = []
        answered = {(plan.start, plan.end): plan for plan in plans if plan.answers}
        for start, end in filters:
            plan = answered.get((start, end))
            span = (toks[start].start, toks[end - 1].end)
            text = self.query[span[0] : span[1]] if plan is None else self._filter_text(plan)
            if chunked is not None:  # in an OPTIONAL body a filter may name outer variables
                edits.append((*span, ""))
                moved.append(text)
            elif plan is not None:
                edits.append((*span, text))
            if plan is not None:
                values.extend(a.block() for a in plan.answers if a is not chunked)
        if chunked is not None:
            edits.append((toks[open_].end, toks[close].start, _Copies(chunked, values, moved)))
        elif values:
            at = toks[close].start
            edits.append((at, at, " " + " ".join(values) + " "))
        return edits

    def _copyable(self, open_: int, close: int) -> bool:
        """Whether the group's text may be repeated in UNION branches with the same meaning:
        not with blank node labels (one label cannot span two patterns) nor remote calls."""
        for tok in self.tokens[open_ + 1 : close]:
            if tok.text == "_" or tok.text.startswith("_:") or tok.word() == "SERVICE":
                return False
        return True

    def _graph_name(self, i: int) -> bool:
        """A variable after GRAPH or SERVICE names a graph, it is no triple pattern's."""
        return i > 0 and self.tokens[i - 1].word() in ("GRAPH", "SERVICE", "SILENT")

    def _constraint_end(self, i: int, close: int) -> int:
        """Index after a FILTER's constraint: `(...)`, a function call, or EXISTS {...}."""
        toks = self.tokens
        if i >= close:
            raise _Unsupported("FILTER without a constraint")
        if toks[i].text == "(":
            return self.partner[i] + 1
        if toks[i].word() == "NOT":
            i += 1
        if i + 1 >= close:
            raise _Unsupported("FILTER constraint not understood")
        if toks[i].word() == "EXISTS" and toks[i + 1].text == "{":
            return self.partner[i + 1] + 1
        if toks[i + 1].text == "(":
            return self.partner[i + 1] + 1
        raise _Unsupported("FILTER constraint not understood")

    def _skip_to_block(self, i: int, close: int) -> int:
        """Past `BIND (...)` or `VALUES ?v {...}` / `VALUES (?a ?b) {...}`."""
        toks = self.tokens
        while i < close:
            if toks[i].text == "(" and toks[i - 1].word() == "BIND":
                return self.partner[i] + 1
            if toks[i].text == "{":
                return self.partner[i] + 1
            if toks[i].text == "(":
                i = self.partner[i] + 1
                continue
            i += 1
        raise _Unsupported("BIND or VALUES not understood")

    # -- filters --------------------------------------------------------------------------

    def _filter(self, start: int, end: int, bound: set[str]) -> _FilterPlan | None:
        """The answerable spatial tests among a FILTER's conjuncts, with their matches."""
        toks = self.tokens
        inner = (start + 2, end - 1) if toks[start + 1].text == "(" else (start + 1, end)
        conjuncts = self._conjuncts(*inner)
        if conjuncts is None:
            return None
        plan = _FilterPlan(start, end, [])
        for lo, hi in conjuncts:
            spatial = self._spatial(lo, hi)
            if spatial is None or spatial.var not in bound:
                continue
            literals = self._literals(spatial)
            if literals is not None:
                plan.answers.append(_Answer(lo, hi, spatial.var, literals))
        return plan if plan.answers else None

    def _filter_text(self, plan: _FilterPlan) -> str:
        """The FILTER left once the answered conjuncts are gone (`FILTER(true)` if none)."""
        toks = self.tokens
        inner = (
            (plan.start + 2, plan.end - 1)
            if toks[plan.start + 1].text == "("
            else (plan.start + 1, plan.end)
        )
        answered = {(a.lo, a.hi) for a in plan.answers}
        conjuncts = self._conjuncts(*inner) or []
        kept = [(lo, hi) for lo, hi in conjuncts if (lo, hi) not in answered]
        text = " && ".join(self.query[toks[lo].start : toks[hi - 1].end] for lo, hi in kept)
        return f"FILTER({text or 'true'})"

    def _conjuncts(self, lo: int, hi: int) -> list[tuple[int, int]] | None:
        """Top-level `&&` operands; None when `||` sits at the top (no split is exact)."""
        parts: list[tuple[int, int]] = []
        i = first = lo
        while i < hi:
            text = self.tokens[i].text
            if text in _OPEN and self.tokens[i].kind == "punct":
                i = self.partner[i] + 1
                continue
            if text == "||":
                return None
            if text == "&&":
                parts.append((first, i))
                first = i + 1
            i += 1
        parts.append((first, hi))
        return parts if all(end > start for start, end in parts) else None

    def _spatial(self, lo: int, hi: int) -> _Spatial | None:
        toks = self.tokens
        while toks[lo].text == "(" and self.partner[lo] == hi - 1:
            lo, hi = lo + 1, hi - 1
        call = self._call(lo, hi)
        if call is not None and call[2] == hi:
            name, args, _ = call
            local = name[len(ns.GEOF) :] if name.startswith(ns.GEOF) else ""
            relation = _RELATIONS.get(local)
            if relation is None or len(args) != 2:
                return None
            return self._relation(relation, args)
        # distance(...) < N, distance(...) <= N, N > distance(...), N >= distance(...)
        if call is not None and call[2] == hi - 2 and toks[hi - 1].kind == "number":
            op, limit = toks[hi - 2].text, float(toks[hi - 1].text)
            if op in ("<", "<="):
                return self._distance(call, limit, inclusive=op == "<=")
        if toks[lo].kind == "number" and lo + 2 < hi:
            op, limit = toks[lo + 1].text, float(toks[lo].text)
            call = self._call(lo + 2, hi)
            if call is not None and call[2] == hi and op in (">", ">="):
                return self._distance(call, limit, inclusive=op == ">=")
        return None

    def _call(self, lo: int, hi: int) -> tuple[str, list[tuple[int, int]], int] | None:
        """(function IRI, argument token ranges, index after the call) of a call at `lo`."""
        toks = self.tokens
        if lo + 1 >= hi or toks[lo + 1].text != "(" or toks[lo + 1].kind != "punct":
            return None
        name = self.iri(toks[lo])
        if name is None:
            return None
        close = self.partner[lo + 1]
        args: list[tuple[int, int]] = []
        i = first = lo + 2
        while i < close:
            if toks[i].text in _OPEN and toks[i].kind == "punct":
                i = self.partner[i] + 1
                continue
            if toks[i].text == ",":
                args.append((first, i))
                first = i + 1
            i += 1
        args.append((first, close))
        return name, args, close + 1

    def _argument(self, lo: int, hi: int) -> str | shapely.Geometry | None:
        """A variable's name, a constant valid 2D CRS84 geometry, or None."""
        toks = self.tokens
        if hi - lo == 1 and toks[lo].kind == "var":
            return toks[lo].text[1:]
        if hi - lo != 3 or toks[lo].kind != "string" or toks[lo + 1].text != "^^":
            return None
        if self.iri(toks[lo + 2]) != WKT_LITERAL:
            return None
        text = toks[lo].text
        body = text[3:-3] if text[:3] in ('"""', "'''") else text[1:-1]
        if "\\" in body or (body.lstrip().startswith("<") and not body.lstrip().startswith(CRS84)):
            return None
        geom = parse_wkt(body)
        if geom is None or geom.is_empty or shapely.has_z(geom) or not shapely.is_valid(geom):
            return None
        return geom

    def _relation(self, relation: str, args: list[tuple[int, int]]) -> _Spatial | None:
        first, second = self._argument(*args[0]), self._argument(*args[1])
        if isinstance(first, str) and isinstance(second, shapely.Geometry):
            return _Spatial(first, second, relation)
        if isinstance(second, str) and isinstance(first, shapely.Geometry):
            return _Spatial(second, first, _CONVERSE[relation], var_first=False)
        return None

    def _distance(
        self, call: tuple[str, list[tuple[int, int]], int], limit: float, *, inclusive: bool
    ) -> _Spatial | None:
        name, args, _ = call
        if name != ns.GEOF + "distance" or len(args) != 3 or args[2][1] - args[2][0] != 1:
            return None
        per_unit = _UNITS.get(self.iri(self.tokens[args[2][0]]) or "")
        if per_unit is None or limit * per_unit > MAX_REWRITE_DISTANCE:
            return None
        first, second = self._argument(*args[0]), self._argument(*args[1])
        metres = limit * per_unit
        if isinstance(first, str) and isinstance(second, shapely.Geometry):
            return _Spatial(first, second, "distance", metres, inclusive)
        if isinstance(second, str) and isinstance(first, shapely.Geometry):
            return _Spatial(second, first, "distance", metres, inclusive, var_first=False)
        return None

    # -- answers from the index -----------------------------------------------------------

    def _literals(self, spatial: _Spatial) -> list[str] | None:
        """The stored literals of every indexed geometry that passes, sorted; None when more
        than `max_values` do."""
        found = matching_geometries(self.index, spatial, self.max_values)
        if found is None:
            return None
        literals = sorted(stored_literals(found))
        if self.max_values is not None and len(literals) > self.max_values:
            return None
        return literals


@dataclass(slots=True)
class _Answer:
    """A conjunct (token range) answered by `VALUES ?var { literals }`."""

    lo: int
    hi: int
    var: str
    literals: list[str]

    def block(self, literals: list[str] | None = None) -> str:
        chosen = self.literals if literals is None else literals
        rows = " ".join(f'"{text}"^^<{WKT_LITERAL}>' for text in chosen)
        return f"VALUES ?{self.var} {{ {rows} }}"


@dataclass(slots=True)
class _FilterPlan:
    """A FILTER (token range) and the conjuncts of it the index answers."""

    start: int
    end: int
    answers: list[_Answer]


@dataclass(frozen=True, slots=True)
class _Copies:
    """The body of a group with a large answer: `{ body VALUES(chunk 1) } UNION { body
    VALUES(chunk 2) } ...` followed by the group's filters (they apply to the whole group
    wherever they stand). Join distributes over UNION and the chunks are disjoint, so the
    solutions are those of `body VALUES(all)`, each once."""

    answer: _Answer
    values: list[str]  # the other (small) blocks of the group, in every copy
    filters: list[str]

    def __call__(self, body: str) -> str:
        literals = self.answer.literals
        others = " ".join(self.values)
        branches = " UNION ".join(
            f"{{ {body} {others} {self.answer.block(literals[i : i + VALUES_CHUNK])} }}"
            for i in range(0, len(literals), VALUES_CHUNK)
        )
        return f" {branches} {' '.join(self.filters)} "


_Edit = tuple[int, int, str | Callable[[str], str]]


def stored_literals(geometries: list[shapely.Geometry]) -> set[str]:
    """The `geo:wktLiteral` texts the twin stored for these geometries (`wkt_literal`), 2D
    points written in bulk: one GEOS call per point cost most of a large rewrite's time."""
    if not geometries:
        return set()
    array = np.empty(len(geometries), dtype=object)
    array[:] = geometries
    flat = (shapely.get_type_id(array) == 0) & ~shapely.has_z(array) & ~shapely.is_empty(array)
    texts = {wkt_literal(g) for g in array[~flat].tolist()}
    xy = shapely.get_coordinates(array[flat])
    texts.update(
        f"{CRS84} POINT({x} {y})"
        for x, y in zip(_numbers(xy[:, 0].tolist()), _numbers(xy[:, 1].tolist()), strict=True)
    )
    return texts


def _numbers(values: list[float]) -> list[str]:
    """`wkt_number` of each value; `repr` is its answer unless it has an exponent or ends
    with `.0`."""
    return [
        text if "e" not in text and not text.endswith(".0") else wkt_number(value)
        for text, value in zip(map(repr, values), values, strict=True)
    ]


def matching_geometries(
    index: SpatialIndex, spatial: _Spatial, limit: int | None = None
) -> list[shapely.Geometry] | None:
    """Indexed geometries for which the spatial conjunct is true (exactly); None when more
    than `limit` match."""
    if spatial.relation != "distance":
        keys: set[Hashable] = index.query(GeoQuery(spatial.relation, spatial.geometry))
        if limit is not None and len(keys) > limit:
            return None
        return [g for g in (index.geometry(k) for k in keys) if g is not None]
    reach = spatial.limit * _CANDIDATE_MARGIN + 1.0
    if reach < 0:
        return []
    query = GeoQuery("near", spatial.geometry, max_distance=reach)
    found = [g for g in (index.geometry(k) for k in index.candidates(query)) if g is not None]
    points = [g for g in found if isinstance(g, shapely.Point) and not g.is_empty]
    shapes = [g for g in found if not isinstance(g, shapely.Point)]
    passed: list[shapely.Geometry] = []
    if points:
        xy = shapely.get_coordinates(points)
        distances = _point_distances(spatial, xy[:, 0].copy(), xy[:, 1].copy())
        ok = distances <= spatial.limit if spatial.inclusive else distances < spatial.limit
        passed.extend(p for p, keep in zip(points, ok.tolist(), strict=True) if keep)
    for shape in shapes:
        pair = (shape, spatial.geometry) if spatial.var_first else (spatial.geometry, shape)
        d = distance_metres(*pair)
        if d <= spatial.limit if spatial.inclusive else d < spatial.limit:
            passed.append(shape)
    return passed


def _point_distances(spatial: _Spatial, lons: Floats, lats: Floats) -> Floats:
    """`distance_metres` for many stored points at once, argument order kept (bit-identical)."""
    ref = spatial.geometry
    if not isinstance(ref, shapely.Point):
        return _to_shape(ref, lons, lats)
    x, y = np.full_like(lons, ref.x), np.full_like(lats, ref.y)
    return _geodesic(lons, lats, x, y) if spatial.var_first else _geodesic(x, y, lons, lats)
