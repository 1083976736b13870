"""NGSI-LD context information: entities and attributes (clauses 5.6 and 5.7, 6.4-6.7)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from urbis.api.deps import (
    ContextDep,
    LdContext,
    ServiceDep,
    StateDep,
    ViewDep,
    WriterDep,
    resolve_context_async,
)
from urbis.api.errors import render
from urbis.api.federation import WARNING_HEADER, federated_query, federated_retrieve
from urbis.api.http import GEOJSON, accept, entity_body
from urbis.api.params import entity_query, expanded_names, options, query_source, representation
from urbis.api.render import entity_response, render_entities
from urbis.api.responses import json_response
from urbis.twin.entities import UpdateResult
from urbis.twin.errors import BadRequestData, OperationNotSupported, ResourceNotFound
from urbis.twin.model import EntityReader, check_uri
from urbis.twin.query.typeexpr import parse_types

router = APIRouter(prefix="/ngsi-ld/v1", tags=["entities"])
BASE = "/ngsi-ld/v1/entities/"


async def _body(request: Request, state: StateDep, *, patch: bool = False) -> tuple[Any, LdContext]:
    body, context = await entity_body(
        request,
        max_bytes=state.settings.max_body_bytes,
        max_depth=state.settings.max_json_depth,
        patch=patch,
    )
    return body, await resolve_context_async(state, context)


def _object(body: Any, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequestData(f"{what} must be a JSON object")
    return body


def _update_result(result: UpdateResult, ctx: LdContext) -> Response:
    if not result.not_updated:
        return Response(status_code=204)
    body = {
        "updated": [ctx.terms.compact(n) for n in result.updated],
        "notUpdated": [
            {"attributeName": ctx.terms.compact(n), "reason": why} for n, why in result.not_updated
        ],
    }
    return json_response(body, status=207)


# -- entities ---------------------------------------------------------------------------------


@router.post("/entities", status_code=201)
@router.post("/entities/", status_code=201, include_in_schema=False)
async def create_entity(
    request: Request, state: StateDep, service: ServiceDep, writer: WriterDep
) -> Response:
    body, ctx = await _body(request, state)
    doc = state.reader(ctx.terms).entity(_object(body, "an entity"))
    await run_in_threadpool(service.create, doc, context=writer)
    return Response(status_code=201, headers={"Location": BASE + quote(doc["id"], safe=":/")})


@router.get("/entities")
@router.get("/entities/", include_in_schema=False)
async def query_entities(
    request: Request, state: StateDep, view: ViewDep, ctx: ContextDep
) -> Response:
    params = request.query_params
    kind = accept(request)
    rep = representation(params)
    source = query_source(params, state.settings)
    query = entity_query(source, ctx.terms, state.settings)
    result = await federated_query(request, state, ctx, query, view)  # local + sources
    body = render_entities(
        result.documents,
        ctx,
        rep,
        kind,
        attrs=query.attrs,
        pick=expanded_names(params, "pick", ctx.terms),
        omit=expanded_names(params, "omit", ctx.terms),
        geometry_property=_geometry_property(request, ctx),
    )
    headers: dict[str, str] = result.headers()
    if result.total is not None:
        headers["NGSILD-Results-Count"] = str(result.total)
    links = _page_links(request, query.offset, query.limit, len(result.documents), result.total)
    return entity_response(body, ctx, kind, headers=headers, links=links)


def _geometry_property(request: Request, ctx: LdContext) -> str | None:
    name = request.query_params.get("geometryProperty")
    return ctx.terms.expand(name) if name else None


def _page_links(request: Request, offset: int, limit: int, returned: int, total: int | None) -> str:
    """Link rel=next/prev for paging (clause 5.5.9)."""
    if limit == 0:
        return ""
    links = []
    has_more = returned == limit if total is None else offset + returned < total
    if has_more:
        links.append(f'<{request.url.include_query_params(offset=offset + limit)}>; rel="next"')
    if offset > 0:
        prev = max(offset - limit, 0)
        links.append(f'<{request.url.include_query_params(offset=prev)}>; rel="prev"')
    return ", ".join(links)


@router.get("/entities/{entity_id:path}/attrs/{attr}", include_in_schema=False)
def _no_attr_get(entity_id: str, attr: str) -> Response:
    raise OperationNotSupported(
        "GET of a single attribute is not defined; GET the entity with attrs="
    )


@router.get("/entities/{entity_id:path}")
async def retrieve_entity(  # async: one key lookup, cheaper than a worker-thread hop
    entity_id: str, request: Request, state: StateDep, view: ViewDep, ctx: ContextDep
) -> Response:
    check_uri(entity_id, "entity id")
    params = request.query_params
    kind = accept(request)
    rep = representation(params)
    types = parse_types(params["type"], ctx.terms.expand) if params.get("type") else None
    attrs = expanded_names(params, "attrs", ctx.terms)
    found, warnings = await federated_retrieve(
        request, state, ctx, entity_id, view, types=types, attrs=attrs
    )
    if found is None:
        error = ResourceNotFound(f"entity {entity_id!r} not found")
        return render(request, error, {WARNING_HEADER: ", ".join(warnings)} if warnings else None)
    doc = found
    wanted_type = params.get("type")
    if wanted_type and ctx.terms.expand(wanted_type) not in doc["type"]:
        raise ResourceNotFound(f"entity {entity_id!r} has no type {wanted_type!r}")
    body = render_entities(
        [doc],
        ctx,
        rep,
        kind,
        attrs=attrs,
        pick=expanded_names(params, "pick", ctx.terms),
        omit=expanded_names(params, "omit", ctx.terms),
        geometry_property=_geometry_property(request, ctx),
    )
    headers = {WARNING_HEADER: ", ".join(warnings)} if warnings else None
    if kind == GEOJSON:
        return entity_response(body["features"][0], ctx, kind, headers=headers)
    return entity_response(body[0], ctx, kind, headers=headers)


@router.delete("/entities/{entity_id:path}/attrs/{attr}", status_code=204)
def delete_entity_attribute(
    entity_id: str,
    attr: str,
    request: Request,
    service: ServiceDep,
    ctx: ContextDep,
    writer: WriterDep,
) -> Response:
    check_uri(entity_id, "entity id")
    params = request.query_params
    service.delete_attribute(
        entity_id,
        ctx.terms.expand(attr),
        context=writer,
        dataset_id=params.get("datasetId"),
        delete_all=(params.get("deleteAll") or "false").lower() == "true",
    )
    return Response(status_code=204)


@router.patch("/entities/{entity_id:path}/attrs/{attr}", status_code=204)
async def update_entity_attribute(
    entity_id: str,
    attr: str,
    request: Request,
    state: StateDep,
    service: ServiceDep,
    writer: WriterDep,
) -> Response:
    check_uri(entity_id, "entity id")
    body, ctx = await _body(request, state, patch=True)
    reader = state.reader(ctx.terms)
    name = ctx.terms.expand(attr)
    patch = reader.instances(attr, _strip_context(body), allow_null=True)
    await run_in_threadpool(
        service.update_attribute, entity_id, name, patch, context=writer, now=reader.now
    )
    return Response(status_code=204)


@router.put("/entities/{entity_id:path}/attrs/{attr}", status_code=204)
async def replace_entity_attribute(
    entity_id: str,
    attr: str,
    request: Request,
    state: StateDep,
    service: ServiceDep,
    writer: WriterDep,
) -> Response:
    check_uri(entity_id, "entity id")
    body, ctx = await _body(request, state)
    reader = state.reader(ctx.terms)
    name = ctx.terms.expand(attr)
    instances = reader.instances(attr, _strip_context(body), allow_null=False)
    await run_in_threadpool(
        service.replace_attribute,
        entity_id,
        name,
        instances,
        context=writer,
        label=attr,
        now=reader.now,
    )
    return Response(status_code=204)


def _strip_context(body: Any) -> Any:
    if isinstance(body, dict) and "@context" in body:
        return {k: v for k, v in body.items() if k != "@context"}
    return body


@router.post("/entities/{entity_id:path}/attrs", status_code=204)
@router.post("/entities/{entity_id:path}/attrs/", status_code=204, include_in_schema=False)
async def append_entity_attributes(
    entity_id: str, request: Request, state: StateDep, service: ServiceDep, writer: WriterDep
) -> Response:
    check_uri(entity_id, "entity id")
    opts = options(request.query_params, frozenset({"noOverwrite"}))
    body, ctx = await _body(request, state)
    reader = state.reader(ctx.terms)
    attrs = reader.attributes(_object(body, "the attributes"), allow_null=False)
    result = await run_in_threadpool(
        service.append_attributes,
        entity_id,
        attrs,
        context=writer,
        overwrite="noOverwrite" not in opts,
        now=reader.now,
    )
    return _update_result(result, ctx)


@router.patch("/entities/{entity_id:path}/attrs", status_code=204)
@router.patch("/entities/{entity_id:path}/attrs/", status_code=204, include_in_schema=False)
async def update_entity_attributes(
    entity_id: str, request: Request, state: StateDep, service: ServiceDep, writer: WriterDep
) -> Response:
    check_uri(entity_id, "entity id")
    body, ctx = await _body(request, state)
    reader = state.reader(ctx.terms)
    attrs = reader.attributes(_object(body, "the attributes"), allow_null=False)
    result = await run_in_threadpool(
        service.update_attributes, entity_id, attrs, context=writer, now=reader.now
    )
    return _update_result(result, ctx)


@router.delete("/entities/{entity_id:path}", status_code=204)
def delete_entity(
    entity_id: str, request: Request, service: ServiceDep, writer: WriterDep
) -> Response:
    check_uri(entity_id, "entity id")
    service.delete(entity_id, context=writer)
    return Response(status_code=204)


@router.put("/entities/{entity_id:path}", status_code=204)
async def replace_entity(
    entity_id: str, request: Request, state: StateDep, service: ServiceDep, writer: WriterDep
) -> Response:
    check_uri(entity_id, "entity id")
    body, ctx = await _body(request, state)
    doc = state.reader(ctx.terms).entity(_object(body, "an entity"), entity_id=entity_id)
    await run_in_threadpool(service.replace, entity_id, doc, context=writer)
    return Response(status_code=204)


@router.patch("/entities/{entity_id:path}", status_code=204)
async def merge_entity_route(
    entity_id: str, request: Request, state: StateDep, service: ServiceDep, writer: WriterDep
) -> Response:
    check_uri(entity_id, "entity id")
    body, ctx = await _body(request, state, patch=True)
    patch = _merge_patch(_object(body, "a merge-patch"), state.reader(ctx.terms), entity_id)
    await run_in_threadpool(service.merge, entity_id, patch, context=writer)
    return Response(status_code=204)


def _merge_patch(body: dict[str, Any], reader: EntityReader, entity_id: str) -> dict[str, Any]:
    if "id" in body and body["id"] != entity_id:
        raise BadRequestData(f"entity id {body['id']!r} does not match the URL ({entity_id!r})")
    patch: dict[str, Any] = dict(reader.attributes(body, allow_null=True))
    if "type" in body:
        patch["type"] = reader.types(body["type"])
    if "scope" in body:
        patch["scope"] = reader.scope(body["scope"])
    return patch
