"""Representation of entities in the negotiated media type (JSON, JSON-LD, GeoJSON)."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from urbis.api.deps import LdContext
from urbis.api.http import CONTEXT_REL, GEOJSON, JSONLD
from urbis.api.params import Representation
from urbis.api.responses import json_response
from urbis.twin.model import EntityWriter

Doc = dict[str, Any]


def context_headers(ctx: LdContext, kind: str) -> dict[str, str]:
    """application/json carries the @context in a Link header (clause 6.3.6)."""
    if kind == JSONLD:
        return {}
    return {"Link": f'<{ctx.link_url()}>; rel="{CONTEXT_REL}"; type="application/ld+json"'}


def render_entities(
    docs: list[Doc],
    ctx: LdContext,
    rep: Representation,
    kind: str,
    *,
    attrs: set[str] | None = None,
    pick: set[str] | None = None,
    omit: set[str] | None = None,
    geometry_property: str | None = None,
) -> Any:
    writer = EntityWriter(ctx.terms, form=rep.form, sys_attrs=rep.sys_attrs, lang=rep.lang)
    entities = [writer.entity(d, attrs=attrs, pick=pick, omit=omit) for d in docs]
    if kind == GEOJSON:
        geo_iri = geometry_property or "https://uri.etsi.org/ngsi-ld/location"
        features = [_feature(d, e, geo_iri) for d, e in zip(docs, entities, strict=True)]
        return {"type": "FeatureCollection", "features": features}
    if kind == JSONLD:
        for entity in entities:
            entity["@context"] = ctx.body_value()
    return entities


def _feature(doc: Doc, entity: Doc, geo_iri: str) -> Doc:
    """A GeoJSON Feature (clause 4.5.16): the geometry is the chosen GeoProperty's value."""
    geometry = None
    for inst in doc.get(geo_iri, []):
        if inst.get("type") == "GeoProperty":
            geometry = inst["value"]
            break
    properties = {k: v for k, v in entity.items() if k != "id"}
    return {"id": doc["id"], "type": "Feature", "geometry": geometry, "properties": properties}


def entity_response(
    body: Any,
    ctx: LdContext,
    kind: str,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
    links: str = "",
) -> Response:
    """The body with its @context Link (JSON, GeoJSON) and any paging links beside it."""
    all_headers = context_headers(ctx, kind)
    all_headers.update(headers or {})
    if links:
        all_headers["Link"] = f"{all_headers['Link']}, {links}" if "Link" in all_headers else links
    return json_response(body, status=status, media_type=kind, headers=all_headers)
