"""Connector sources (admin only): definitions, syncs, reports, quarantine.

The same operations as `urbis sources` / `urbis sync`, over HTTP. A sync runs in a worker thread
and the request waits for its report; a second sync of a source already running gets 409.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from urbis.api.deps import AdminDep, StateDep
from urbis.api.http import read_json
from urbis.api.responses import json_response
from urbis.connectors.definition import SourceDefinition
from urbis.connectors.errors import NotSynced
from urbis.connectors.live import LiveManager
from urbis.connectors.sync import SyncManager
from urbis.twin.errors import AlreadyExists, BadRequestData

router = APIRouter(prefix="/sources", tags=["sources"])


def describe(
    m: SyncManager, source: SourceDefinition, live: LiveManager | None = None
) -> dict[str, Any]:
    report = m.last_report(source.id)
    body: dict[str, Any] = {
        "id": source.id,
        "kind": source.kind,
        "title": source.title,
        "endpoint": source.endpoint,
        "entityType": source.entity_type,
        "schedule": source.schedule,
        "graph": source.graph,
        "running": m.running(source.id),
        "lastSync": report.to_dict() if report else None,
        "quarantined": m.quarantine.count(source.id),
    }
    if live is not None and m.is_live(source):
        live_report = live.report(source.id)
        body["running"] = live.running(source.id)
        body["live"] = live_report.to_dict() if live_report else None
    return body


@router.get("")
def list_sources(state: StateDep, _: AdminDep) -> Response:
    m = state.sources
    body = [describe(m, s, state.live) for s in m.catalog.list()]
    problems = [
        {"where": e.where, "errors": [list(p) for p in e.problems]} for e in m.catalog.problems()
    ]
    headers = {"Urbis-Invalid-Sources": str(len(problems))} if problems else None
    return json_response(body, headers=headers)


@router.post("", status_code=201)
async def add_source(request: Request, state: StateDep, _: AdminDep) -> Response:
    """A definition as JSON (the TOML file's fields); `?replace=true` overwrites one."""
    body = await read_json(
        request, max_bytes=state.settings.max_body_bytes, max_depth=state.settings.max_json_depth
    )
    m = state.sources
    source = m.catalog.parse(body)  # DefinitionError: a 400 listing every mistake
    replace = request.query_params.get("replace", "false").lower() == "true"
    if not replace and source.id in {s.id for s in m.catalog.list()}:
        raise AlreadyExists(f"source {source.id!r} exists; POST with ?replace=true to change it")
    await run_in_threadpool(m.catalog.save, source)
    live = state.live
    if m.is_live(source):  # runs at once, or again with the new definition
        await run_in_threadpool(live.start, source)
    elif live.running(source.id):  # replaced by a pull source
        await run_in_threadpool(live.stop, source.id)
    return json_response(
        describe(m, source, live), status=201, headers={"Location": f"/sources/{source.id}"}
    )


@router.get("/{source_id}")
def get_source(source_id: str, state: StateDep, _: AdminDep) -> Response:
    m = state.sources
    source = m.catalog.get(source_id)
    body = describe(m, source, state.live)
    body["definition"] = source.model_dump(exclude_none=True)
    body["tombstones"] = len(m.tombstones(source.id))
    return json_response(body)


@router.delete("/{source_id}", status_code=204)
def delete_source(source_id: str, state: StateDep, _: AdminDep) -> Response:
    """Forget a definition; its entities stay until synced away or deleted."""
    state.live.stop(source_id)  # a live source stops writing first
    state.sources.catalog.remove(source_id)
    return Response(status_code=204)


@router.post("/{source_id}/sync")
async def sync_source(source_id: str, state: StateDep, _: AdminDep) -> Response:
    m = state.sources
    m.catalog.get(source_id)
    # LiveSource (422) and SourceBusy (409) render as they are (connectors/sync.py).
    report = await run_in_threadpool(m.sync, source_id)
    return json_response(report.to_dict())


@router.get("/{source_id}/report")
def last_report(source_id: str, state: StateDep, _: AdminDep) -> Response:
    m = state.sources
    source = m.catalog.get(source_id)
    if m.is_live(source):  # a live source's session counters (connectors/live.py)
        live = state.live.report(source_id)
        if live is None:
            raise NotSynced(f"live source {source_id!r} has not run yet")
        return json_response(live.to_dict())
    report = m.last_report(source_id)
    if report is None:
        raise NotSynced(f"source {source_id!r} has not been synced yet")
    return json_response(report.to_dict())


@router.get("/{source_id}/quarantine")
def quarantine(source_id: str, request: Request, state: StateDep, _: AdminDep) -> Response:
    m = state.sources
    m.catalog.get(source_id)
    try:
        limit = int(request.query_params.get("limit", "100"))
        offset = int(request.query_params.get("offset", "0"))
    except ValueError:
        raise BadRequestData("limit and offset must be integers") from None
    if limit < 0 or offset < 0 or limit > state.settings.max_page_size:
        raise BadRequestData(f"limit must be 0..{state.settings.max_page_size}, offset >= 0")
    entries = m.quarantine.list(source_id, limit=limit, offset=offset)
    total = m.quarantine.count(source_id)
    return json_response([e.to_dict() for e in entries], headers={"Urbis-Total-Count": str(total)})


@router.delete("/{source_id}/quarantine", status_code=204)
def clear_quarantine(source_id: str, state: StateDep, _: AdminDep) -> Response:
    m = state.sources
    m.catalog.get(source_id)
    m.quarantine.clear(source_id)
    return Response(status_code=204)
