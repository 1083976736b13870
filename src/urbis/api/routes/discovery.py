"""Type and attribute discovery (clauses 5.7.5-5.7.8, 6.25-6.28), as the caller may see it."""

from __future__ import annotations

import hashlib
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from urbis.api.deps import ContextDep, LdContext, ViewDep
from urbis.api.http import JSON, accept
from urbis.api.params import boolean
from urbis.api.render import entity_response
from urbis.ngsild import discovery
from urbis.twin.errors import ResourceNotFound

router = APIRouter(prefix="/ngsi-ld/v1", tags=["discovery"])


def _list_id(kind: str, names: list[str]) -> str:
    digest = hashlib.sha1("\n".join(names).encode()).hexdigest()[:16]
    return f"urn:ngsi-ld:{kind}:{digest}"


def _respond(body: Any, request: Request, ctx: LdContext) -> Response:
    kind = accept(request, (JSON, "application/ld+json"))
    if kind != JSON:
        if isinstance(body, list):
            body = [{**b, "@context": ctx.body_value()} for b in body]
        else:
            body = {**body, "@context": ctx.body_value()}
    return entity_response(body, ctx, kind)


@router.get("/types")
@router.get("/types/", include_in_schema=False)
def list_types(request: Request, view: ViewDep, ctx: ContextDep) -> Response:
    found = discovery.types(view)
    c = ctx.terms.compact
    if boolean(request.query_params, "details"):
        body: Any = [
            {
                "id": t.iri,
                "type": "EntityType",
                "typeName": c(t.iri),
                "attributeNames": sorted(c(a) for a in t.attributes),
            }
            for t in found.values()
        ]
    else:
        names = sorted(c(t) for t in found)
        body = {
            "id": _list_id("EntityTypeList", names),
            "type": "EntityTypeList",
            "typeList": names,
        }
    return _respond(body, request, ctx)


@router.get("/types/{type_name:path}")
def type_info(type_name: str, request: Request, view: ViewDep, ctx: ContextDep) -> Response:
    expanded = ctx.terms.expand(type_name)
    found = discovery.types(view, only=expanded).get(expanded)
    if found is None:
        raise ResourceNotFound(f"no entity of type {type_name!r}")
    c = ctx.terms.compact
    body = {
        "id": found.iri,
        "type": "EntityTypeInfo",
        "typeName": c(found.iri),
        "entityCount": found.count,
        "attributeDetails": [
            {
                "id": a.iri,
                "type": "Attribute",
                "attributeName": c(a.iri),
                "attributeTypes": sorted(a.types),
            }
            for a in sorted(found.attributes.values(), key=lambda a: a.iri)
        ],
    }
    return _respond(body, request, ctx)


def _attribute(info: discovery.AttributeInfo, ctx: LdContext, *, full: bool) -> dict[str, Any]:
    c = ctx.terms.compact
    body: dict[str, Any] = {"id": info.iri, "type": "Attribute", "attributeName": c(info.iri)}
    if full:
        body["attributeCount"] = info.count
        body["attributeTypes"] = sorted(info.types)
    body["typeNames"] = sorted(c(t) for t in info.type_names)
    return body


@router.get("/attributes")
@router.get("/attributes/", include_in_schema=False)
def list_attributes(request: Request, view: ViewDep, ctx: ContextDep) -> Response:
    found = discovery.attributes(view)
    if boolean(request.query_params, "details"):
        body: Any = [_attribute(a, ctx, full=False) for a in found.values()]
    else:
        names = sorted(ctx.terms.compact(a) for a in found)
        body = {
            "id": _list_id("AttributeList", names),
            "type": "AttributeList",
            "attributeList": names,
        }
    return _respond(body, request, ctx)


@router.get("/attributes/{attr:path}")
def attribute_info(attr: str, request: Request, view: ViewDep, ctx: ContextDep) -> Response:
    expanded = ctx.terms.expand(attr)
    found = discovery.attributes(view, only=expanded).get(expanded)
    if found is None:
        raise ResourceNotFound(f"no attribute {attr!r}")
    return _respond(_attribute(found, ctx, full=True), request, ctx)
