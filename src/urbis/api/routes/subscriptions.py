"""NGSI-LD subscriptions (clauses 5.8 and 5.11; 6.10-6.11): CRUD; ngsild.subscriptions notifies.

Subscriptions reveal where notifications go and with which headers (receiverInfo may carry a
receiver's credentials), so reading them needs the admin token too, unlike entities.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from urbis.api.deps import (
    AdminDep,
    ServiceDep,
    StateDep,
    resolve_context_async,
    tenant_name,
)
from urbis.api.http import CORE_CONTEXT, JSON, JSONLD, accept, entity_body
from urbis.api.params import boolean, integer, options
from urbis.api.responses import json_response
from urbis.ngsild.subscriptions import (
    Subscription,
    merge_patch,
    new_subscription_id,
    parse_subscription,
)
from urbis.twin.errors import BadRequestData, TooManyResults
from urbis.twin.model import check_uri, now_iso
from urbis.twin.outbound import check_endpoint

router = APIRouter(prefix="/ngsi-ld/v1", tags=["subscriptions"])
BASE = "/ngsi-ld/v1/subscriptions/"
ENDPOINT = "notification.endpoint.uri"


def _uri(parsed: dict[str, Any]) -> str:
    uri: str = parsed["notification"]["endpoint"]["uri"]
    return uri


# -- routes -----------------------------------------------------------------------------------


@router.post("/subscriptions", status_code=201)
@router.post("/subscriptions/", status_code=201, include_in_schema=False)
async def create_subscription(
    request: Request, state: StateDep, service: ServiceDep, caller: AdminDep
) -> Response:
    notifier = state.notifier
    body, context = await entity_body(
        request, max_bytes=state.settings.max_body_bytes, max_depth=state.settings.max_json_depth
    )
    ctx = await resolve_context_async(state, context)
    parsed = await run_in_threadpool(
        parse_subscription, body, ctx.terms, max_q_length=state.settings.max_q_length
    )
    await run_in_threadpool(check_endpoint, state.outbound, _uri(parsed), ENDPOINT)
    parsed.setdefault("id", new_subscription_id())
    now = now_iso()
    # Its creator is the caller its notifications are read for (the access port).
    sub = Subscription(body=parsed, context=context, created_at=now, modified_at=now, owner=caller)
    tenant = tenant_name(request)
    await run_in_threadpool(notifier.store.add, tenant, sub)  # a durable commit: off the loop
    return Response(status_code=201, headers={"Location": BASE + quote(sub.id, safe=":/")})


@router.get("/subscriptions")
@router.get("/subscriptions/", include_in_schema=False)
def list_subscriptions(
    request: Request, state: StateDep, service: ServiceDep, _: AdminDep
) -> Response:
    notifier = state.notifier
    params = request.query_params
    kind = accept(request, (JSON, JSONLD))
    limit = integer(params, "limit", state.settings.default_page_size)
    offset = integer(params, "offset", 0)
    if limit > state.settings.max_page_size:
        raise TooManyResults(
            f"limit {limit} is above the maximum page size {state.settings.max_page_size}"
        )
    sys_attrs = "sysAttrs" in options(params, frozenset({"sysAttrs"}))
    subs = sorted(notifier.store.all(tenant_name(request)), key=lambda s: s.created_at)
    page = subs[offset : offset + limit]
    body = [_rendered(s, kind, sys_attrs) for s in page]
    headers: dict[str, str] = {}
    if boolean(params, "count"):
        headers["NGSILD-Results-Count"] = str(len(subs))
    links = []
    if limit and offset + len(page) < len(subs):
        links.append(f'<{request.url.include_query_params(offset=offset + limit)}>; rel="next"')
    if offset > 0 and limit:
        prev = max(offset - limit, 0)
        links.append(f'<{request.url.include_query_params(offset=prev)}>; rel="prev"')
    if links:
        headers["Link"] = ", ".join(links)
    return json_response(body, media_type=kind, headers=headers)


@router.get("/subscriptions/{subscription_id:path}")
def retrieve_subscription(
    subscription_id: str, request: Request, state: StateDep, service: ServiceDep, _: AdminDep
) -> Response:
    check_uri(subscription_id, "subscription id")
    kind = accept(request, (JSON, JSONLD))
    sys_attrs = "sysAttrs" in options(request.query_params, frozenset({"sysAttrs"}))
    sub = state.notifier.store.get(tenant_name(request), subscription_id)
    return json_response(_rendered(sub, kind, sys_attrs), media_type=kind)


@router.patch("/subscriptions/{subscription_id:path}", status_code=204)
async def update_subscription(
    subscription_id: str, request: Request, state: StateDep, service: ServiceDep, _: AdminDep
) -> Response:
    check_uri(subscription_id, "subscription id")
    notifier = state.notifier
    tenant = tenant_name(request)
    current = notifier.store.get(tenant, subscription_id)
    fragment, context = await entity_body(
        request,
        max_bytes=state.settings.max_body_bytes,
        max_depth=state.settings.max_json_depth,
        patch=True,
    )
    if not isinstance(fragment, dict):
        raise BadRequestData("a subscription update must be a JSON object")
    # A fragment in another @context re-bases the subscription on it (its terms win).
    context = context if context is not None else current.context
    ctx = await resolve_context_async(state, context)
    merged = merge_patch(current.body, fragment)
    parsed = await run_in_threadpool(
        parse_subscription,
        merged,
        ctx.terms,
        max_q_length=state.settings.max_q_length,
        creating="expiresAt" in fragment,
    )
    await run_in_threadpool(check_endpoint, state.outbound, _uri(parsed), ENDPOINT)
    updated = Subscription(
        body=parsed,
        context=context,
        created_at=current.created_at,
        modified_at=now_iso(),
        delivery=current.delivery,
        owner=current.owner,
    )
    await run_in_threadpool(notifier.store.replace, tenant, updated)
    return Response(status_code=204)


@router.delete("/subscriptions/{subscription_id:path}", status_code=204)
def delete_subscription(
    subscription_id: str, request: Request, state: StateDep, service: ServiceDep, _: AdminDep
) -> Response:
    check_uri(subscription_id, "subscription id")
    notifier = state.notifier
    notifier.store.delete(tenant_name(request), subscription_id)
    return Response(status_code=204)


def _rendered(sub: Subscription, kind: str, sys_attrs: bool) -> dict[str, Any]:
    body = sub.render(sys_attrs=sys_attrs)
    if kind == JSONLD:
        body["@context"] = sub.context if sub.context is not None else CORE_CONTEXT
    return body
