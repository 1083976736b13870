"""One tenant as one caller may read it: the entity reads of every read path, through the port.

For an unrestricted caller (the `AllowAll` default, an exempt admin) every method is the entity
service's own, unchanged. A policy that only hides graphs keeps the store's fast paths: the
graphs become a condition of the query (`EntityQuery.graphs`), so counts and paging stay exact.
A policy that transforms documents decides on what the caller sees: the store narrows the
candidates by the entity's identity only (ids, idPattern, type, scopeQ, in the readable graphs),
each candidate goes through the policy, and q, geoQ and attrs are matched on the transformed
document. So an entity is never selected by an attribute the policy removed or by a value it
coarsened, and counts are of what the caller sees; that scan is bounded by `max_scan`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any

from urbis.twin.access import REMOTE_GRAPH, AccessPolicy, Caller, ReadScope
from urbis.twin.entities import EntityService, QueryResult
from urbis.twin.errors import NgsiLdError, ResourceNotFound, TooComplexQuery
from urbis.twin.geo import GeoQuery, matches, parse_geometry
from urbis.twin.query.plan import EntityQuery, plan
from urbis.twin.query.qeval import evaluate

Doc = dict[str, Any]
_CHUNK = 500  # documents fetched per store call while scanning


class CallerView:
    """The read methods of `EntityService` (get, get_many, query) as one caller sees them."""

    def __init__(self, service: EntityService, scope: ReadScope) -> None:
        self.service = service
        self.scope = scope

    @classmethod
    def of(
        cls, service: EntityService, policy: AccessPolicy, caller: Caller, tenant: str
    ) -> CallerView:
        return cls(service, ReadScope.decide(policy, caller, tenant))

    @property
    def unrestricted(self) -> bool:
        return self.scope.unrestricted

    # -- by id ------------------------------------------------------------------------------

    def get(self, entity_id: str) -> Doc:
        """The entity as the caller sees it; a hidden one is not found, like an absent one."""
        found = self.get_many([entity_id])
        if entity_id not in found:
            raise ResourceNotFound(f"entity {entity_id!r} not found")
        return found[entity_id][0]

    def get_many(self, ids: Sequence[str]) -> dict[str, tuple[Doc, str]]:
        found = self.service.get_many(ids)
        if self.unrestricted:
            return found
        out = {}
        for entity_id, (doc, graph) in found.items():
            seen = self.scope.seen(doc, graph)
            if seen is not None:
                out[entity_id] = (seen, graph)
        return out

    # -- queries ----------------------------------------------------------------------------

    def query(self, query: EntityQuery) -> QueryResult:
        if self.unrestricted:
            return self.service.query(query)
        graphs = self._graphs(query.graphs)
        if graphs is not None and not graphs:
            return QueryResult([], 0 if query.count else None)
        if not self.scope.transforms:  # the stored data is the caller's view, in `graphs`
            return self.service.query(replace(query, graphs=graphs))
        matched = [doc for doc in self.documents(query) if selects(query, doc)]
        total = len(matched) if query.count else None
        return QueryResult(matched[query.offset : query.offset + query.limit], total)

    def documents(self, query: EntityQuery) -> Iterator[Doc]:
        """Every readable entity that the identity conditions of `query` select, as the caller
        sees it (q, geoQ, attrs and paging are the caller's to apply)."""
        identity = EntityQuery(
            ids=query.ids,
            id_pattern=query.id_pattern,
            types=query.types,
            scope=query.scope,
            selectors=query.selectors,
            graphs=self._graphs(query.graphs),
        )
        limit = self.service.max_scan
        page = plan(identity).page(limit + 1, 0)
        ids = [row[0] for row in self.service.store.select(page) if row[0] is not None]
        if len(ids) > limit:
            raise TooComplexQuery(
                f"for this caller each entity is checked as the access policy shows it, and "
                f"this query would check more than {limit}: narrow it with a type or ids"
            )
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            found = self.get_many(chunk)
            for entity_id in chunk:
                if entity_id in found:
                    yield found[entity_id][0]

    def _graphs(self, requested: frozenset[str] | None) -> frozenset[str] | None:
        visible = self.scope.graphs
        if requested is None:
            return visible
        return requested if visible is None else requested & visible

    # -- what other brokers answer ----------------------------------------------------------

    def remote(self, docs: Iterable[Doc], query: EntityQuery | None = None) -> list[Doc]:
        """Entities from context sources as the caller may see them (graph `REMOTE_GRAPH`);
        with `query`, re-matched after the policy changed them."""
        if self.scope.is_raw(REMOTE_GRAPH):
            return list(docs)
        out = []
        for doc in docs:
            seen = self.scope.seen(doc, REMOTE_GRAPH)
            if seen is not None and (query is None or selects(query, seen)):
                out.append(seen)
        return out


def selects(query: EntityQuery, doc: Doc) -> bool:
    """Whether the attribute conditions of a query (attrs, q, geoQ) hold for this document."""
    if query.attrs and not any(name in doc for name in query.attrs):
        return False
    if query.q is not None and not evaluate(query.q, doc):
        return False
    return query.geo is None or _geo_selects(query.geo, doc)


def _geo_selects(geo: GeoQuery, doc: Doc) -> bool:
    for instance in doc.get(geo.geoproperty, []):
        if not isinstance(instance, dict) or instance.get("type") != "GeoProperty":
            continue
        try:
            if matches(geo, parse_geometry(instance.get("value"))):
                return True
        except NgsiLdError:  # a policy may have turned the value into something else
            continue
    return False
