"""Context source registrations (clauses 5.9, 5.10; 6.8-6.9): CRUD over `twin.registrations`.

Writes need the admin token (the access gate). Reads are public, as discovery is, but the
values of contextSourceInfo (they may carry a source's credentials) are shown to the admin only.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from urbis.api.deps import (
    AdminDep,
    CallerDep,
    ContextDep,
    LdContext,
    ServiceDep,
    StateDep,
    resolve_context_async,
    tenant_name,
)
from urbis.api.http import JSON, JSONLD, accept, entity_body
from urbis.api.params import boolean, integer, name_list, options
from urbis.api.render import context_headers
from urbis.api.responses import json_response
from urbis.ngsild.registrations import Registration, RegistrationReader, local_conflict, render
from urbis.twin.errors import TooManyResults
from urbis.twin.model import check_uri
from urbis.twin.outbound import check_endpoint
from urbis.twin.query.idpattern import compile_id_pattern
from urbis.twin.query.typeexpr import parse_types

router = APIRouter(prefix="/ngsi-ld/v1", tags=["context sources"])
BASE = "/ngsi-ld/v1/csourceRegistrations/"
REDACTED = "********"


def _respond(
    body: Any,
    ctx: LdContext,
    kind: str,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    if kind == JSONLD:
        items = body if isinstance(body, list) else [body]
        for item in items:
            item["@context"] = ctx.body_value()
    all_headers = context_headers(ctx, kind)
    all_headers.update(headers or {})
    return json_response(body, status=status, media_type=kind, headers=all_headers)


def _shown(
    reg: Registration, ctx: LdContext, request: Request, admin: bool, sys_attrs: bool
) -> Any:
    state = request.app.state.urbis
    doc = render(reg, ctx.terms, state.registrations.stats(tenant_name(request), reg.id))
    if sys_attrs:
        doc["createdAt"], doc["modifiedAt"] = reg.created_at, reg.modified_at
    if not admin and "contextSourceInfo" in doc:
        doc["contextSourceInfo"] = [
            {"key": p["key"], "value": REDACTED} for p in doc["contextSourceInfo"]
        ]
    return doc


def _sys_attrs(request: Request) -> bool:
    return "sysAttrs" in options(request.query_params, frozenset({"sysAttrs", "keyValues"}))


@router.post("/csourceRegistrations", status_code=201)
@router.post("/csourceRegistrations/", status_code=201, include_in_schema=False)
async def create_registration(
    request: Request, state: StateDep, _: AdminDep, service: ServiceDep
) -> Response:
    body, context = await entity_body(
        request, max_bytes=state.settings.max_body_bytes, max_depth=state.settings.max_json_depth
    )
    ctx = await resolve_context_async(state, context)
    reg = RegistrationReader(ctx.terms).create(body)
    await run_in_threadpool(check_endpoint, state.outbound, reg.endpoint, "endpoint")
    await run_in_threadpool(local_conflict, reg, service)
    await run_in_threadpool(state.registrations.create, tenant_name(request), reg)
    return Response(status_code=201, headers={"Location": BASE + quote(reg.id, safe=":/")})


@router.get("/csourceRegistrations")
@router.get("/csourceRegistrations/", include_in_schema=False)
async def query_registrations(
    request: Request, state: StateDep, caller: CallerDep, ctx: ContextDep, _: ServiceDep
) -> Response:
    """Clause 5.10.2: registrations whose information may hold the entities described."""
    params = request.query_params
    kind = accept(request, (JSON, JSONLD))
    ids = name_list(params, "id")
    id_pattern = params.get("idPattern")
    types = parse_types(params["type"], ctx.terms.expand) if params.get("type") else None
    attr_names = name_list(params, "attrs")
    attrs = {ctx.terms.expand(a) for a in attr_names} if attr_names else None
    limit = integer(params, "limit", state.settings.default_page_size)
    offset = integer(params, "offset", 0)
    if limit > state.settings.max_page_size:
        raise TooManyResults(
            f"limit {limit} is above the maximum page size {state.settings.max_page_size}"
        )
    if ids is not None:
        for i in ids:
            check_uri(i, "id")
    if id_pattern is not None:
        _check_pattern(id_pattern)

    def wanted(reg: Registration) -> bool:
        return any(
            info.may_hold(ids=ids, id_pattern=id_pattern, types=types, attrs=attrs)
            for info in reg.information
        )

    found = state.registrations.matching(tenant_name(request), wanted)
    sys_attrs = _sys_attrs(request)
    page = [
        _shown(r, ctx, request, caller.admin, sys_attrs) for r in found[offset : offset + limit]
    ]
    headers = {}
    if boolean(params, "count"):
        headers["NGSILD-Results-Count"] = str(len(found))
    return _respond(page, ctx, kind, headers=headers)


def _check_pattern(pattern: str) -> None:
    compile_id_pattern(pattern)  # one meaning with queries and registrations


@router.get("/csourceRegistrations/{reg_id:path}")
async def retrieve_registration(
    reg_id: str, request: Request, state: StateDep, caller: CallerDep, ctx: ContextDep,
    _: ServiceDep,
) -> Response:  # fmt: skip
    check_uri(reg_id, "registration id")
    kind = accept(request, (JSON, JSONLD))
    reg = state.registrations.get(tenant_name(request), reg_id)
    return _respond(_shown(reg, ctx, request, caller.admin, _sys_attrs(request)), ctx, kind)


@router.patch("/csourceRegistrations/{reg_id:path}", status_code=204)
async def update_registration(
    reg_id: str, request: Request, state: StateDep, _: AdminDep, service: ServiceDep
) -> Response:
    """Clause 5.9.3: the members given replace the registration's; the next query uses them."""
    check_uri(reg_id, "registration id")
    body, context = await entity_body(
        request,
        max_bytes=state.settings.max_body_bytes,
        max_depth=state.settings.max_json_depth,
        patch=True,
    )
    ctx = await resolve_context_async(state, context)
    reader = RegistrationReader(ctx.terms)

    def change(current: Registration) -> Registration:
        new = reader.patch(current, body)
        check_endpoint(state.outbound, new.endpoint, "endpoint")
        local_conflict(new, service)
        return new

    await run_in_threadpool(state.registrations.update, tenant_name(request), reg_id, change)
    return Response(status_code=204)


@router.delete("/csourceRegistrations/{reg_id:path}", status_code=204)
async def delete_registration(
    reg_id: str, request: Request, state: StateDep, _: AdminDep, __: ServiceDep
) -> Response:
    check_uri(reg_id, "registration id")
    await run_in_threadpool(state.registrations.delete, tenant_name(request), reg_id)
    return Response(status_code=204)
