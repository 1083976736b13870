"""Datasets of a tenant (one named graph each) and their dumps as downloads.

`GET /datasets` lists the tenant's datasets with their entity counts; `GET /datasets/{name}/dump`
streams one dataset graph as N-Quads or TriG, chosen by Accept. Dumps are admin-only until the
data-sovereignty layer decides per policy who may download what.

Both answer through the access port (twin/access.py): a caller sees only the datasets it may
read, with the entities it may see counted, and downloads only datasets it may read as stored
(a dataset whose documents the policy transforms is readable through the NGSI-LD API only).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse

from urbis.api.deps import AdminDep, ViewDep
from urbis.api.http import accept
from urbis.api.responses import json_response
from urbis.ontology import ns
from urbis.twin.access import AccessDenied
from urbis.twin.caller_view import CallerView
from urbis.twin.dumps import FORMATS, serialized
from urbis.twin.entities import EntityService
from urbis.twin.errors import ResourceNotFound
from urbis.twin.query.plan import EntityQuery
from urbis.twin.rdf import dataset_graph

router = APIRouter(tags=["datasets"])

_MEDIA = {media: (rdf_format, suffix) for rdf_format, media, suffix in FORMATS.values()}
_OFFERED = tuple(_MEDIA)  # N-Quads first: the answer to */* and to no Accept header
_COUNTS = (
    f"SELECT ?d (COUNT(?e) AS ?n) WHERE {{ GRAPH <{ns.ENTITIES_GRAPH}> "
    f"{{ ?e <{ns.URBIS}dataset> ?d }} }} GROUP BY ?d"
)


def dataset_counts(service: EntityService) -> dict[str, int]:
    """Entities per dataset name, including dataset graphs that hold no entity."""
    counts: dict[str, int] = {}
    for graph, n in service.select(_COUNTS):
        if graph is not None and graph.startswith(ns.DATASET_PREFIX):
            counts[graph[len(ns.DATASET_PREFIX) :]] = int(n or 0)
    for graph in service.graphs():
        if graph.startswith(ns.DATASET_PREFIX):
            counts.setdefault(graph[len(ns.DATASET_PREFIX) :], 0)
    return dict(sorted(counts.items()))


def visible_counts(view: CallerView) -> dict[str, int]:
    """`dataset_counts` of what this caller may read: hidden datasets are left out, and a
    dataset whose documents the policy decides on counts the entities the caller sees."""
    counts = dataset_counts(view.service)
    if view.unrestricted:
        return counts
    scope = view.scope
    out = {}
    for name, n in counts.items():
        graph = dataset_graph(name)
        if not scope.readable(graph):
            continue
        if not scope.is_raw(graph):
            n = view.query(EntityQuery(graphs=frozenset({graph}), limit=0, count=True)).total or 0
        out[name] = n
    return out


@router.get("/datasets")
async def list_datasets(view: ViewDep) -> Response:
    counts = await run_in_threadpool(visible_counts, view)
    body: list[dict[str, Any]] = [
        {
            "name": name,
            "graph": dataset_graph(name),
            "entities": n,
            "dump": f"/datasets/{name}/dump",
        }
        for name, n in counts.items()
    ]
    return json_response(body)


@router.get("/datasets/{name}/dump")
async def dump_dataset(name: str, request: Request, view: ViewDep, _: AdminDep) -> Response:
    media = accept(request, _OFFERED)
    graph = dataset_graph(name)
    service = view.service
    graphs = await run_in_threadpool(service.graphs)
    if graph not in graphs or not view.scope.readable(graph):  # hidden: as if absent
        raise ResourceNotFound(f"dataset {name!r} not found; GET /datasets lists the datasets")
    if not view.scope.is_raw(graph):
        raise AccessDenied(
            f"dataset {name!r} is readable through the NGSI-LD API only: the access policy "
            "decides on each of its entities for this caller"
        )
    rdf_format, suffix = _MEDIA[media]
    # A sync iterator: Starlette pulls it in a worker thread, chunk by chunk.
    chunks = serialized(service.dump(graph), rdf_format)
    return StreamingResponse(
        chunks,
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{name}{suffix}"'},
    )
