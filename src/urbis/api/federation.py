"""The HTTP side of federation: the caller's request handed to `ngsild.federation`.

The distributed operations themselves (matching, forwarding, merging, warnings) live in
ngsild/federation.py; the composition root builds the one `Federation` of the app.
"""

from __future__ import annotations

from fastapi import Request

from urbis.api.deps import AppState, LdContext, tenant_name
from urbis.ngsild.federation import WARNING_HEADER, CallerRequest, Doc, FederatedResult
from urbis.twin.caller_view import CallerView
from urbis.twin.query.plan import EntityQuery
from urbis.twin.query.typeexpr import TypeExpr

__all__ = ["WARNING_HEADER", "caller_request", "federated_query", "federated_retrieve"]


def caller_request(request: Request, ctx: LdContext) -> CallerRequest:
    return CallerRequest(
        tenant=tenant_name(request),
        params=request.query_params.multi_items(),
        terms=ctx.terms,
        context=ctx.value,
        via=request.headers.get("via"),
    )


async def federated_query(
    request: Request, state: AppState, ctx: LdContext, query: EntityQuery, view: CallerView
) -> FederatedResult:
    """GET /entities over the local twin and every matching registered source, as the caller
    may see them."""
    return await state.federation.query(caller_request(request, ctx), query, view)


async def federated_retrieve(
    request: Request,
    state: AppState,
    ctx: LdContext,
    entity_id: str,
    view: CallerView,
    *,
    types: TypeExpr | None,
    attrs: set[str] | None,
) -> tuple[Doc | None, list[str]]:
    """GET /entities/{id}: the local entity merged with what matching sources hold of it."""
    return await state.federation.retrieve(
        caller_request(request, ctx), entity_id, view, types=types, attrs=attrs
    )
