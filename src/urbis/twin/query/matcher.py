"""One matcher for entity documents: what NGSI-LD selects entities by, compiled once.

Queries (to post-filter what the store cannot decide exactly), subscriptions (on each committed
change) and registrations (through `selector.EntitySelector`) decide with the same pieces, on
the twin's canonical documents (names expanded):

* entity selectors (id, idPattern, type expression: `selector.EntitySelector`), any of them;
* attributes: at least one of them present (a query's `attrs`);
* q (clause 4.9, `qeval.evaluate`) and scopeQ (clause 4.19, `scopeq.ScopeQuery`);
* geoQ (clause 4.10): some instance of the GeoProperty satisfies it, by `twin.geo.matches`,
  the test the spatial index answers queries with.

Each piece has a SPARQL translation (`plan`) with the same meaning: docs/matching.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from urbis.twin.errors import NgsiLdError
from urbis.twin.geo import GeoQuery, matches, parse_geometry
from urbis.twin.query.plan import EntityQuery
from urbis.twin.query.qeval import evaluate
from urbis.twin.query.qlang import QExpr
from urbis.twin.query.scopeq import ScopeQuery
from urbis.twin.query.selector import EntitySelector

Doc = dict[str, Any]


@dataclass(frozen=True)
class EntityMatcher:
    """Conditions on one entity document; `matches(doc)` when all of them hold.

    `selectors` are alternatives (a subscription's `entities`, a POST query's EntitySelectors;
    none: any entity); `required` is an entity condition that holds besides them (a GET
    query's id, idPattern and type).
    """

    selectors: tuple[EntitySelector, ...] = ()
    required: EntitySelector | None = None
    attrs: frozenset[str] | None = None
    q: QExpr | None = None
    scope: ScopeQuery | None = None
    geo: GeoQuery | None = None

    @classmethod
    def for_query(cls, query: EntityQuery, *, geo: bool = True) -> EntityMatcher:
        """The conditions of an entity query, as the store's plan (`plan.plan`) reads them;
        `geo=False` leaves geoQ out, for a caller that has decided it already."""
        top = EntitySelector.of(query.ids, query.id_pattern, query.types)
        return cls(
            selectors=tuple(query.selectors or ()),
            required=None if top.empty else top,
            attrs=frozenset(query.attrs) if query.attrs else None,
            q=query.q,
            scope=ScopeQuery(query.scope) if query.scope else None,
            geo=query.geo if geo else None,
        )

    def selects(self, doc: Doc) -> bool:
        """The entity conditions alone (id, idPattern, type): all a deleted entity is matched by."""
        if self.required is not None and not self.required.selects(doc):
            return False
        return not self.selectors or any(s.selects(doc) for s in self.selectors)

    def matches(self, doc: Doc) -> bool:
        if not self.selects(doc):
            return False
        if self.attrs is not None and not any(_has_attribute(doc, a) for a in self.attrs):
            return False
        if self.q is not None and not evaluate(self.q, doc):
            return False
        if self.scope is not None and not self.scope.matches(doc.get("scope", ())):
            return False
        return self.geo is None or geo_matches(self.geo, doc)


def geo_matches(query: GeoQuery, doc: Doc) -> bool:
    """Whether some GeoProperty instance of `query.geoproperty` satisfies the geo-query."""
    for inst in doc.get(query.geoproperty, ()):
        if not isinstance(inst, dict) or inst.get("type") != "GeoProperty":
            continue
        try:
            if matches(query, parse_geometry(inst.get("value"))):
                return True
        except NgsiLdError:  # a stored value the reader would refuse now: it matches nothing
            continue
    return False


def _has_attribute(doc: Doc, name: str) -> bool:
    """As the store sees it: every instance of an attribute writes at least one triple."""
    return name not in ("type", "scope") and bool(doc.get(name)) and isinstance(doc[name], list)
