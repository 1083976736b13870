"""The query planner (sub-queries joined on ?e, filters, evaluator recheck) answers exactly
what the q evaluator accepts, for pages and for counts."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings

from tests.twin.test_qsparql import TYPE, expand, load, scenarios
from urbis.twin.entities import EntityService
from urbis.twin.query.plan import EntityQuery
from urbis.twin.query.qeval import evaluate
from urbis.twin.query.qlang import QExpr, expand_q
from urbis.twin.query.typeexpr import TypeName
from urbis.twin.store.oxigraph import OxigraphTenant


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_planned_query_equals_evaluator(scenario: tuple[list[dict[str, Any]], list[QExpr]]) -> None:
    docs, exprs = scenario
    service = EntityService(OxigraphTenant(load(docs)))
    for raw in exprs:
        expr = expand_q(raw, expand, expand)
        expected = {d["id"] for d in docs if evaluate(expr, d)}
        query = EntityQuery(types=TypeName(TYPE), q=expr, limit=1000, count=True)
        result = service.query(query)
        assert {d["id"] for d in result.documents} == expected
        assert result.total == len(expected)
        # paging walks the same set without repeats
        seen: list[str] = []
        for offset in range(0, len(expected) + 2, 2):
            page = service.query(EntityQuery(types=TypeName(TYPE), q=expr, limit=2, offset=offset))
            seen += [d["id"] for d in page.documents]
        assert sorted(seen) == sorted(expected)
