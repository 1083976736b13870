"""Batch entity operations and POST query (clauses 5.6.7-5.6.10, 5.6.20, 5.7.2; 6.14-6.31)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from urbis.api.deps import ServiceDep, StateDep, ViewDep, WriterDep, reads, resolve_context
from urbis.api.http import (
    JSON,
    JSONLD,
    UnsupportedMediaType,
    accept,
    entity_body,
    media_type,
    read_json,
)
from urbis.api.params import boolean, entity_query, integer, options, representation
from urbis.api.render import entity_response, render_entities
from urbis.api.responses import json_response
from urbis.twin.entities import BatchItem, BatchResult
from urbis.twin.errors import BadRequestData, NgsiLdError
from urbis.twin.model import EntityReader, check_uri, now_iso
from urbis.twin.writes import UpsertMode

router = APIRouter(prefix="/ngsi-ld/v1/entityOperations", tags=["batch"])
Doc = dict[str, Any]
Reader = Callable[[EntityReader, dict[str, Any]], Doc]


async def _items(request: Request, state: StateDep) -> tuple[list[Any], Any]:
    body, context = await entity_body(
        request, max_bytes=state.settings.max_body_bytes, max_depth=state.settings.max_json_depth
    )
    if not isinstance(body, list):
        raise BadRequestData("a batch body must be a JSON array")
    if not body:
        raise BadRequestData("a batch body must not be empty")
    if len(body) > state.settings.max_batch_size:
        raise BadRequestData(
            f"the batch has {len(body)} items; the limit is {state.settings.max_batch_size}"
        )
    return body, context


def _parse(
    state: StateDep, request: Request, items: list[Any], link: Any, read: Reader
) -> list[BatchItem]:
    """Read every entity on its own, so one bad entity is reported and the rest go on."""
    ld = media_type(request) == JSONLD
    now = now_iso()
    parsed: list[BatchItem] = []
    for item in items:
        entity_id = item.get("id") if isinstance(item, dict) else None
        try:
            if not isinstance(item, dict):
                raise BadRequestData("each batch item must be an entity object")
            check_uri(item.get("id"), "entity id")
            if ld and "@context" not in item:
                raise BadRequestData("with application/ld+json each entity needs an @context")
            ctx = resolve_context(state, item.get("@context") if ld else link)
            parsed.append((entity_id, read(state.reader(ctx.terms, now=now), item)))
        except NgsiLdError as error:
            parsed.append((entity_id if isinstance(entity_id, str) else None, error))
    return parsed


def _result(result: BatchResult, *, created: list[str] | None = None) -> Response:
    """201 with created ids, 204 when all went well, 207 with a BatchOperationResult."""
    if result.errors:
        body = {
            "success": result.success,
            "errors": [
                {"entityId": eid, "error": {**err.problem(), "status": err.status}}
                for eid, err in result.errors
            ],
        }
        return json_response(body, status=207)
    if created:
        return json_response(created, status=201)
    return Response(status_code=204)


def _entity(reader: EntityReader, item: dict[str, Any]) -> Doc:
    return reader.entity(item)


def _fragment(reader: EntityReader, item: dict[str, Any]) -> Doc:
    """id, type and attributes of an update/merge item (attributes may carry nulls)."""
    doc: Doc = {"id": item["id"]}
    if "type" in item:
        doc["type"] = reader.types(item["type"])
    doc.update(reader.attributes(item, allow_null=True))
    return doc


@router.post("/create")
@router.post("/create/", include_in_schema=False)
async def batch_create(
    request: Request, state: StateDep, service: ServiceDep, writer: WriterDep
) -> Response:
    items, link = await _items(request, state)
    parsed = await run_in_threadpool(_parse, state, request, items, link, _entity)
    result = await run_in_threadpool(service.create_many, parsed, context=writer)
    return _result(result, created=result.success)


@router.post("/upsert")
@router.post("/upsert/", include_in_schema=False)
async def batch_upsert(
    request: Request, state: StateDep, service: ServiceDep, writer: WriterDep
) -> Response:
    opts = options(request.query_params, frozenset({"update", "replace"}))
    if opts == {"update", "replace"}:
        raise BadRequestData("options=update and options=replace exclude each other")
    items, link = await _items(request, state)
    parsed = await run_in_threadpool(_parse, state, request, items, link, _entity)
    mode: UpsertMode = "update" if "update" in opts else "replace"
    result = await run_in_threadpool(service.upsert_many, parsed, context=writer, mode=mode)
    return _result(result, created=result.created)


@router.post("/update")
@router.post("/update/", include_in_schema=False)
async def batch_update(
    request: Request, state: StateDep, service: ServiceDep, writer: WriterDep
) -> Response:
    opts = options(request.query_params, frozenset({"noOverwrite"}))
    items, link = await _items(request, state)
    parsed = await run_in_threadpool(_parse, state, request, items, link, _fragment)
    overwrite = "noOverwrite" not in opts
    return _result(
        await run_in_threadpool(service.update_many, parsed, context=writer, overwrite=overwrite)
    )


@router.post("/merge")
@router.post("/merge/", include_in_schema=False)
async def batch_merge(
    request: Request, state: StateDep, service: ServiceDep, writer: WriterDep
) -> Response:
    items, link = await _items(request, state)
    parsed = await run_in_threadpool(_parse, state, request, items, link, _fragment)
    return _result(await run_in_threadpool(service.merge_many, parsed, context=writer))


@router.post("/delete")
@router.post("/delete/", include_in_schema=False)
async def batch_delete(
    request: Request, state: StateDep, service: ServiceDep, writer: WriterDep
) -> Response:
    kind = media_type(request)
    if kind not in (JSON, JSONLD):
        raise UnsupportedMediaType("a batch delete body is a JSON array of entity ids")
    body = await read_json(
        request, max_bytes=state.settings.max_body_bytes, max_depth=state.settings.max_json_depth
    )
    if not isinstance(body, list) or not body:
        raise BadRequestData("a batch delete body must be a non-empty JSON array of entity ids")
    if len(body) > state.settings.max_batch_size:
        raise BadRequestData(
            f"the batch has {len(body)} items; the limit is {state.settings.max_batch_size}"
        )
    parsed: list[BatchItem] = []
    for item in body:
        try:
            parsed.append((check_uri(item, "entity id"), {"id": item}))
        except NgsiLdError as error:
            parsed.append((item if isinstance(item, str) else None, error))
    return _result(await run_in_threadpool(service.delete_many, parsed, context=writer))


@router.post("/query")
@router.post("/query/", include_in_schema=False)
@reads  # a query in a body is still a read: public like GET /entities (clause 5.7.2)
async def post_query(request: Request, state: StateDep, view: ViewDep) -> Response:
    body, context = await entity_body(
        request, max_bytes=state.settings.max_body_bytes, max_depth=state.settings.max_json_depth
    )
    if not isinstance(body, dict) or body.get("type") != "Query":
        raise BadRequestData('the body must be a Query object with "type": "Query"')
    ctx = resolve_context(state, context)
    params = request.query_params
    kind = accept(request)
    rep = representation(params)

    selectors = body.get("entities")
    if selectors is not None and not isinstance(selectors, list):
        raise BadRequestData("entities must be an array of EntitySelector objects")
    source: dict[str, Any] = {
        "selectors": selectors,
        "attrs": body.get("attrs"),
        "q": body.get("q"),
        "geoQ": body.get("geoQ"),
        "scopeQ": body.get("scopeQ"),
        "limit": integer(params, "limit", state.settings.default_page_size),
        "offset": integer(params, "offset", 0),
        "count": boolean(params, "count"),
        "local": body.get("local"),
    }
    query = entity_query(source, ctx.terms, state.settings)
    result = await run_in_threadpool(view.query, query)  # as this caller may see it
    rendered = render_entities(result.documents, ctx, rep, kind, attrs=query.attrs)
    headers = {}
    if result.total is not None:
        headers["NGSILD-Results-Count"] = str(result.total)
    return entity_response(rendered, ctx, kind, headers=headers)
