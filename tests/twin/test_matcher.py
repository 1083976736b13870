"""The document matcher (twin/query/matcher.py, selector.py) means what the store's SPARQL
means: for every kind of condition a query has, the entities the store answers are exactly the
documents the matcher accepts; and selectors overlap as registrations need."""

from __future__ import annotations

from typing import Any

import pytest
from pyoxigraph import Store

from urbis.twin.changes import WriteContext
from urbis.twin.entities import EntityService
from urbis.twin.geo import parse_geoq
from urbis.twin.query.matcher import EntityMatcher
from urbis.twin.query.plan import EntityQuery
from urbis.twin.query.qlang import expand_q, parse_q
from urbis.twin.query.scopeq import ScopeQuery
from urbis.twin.query.selector import EntitySelector
from urbis.twin.query.typeexpr import TypeAll, TypeAny, TypeExpr, TypeName
from urbis.twin.store.oxigraph import OxigraphTenant

EX = "https://example.org/"
A, B, C = TypeName(EX + "A"), TypeName(EX + "B"), TypeName(EX + "C")


def expand(name: str) -> str:
    return name if ":" in name else EX + name


def entity(
    entity_id: str, types: list[str], *, scope: list[str] | None = None, **attrs: Any
) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": entity_id, "type": [EX + t for t in types]}
    if scope is not None:
        doc["scope"] = scope
    for name, value in attrs.items():
        if isinstance(value, tuple):  # (lon, lat): a location
            point = {"type": "Point", "coordinates": list(value)}
            doc[EX + name] = [{"type": "GeoProperty", "value": point}]
        else:
            doc[EX + name] = [{"type": "Property", "value": value}]
    return doc


DOCS = [
    entity("urn:x:A:1", ["A"], scope=["/City/North"], level=1, name="one", at=(4.83, 45.76)),
    entity(
        "urn:x:A:12", ["A", "B"], scope=["/City/North/Park", "/City/North"], level=5, at=(4.9, 45.8)
    ),
    entity("urn:x:B:2", ["B"], scope=["/City/South", "/Other"], name="two", at=(2.35, 48.85)),
    entity("urn:x:C:3", ["C", "A"], level=3, status="open"),
    entity("urn:y:C:30", ["C"], scope=["/Other"], status="closed", name="thirty"),
    entity("urn:x:A:" + "a" * 30, ["A"]),  # catastrophic for `(a+)+$` in a backtracking engine
]


def q(text: str) -> Any:
    return expand_q(parse_q(text), expand, expand)


def near(metres: int, lon: float, lat: float) -> Any:
    return parse_geoq("near;maxDistance==" + str(metres), "Point", f"[{lon},{lat}]", EX + "at")


QUERIES: list[EntityQuery] = [
    EntityQuery(types=A),
    EntityQuery(types=TypeAny((A, B))),
    EntityQuery(types=TypeAll((A, B))),
    EntityQuery(types=TypeAll((A, TypeAny((B, C))))),
    EntityQuery(ids=["urn:x:A:1", "urn:y:C:30", "urn:nobody"]),
    EntityQuery(id_pattern="A:1"),
    EntityQuery(id_pattern="^urn:x:.*[0-9]{2}$"),
    EntityQuery(id_pattern="(a+)+$", types=A),
    EntityQuery(types=C, id_pattern="urn:(x|y):C"),
    EntityQuery(scope="/City/#"),
    EntityQuery(scope="/City/+"),
    EntityQuery(scope="/City/North;/City/North/Park"),
    EntityQuery(scope="/City/South;/Other"),
    EntityQuery(scope="/City/North,/Other"),
    EntityQuery(attrs={EX + "name"}),
    EntityQuery(attrs={EX + "name", EX + "status"}, types=C),
    EntityQuery(q=q("level>=3")),
    EntityQuery(q=q('status!="open"')),  # inexact: the store narrows, the matcher decides
    EntityQuery(q=q('name!="one"'), id_pattern="^urn:x:", scope="/City/#"),  # inexact
    EntityQuery(q=q("level.observedAt<2030-01-01T00:00:00Z|status"), types=C),  # inexact
    EntityQuery(geo=near(2000, 4.83, 45.76)),
    EntityQuery(geo=near(10_000, 4.83, 45.76), types=B),
    EntityQuery(geo=near(20_000, 4.85, 45.78), q=q('name!="x"')),  # inexact, with geo hits
    EntityQuery(
        selectors=[
            EntitySelector(ids=("urn:x:B:2", "urn:x:A:1")),
            EntitySelector(id_pattern=":3", types=C),
        ]
    ),
    EntityQuery(selectors=[EntitySelector(types=B)], scope="/City/#", q=q("level")),
    EntityQuery(ids=["urn:x:A:12", "urn:x:B:2"], selectors=[EntitySelector(types=A)]),
]


@pytest.fixture(scope="module")
def service() -> EntityService:
    twin = EntityService(OxigraphTenant(Store()))
    for doc in DOCS:
        twin.create(doc, context=WriteContext.admin())
    return twin


@pytest.mark.parametrize("query", QUERIES, ids=lambda query: repr(query)[11:90])
def test_the_store_answers_what_the_matcher_accepts(
    service: EntityService, query: EntityQuery
) -> None:
    stored = [doc for doc, _ in service.get_many([d["id"] for d in DOCS]).values()]
    expected = {doc["id"] for doc in stored if EntityMatcher.for_query(query).matches(doc)}
    query.limit, query.count = 1000, True
    result = service.query(query)
    assert {doc["id"] for doc in result.documents} == expected
    assert result.total == len(expected)


def test_queries_of_the_table_are_not_trivial(service: EntityService) -> None:
    """Each query above selects some but not all entities, so that each comparison can fail."""
    stored = [doc for doc, _ in service.get_many([d["id"] for d in DOCS]).values()]
    for query in QUERIES:
        matched = [d for d in stored if EntityMatcher.for_query(query).matches(d)]
        assert 0 < len(matched) < len(stored), query


def test_selects_is_the_entity_part_only() -> None:
    matcher = EntityMatcher(selectors=(EntitySelector(types=A),), q=q("level>100"))
    doc = DOCS[0]
    assert matcher.selects(doc) and not matcher.matches(doc)
    assert not EntityMatcher(selectors=(EntitySelector(types=B),)).selects(doc)
    assert EntityMatcher().matches(doc)  # no condition: every entity


def test_scope_query_on_documents() -> None:
    assert ScopeQuery("/City/#").matches(["/City"])
    assert ScopeQuery("/City/#").matches(["/City/North/Park"])
    assert not ScopeQuery("/City/+").matches(["/City/North/Park"])
    assert ScopeQuery("(/A;/B),/C").matches(["/B", "/A"])
    assert not ScopeQuery("(/A;/B),/C").matches(["/A"])
    assert not ScopeQuery("/A").matches([])


def sel(
    ids: tuple[str, ...] = (), pattern: str | None = None, types: TypeExpr | None = None
) -> EntitySelector:
    return EntitySelector(ids, pattern, types)


OVERLAPS = [  # (registered, wanted, may some entity be selected by both)
    (sel(types=A), sel(types=A), True),
    (sel(types=A), sel(types=B), False),
    (sel(types=A), sel(types=TypeAll((A, B))), True),  # its entities may also be B
    (sel(types=A), sel(types=TypeAny((B, C))), False),
    (sel(types=A), sel(), True),
    (sel(("urn:a",), types=A), sel(("urn:a", "urn:b")), True),
    (sel(("urn:a",), types=A), sel(("urn:b",)), False),
    (sel(pattern="^urn:t:", types=A), sel(("urn:t:1",)), True),
    (sel(pattern="^urn:t:", types=A), sel(("urn:other:1",)), False),
    (sel(("urn:t:1",), types=A), sel(pattern="t:1$"), True),
    (sel(("urn:t:1",), types=A), sel(pattern="t:2$"), False),
    (sel(pattern="^urn:t:", types=A), sel(pattern="^urn:u:"), True),  # undecidable: may
    (sel(("urn:t:1",), types=A), sel(("urn:t:1",), pattern="^urn:u:"), False),  # both checked
]


@pytest.mark.parametrize(("registered", "wanted", "expected"), OVERLAPS)
def test_selectors_overlap_when_some_entity_may_satisfy_both(
    registered: EntitySelector, wanted: EntitySelector, expected: bool
) -> None:
    assert registered.may_overlap(wanted) is expected
    assert wanted.may_overlap(registered) is expected  # symmetric


def test_an_invalid_id_pattern_is_refused_when_the_selector_is_made() -> None:
    from urbis.twin.errors import BadRequestData

    with pytest.raises(BadRequestData, match="idPattern"):
        EntitySelector(id_pattern="urn:\\d+")
