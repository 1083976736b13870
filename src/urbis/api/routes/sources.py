"""Connector sources (admin only): definitions, syncs, reports, quarantine.

The same operations as `urbis sources` / `urbis sync`, over HTTP. A sync runs in a worker thread
and the request waits for its report; a second sync of a source already running gets 409.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from urbis.api.deps import AdminDep, AppState, StateDep
from urbis.api.http import read_json
from urbis.api.responses import json_response
from urbis.connectors.definition import DefinitionError, SourceDefinition
from urbis.connectors.live import LiveManager
from urbis.connectors.sync import LiveSource, SourceBusy, SyncManager
from urbis.twin.errors import AlreadyExists, BadRequestData, NgsiLdError, OperationNotSupported

log = logging.getLogger("urbis")
router = APIRouter(prefix="/sources", tags=["sources"])
SCHEDULER_PERIOD = 15.0  # seconds between two looks at the sources' schedules


def build_manager(state: AppState) -> SyncManager:
    """The deployment's connector manager: definitions and state in the state store
    (definitions in URBIS_SOURCES_DIR instead when it is set)."""
    settings = state.settings
    return SyncManager(
        state.twin,
        state.resolver,
        state.registry,
        data_dir=settings.data_dir,
        sources_dir=settings.sources_dir,
        area=settings.area(),
        guard=state.outbound,
        state=state.durable,
    )


def manager(state: AppState) -> SyncManager:
    if state.sources is None:
        state.sources = build_manager(state)
    return state.sources


def live_manager(state: AppState) -> LiveManager:
    """The live sources' runners (connectors/live.py), beside the sync manager."""
    if state.live is None:
        state.live = LiveManager(manager(state))
    return state.live


def start_live(state: AppState) -> list[str]:
    """Server start-up: run every live source of the catalogue."""
    return live_manager(state).start_all()


def stop_live(state: AppState) -> None:
    """Server shutdown: stop the live sources (provenance and quarantine flushed)."""
    if state.live is not None:
        state.live.close()


def definition_problem(error: DefinitionError) -> BadRequestData:
    """400 with every mistake: `errors` lists {field, message}, `detail` says the first."""
    first = error.problems[0] if error.problems else ("", "invalid definition")
    detail = f"{first[0]}: {first[1]}" if first[0] else first[1]
    if len(error.problems) > 1:
        detail += f" (and {len(error.problems) - 1} more in 'errors')"
    return BadRequestData(
        detail, errors=[{"field": path, "message": message} for path, message in error.problems]
    )


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
    m = manager(state)
    body = [describe(m, s, live_manager(state)) for s in m.catalog.list()]
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
    m = manager(state)
    try:
        source = m.catalog.parse(body)
    except DefinitionError as error:
        raise definition_problem(error) from None
    replace = request.query_params.get("replace", "false").lower() == "true"
    if not replace and source.id in {s.id for s in m.catalog.list()}:
        raise AlreadyExists(f"source {source.id!r} exists; POST with ?replace=true to change it")
    await run_in_threadpool(m.catalog.save, source)
    live = live_manager(state)
    if m.is_live(source):  # runs at once, or again with the new definition
        await run_in_threadpool(live.start, source)
    elif live.running(source.id):  # replaced by a pull source
        await run_in_threadpool(live.stop, source.id)
    return json_response(
        describe(m, source, live), status=201, headers={"Location": f"/sources/{source.id}"}
    )


@router.get("/{source_id}")
def get_source(source_id: str, state: StateDep, _: AdminDep) -> Response:
    m = manager(state)
    try:
        source = m.catalog.get(source_id)
    except DefinitionError as error:
        raise definition_problem(error) from None
    body = describe(m, source, live_manager(state))
    body["definition"] = source.model_dump(exclude_none=True)
    body["tombstones"] = len(m.tombstones(source.id))
    return json_response(body)


@router.delete("/{source_id}", status_code=204)
def delete_source(source_id: str, state: StateDep, _: AdminDep) -> Response:
    """Forget a definition; its entities stay until synced away or deleted."""
    live_manager(state).stop(source_id)  # a live source stops writing first
    manager(state).catalog.remove(source_id)
    return Response(status_code=204)


@router.post("/{source_id}/sync")
async def sync_source(source_id: str, state: StateDep, _: AdminDep) -> Response:
    m = manager(state)
    try:
        m.catalog.get(source_id)
    except DefinitionError as error:
        raise definition_problem(error) from None
    try:
        report = await run_in_threadpool(m.sync, source_id)
    except LiveSource as exc:
        raise OperationNotSupported(str(exc)) from None
    except SourceBusy as exc:
        raise Conflict(str(exc)) from None
    return json_response(report.to_dict())


@router.get("/{source_id}/report")
def last_report(source_id: str, state: StateDep, _: AdminDep) -> Response:
    m = manager(state)
    source = m.catalog.get(source_id)
    if m.is_live(source):  # a live source's session counters (connectors/live.py)
        live = live_manager(state).report(source_id)
        if live is None:
            raise NotSynced(f"live source {source_id!r} has not run yet")
        return json_response(live.to_dict())
    report = m.last_report(source_id)
    if report is None:
        raise NotSynced(f"source {source_id!r} has not been synced yet")
    return json_response(report.to_dict())


@router.get("/{source_id}/quarantine")
def quarantine(source_id: str, request: Request, state: StateDep, _: AdminDep) -> Response:
    m = manager(state)
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
    m = manager(state)
    m.catalog.get(source_id)
    m.quarantine.clear(source_id)
    return Response(status_code=204)


class Conflict(NgsiLdError):
    error_type, status, title = "Conflict", 409, "Sync already running"


class NotSynced(NgsiLdError):
    error_type, status, title = "ResourceNotFound", 404, "No sync report yet"


async def run_scheduler(state: AppState, period: float = SCHEDULER_PERIOD) -> None:
    """Run due scheduled syncs in the background, one at a time, until cancelled."""
    m = manager(state)
    while True:
        try:
            for source_id in await asyncio.to_thread(m.due):
                report = await asyncio.to_thread(m.sync, source_id)
                log.info(
                    "scheduled sync of %s: %s (created %d, updated %d, removed %d, quarantined %d)",
                    source_id,
                    report.status,
                    report.created,
                    report.updated,
                    report.removed,
                    report.quarantined,
                )
        except asyncio.CancelledError:
            raise
        except Exception:  # a broken source must never stop the scheduler
            log.exception("scheduled sync failed")
        await asyncio.sleep(period)
