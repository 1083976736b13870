"""SPARQL 1.1 Protocol endpoint for researchers: `/sparql` (queries) and `/sparql/update`.

Queries are public reads through the access gate, over the graphs the access port lets the
caller read as stored (sparql/dataset.py); updates need the admin token. Every answer,
error included, carries CORS headers so that browser query editors (YASGUI) work from any
origin; the rest of the API is untouched by that. Answers stream (sparql/stream.py); a
query runs in a killable child process with the time and row limits of the settings
(twin/store/query_workers.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

from fastapi import APIRouter, Request
from pyoxigraph import QueryBoolean, QuerySolutions
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from urbis.api.deps import AppState, StateDep, access_gate, admin_only, tenant_name
from urbis.api.errors import render
from urbis.ontology import ns
from urbis.sparql.dataset import visible_dataset
from urbis.sparql.protocol import (
    BOOLEAN_TYPES,
    CORS_HEADERS,
    GRAPH_TYPES,
    SD_TYPE,
    SOLUTION_TYPES,
    Format,
    Operation,
    acceptable_at_all,
    content_type,
    looks_like_update,
    negotiate,
    read_operation,
    service_description,
)
from urbis.sparql.service import check_service, mentions_service
from urbis.sparql.stream import AbortableStreamingResponse, start
from urbis.sparql.update import apply_update
from urbis.twin.access import Caller
from urbis.twin.caller_view import CallerView
from urbis.twin.entities import EntityService
from urbis.twin.errors import BadRequestData, UrbisError
from urbis.twin.geo import geosparql

router = APIRouter(tags=["sparql"])
UPDATE_HINT = (
    "SPARQL Update is not accepted at /sparql: POST it to /sparql/update "
    "(Content-Type: application/sparql-update, or a form with update=...) with "
    "'Authorization: Bearer <admin token>'"
)


def _problem(request: Request, error: UrbisError) -> Response:
    return render(request, error, CORS_HEADERS)  # 401s get their WWW-Authenticate there


async def _service(state: AppState, request: Request, *, create: bool) -> EntityService:
    name = tenant_name(request)
    if state.twin.is_open(name):
        return state.twin.tenant(name)
    return await run_in_threadpool(lambda: state.twin.tenant(name, create=create))


async def _reader(request: Request, state: AppState) -> Caller:
    """The access gate, asked about a read: a POSTed query is a read, not a write."""
    as_read = Request({**request.scope, "method": "GET"}, request.receive)
    return await access_gate(as_read, state)


@router.get("/sparql")
@router.post("/sparql")
async def sparql_query(request: Request, state: StateDep) -> Response:
    """SPARQL 1.1 Protocol query operation (GET, POST form, POST application/sparql-query)."""
    try:
        caller = await _reader(request, state)
        settings = state.settings
        operation = await read_operation(
            request,
            max_length=settings.sparql_max_query_length,
            max_body=max(settings.max_body_bytes, 4 * settings.sparql_max_query_length),
        )
        if operation.text is None:
            if request.method == "GET" and not request.url.query:
                return await _description(request, state, caller)
            raise BadRequestData("no SPARQL query: send it as 'query' (or GET without one)")
        if operation.is_update or looks_like_update(operation.text):
            raise BadRequestData(UPDATE_HINT)
        await _check_service(operation.text, state, caller.admin)
        accept = request.headers.get("accept")
        acceptable_at_all(accept)
        service = await _service(state, request, create=False)
        visible = _visible(service, state, caller, request)
        ready, body = await start(
            lambda: _run(service, operation, state, visible),
            lambda result: negotiate(accept, _offers(result)),
        )
    except UrbisError as error:
        return _problem(request, error)
    headers = {**CORS_HEADERS, "Vary": "Accept", "Cache-Control": "no-store"}
    # The body may end with an Aborted marker, which only this response class understands.
    stream = cast(AsyncIterator[bytes], body)
    return AbortableStreamingResponse(stream, media_type=content_type(ready.fmt), headers=headers)


async def _check_service(text: str, state: AppState, admin: bool, update: bool = False) -> None:
    """SERVICE would make the engine (in process, in the guard's child or remote) call out:
    refused unless allowed (sparql/service.py); parsed only when it may be there."""
    if mentions_service(text):
        allow = state.settings.sparql_service_allow
        await run_in_threadpool(check_service, text, allow=allow, admin=admin, update=update)


def _visible(
    service: EntityService, state: AppState, caller: Caller, request: Request
) -> frozenset[str] | None:
    """The graphs this caller may query (None: all): those it may read as stored."""
    return CallerView.of(service, state.access, caller, tenant_name(request)).scope.raw


def _run(
    service: EntityService, operation: Operation, state: AppState, visible: frozenset[str] | None
) -> Any:
    """Spatial filters answered by the tenant's index, then the guarded query, over the graphs
    the caller may see."""
    assert operation.text is not None
    # The index holds every graph's geometries; a rewrite only ever joins its literals with a
    # triple pattern of the same group, which the dataset below keeps to the visible graphs.
    text, functions = geosparql.prepare(operation.text, service.index)
    default = operation.default_graphs or None
    named = operation.named_graphs or None
    if visible is not None:
        default, named = visible_dataset(
            operation.text, operation.default_graphs, operation.named_graphs, visible
        )
    settings = state.settings
    return service.sparql(
        text,
        default_graphs=default,
        named_graphs=named,
        custom_functions=_called(functions, text),
        timeout=settings.sparql_timeout,
        max_rows=settings.sparql_max_rows,
    )


def _called(functions: dict[str, Any], text: str) -> dict[str, Any] | None:
    """The functions the query can call: its text names their namespace and local name.

    Requests are pickled to a warm worker (twin/store/query_workers.py): sending only the functions
    the query names keeps that cheap.
    """
    if ns.GEOF not in text:
        return None
    return {iri: f for iri, f in functions.items() if iri.rsplit("/", 1)[-1] in text} or None


def _offers(result: Any) -> dict[str, Format]:
    if isinstance(result, QueryBoolean):
        return dict(BOOLEAN_TYPES)
    if isinstance(result, QuerySolutions):
        return dict(SOLUTION_TYPES)
    return dict(GRAPH_TYPES)


async def _description(request: Request, state: AppState, caller: Caller) -> Response:
    service = await _service(state, request, create=False)
    graphs = await run_in_threadpool(service.graphs)
    visible = _visible(service, state, caller, request)
    if visible is not None:  # no name of a graph the caller may not query
        graphs = [g for g in graphs if g in visible]
    endpoint = str(request.url.replace(query="", fragment=""))
    text = service_description(
        endpoint,
        graphs,
        list(geosparql.FUNCTIONS),
        state.settings.sparql_max_rows,
        state.settings.sparql_timeout,
    )
    headers = {**CORS_HEADERS, "Vary": "Accept"}
    return Response(text, media_type=SD_TYPE, headers=headers)


@router.post("/sparql/update")
async def sparql_update(request: Request, state: StateDep) -> Response:
    """SPARQL 1.1 Protocol update operation: admin only; see sparql/update.py for what
    an update may write."""
    try:
        await admin_only(await access_gate(request, state))
        operation = await read_operation(
            request,
            max_length=state.settings.sparql_max_query_length,
            max_body=state.settings.max_body_bytes,
        )
        if operation.text is None:
            raise BadRequestData(
                "no SPARQL update: send it as application/sparql-update or a form with update=..."
            )
        if not operation.is_update:
            raise BadRequestData("a query was sent to /sparql/update: send queries to /sparql")
        if operation.default_graphs or operation.named_graphs:
            raise BadRequestData("using-graph-uri and using-named-graph-uri are not supported")
        await _check_service(operation.text, state, True, update=True)
        service = await _service(state, request, create=True)
        await run_in_threadpool(apply_update, service, operation.text)
    except UrbisError as error:
        return _problem(request, error)
    return Response(status_code=204, headers=CORS_HEADERS)


@router.options("/sparql")
@router.options("/sparql/update")
async def sparql_preflight() -> Response:
    """CORS preflight: any origin may query (and, with the token, update)."""
    return Response(status_code=204, headers=CORS_HEADERS)
