"""The @context source: hosted, cached and packaged JSON-LD contexts (clause 5.13, 6.32-6.33)."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from urbis.api.deps import CallerDep, StateDep
from urbis.api.http import JSON, JSONLD, UnsupportedMediaType, media_type, read_json
from urbis.api.params import boolean
from urbis.api.responses import json_response
from urbis.twin.errors import BadRequestData

router = APIRouter(prefix="/ngsi-ld/v1/jsonldContexts", tags=["contexts"])


@router.post("", status_code=201)
@router.post("/", status_code=201, include_in_schema=False)
async def add_context(request: Request, state: StateDep, _: CallerDep) -> Response:
    if media_type(request) not in (JSON, JSONLD):
        raise UnsupportedMediaType("a context is posted as application/json or application/ld+json")
    body = await read_json(
        request, max_bytes=state.settings.max_context_bytes, max_depth=state.settings.max_json_depth
    )
    if not isinstance(body, dict) or "@context" not in body:
        raise BadRequestData('the body must be a JSON object with an "@context" member')
    context_id = await run_in_threadpool(state.registry.add, body)  # a durable commit
    location = f"/ngsi-ld/v1/jsonldContexts/{quote(context_id, safe='')}"
    return Response(status_code=201, headers={"Location": location})


@router.get("")
@router.get("/", include_in_schema=False)
def list_contexts(request: Request, state: StateDep, _: CallerDep) -> Response:
    params = request.query_params
    kind = params.get("kind")
    if kind is not None and kind not in ("Hosted", "Cached", "ImplicitlyCreated"):
        raise BadRequestData(f"kind must be Hosted, Cached or ImplicitlyCreated, got {kind!r}")
    base = str(request.base_url).rstrip("/")
    entries = state.registry.list(details=boolean(params, "details"), kind=kind, base_url=base)
    return json_response(entries)


@router.get("/{context_id:path}")
def get_context(context_id: str, request: Request, state: StateDep, _: CallerDep) -> Response:
    if boolean(request.query_params, "details"):
        base = str(request.base_url).rstrip("/")
        return json_response(state.registry.details(context_id, base_url=base))
    return json_response(state.registry.get(context_id), media_type=JSONLD)


@router.delete("/{context_id:path}", status_code=204)
def delete_context(context_id: str, request: Request, state: StateDep, _: CallerDep) -> Response:
    state.registry.delete(context_id)
    return Response(status_code=204)
