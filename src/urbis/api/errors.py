"""One place that renders every error as application/problem+json (RFC 9457, NGSI-LD 5.5).

Each `UrbisError` class carries its status; a deployer may change it with a class-to-status
table, `create_app(settings, statuses={Forbidden: 404})`. The table is looked up along the
error's class hierarchy (the most specific class listed wins, so an entry for a family covers
its members), and a class it does not list keeps its own status. The problem body (type, title,
detail) never changes with the status. See docs/errors.md.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from urbis.api.responses import json_response
from urbis.twin.errors import ERROR_BASE, ConfigError, InternalError, UrbisError

log = logging.getLogger("urbis")
PROBLEM = "application/problem+json"
StatusTable = Mapping[type[UrbisError], int]

_HTTP_TYPES = {
    400: ("BadRequestData", "Bad request data"),
    404: ("ResourceNotFound", "Resource not found"),
    405: ("OperationNotSupported", "Method not allowed"),
    406: ("NotAcceptable", "Not acceptable"),
    415: ("UnsupportedMediaType", "Unsupported media type"),
}


class ProblemRenderer:
    """Errors to problem responses, through the deployment's status table."""

    def __init__(self, statuses: StatusTable | None = None) -> None:
        table = dict(statuses or {})
        for cls, status in table.items():
            if not (isinstance(cls, type) and issubclass(cls, UrbisError)):
                raise ConfigError(f"error status table: {cls!r} is not an UrbisError class")
            if not (isinstance(status, int) and 400 <= status <= 599):
                raise ConfigError(f"error status table: {cls.__name__} -> {status!r} is no 4xx/5xx")
        self.statuses: dict[type, int] = dict(table)

    def status(self, error: UrbisError) -> int:
        for cls in type(error).__mro__:
            found = self.statuses.get(cls)
            if found is not None:
                return found
        return error.status

    def response(self, error: UrbisError, headers: Mapping[str, str] | None = None) -> Response:
        status = self.status(error)
        out = dict(headers or {})
        if status == 401:
            out.setdefault("WWW-Authenticate", "Bearer")
        return json_response(error.problem(), status=status, media_type=PROBLEM, headers=out)


_DEFAULT = ProblemRenderer()


def problem_response(error: UrbisError, headers: Mapping[str, str] | None = None) -> Response:
    """With each class's own status: for code that has no request (a route has: `render`)."""
    return _DEFAULT.response(error, headers)


def render(
    request: Request, error: UrbisError, headers: Mapping[str, str] | None = None
) -> Response:
    """The error as the app renders it (its status table): for routes that answer a problem
    instead of raising it (to add headers, or inside a stream's error handling)."""
    renderer: ProblemRenderer = getattr(request.app.state, "problems", _DEFAULT)
    return renderer.response(error, headers)


def install(app: FastAPI, renderer: ProblemRenderer | None = None) -> ProblemRenderer:
    """Every error handler of the app, rendering through `renderer` (default: each class's own
    status); `render(request, ...)` finds it on the app."""
    renderer = renderer or ProblemRenderer()
    app.state.problems = renderer

    @app.exception_handler(UrbisError)
    async def _urbis(_: Request, exc: UrbisError) -> Response:
        return renderer.response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        # FastAPI's 422 is the spec's 400 BadRequestData, with the field that is wrong.
        parts = []
        for err in exc.errors():
            where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("query", "header"))
            parts.append(f"{where}: {err.get('msg')}")
        body = {
            "type": ERROR_BASE + "BadRequestData",
            "title": "Bad request data",
            "detail": "; ".join(parts) or "invalid request",
        }
        return json_response(body, status=400, media_type=PROBLEM)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        kind, title = _HTTP_TYPES.get(exc.status_code, ("InvalidRequest", "Invalid request"))
        body = {"type": ERROR_BASE + kind, "title": title, "detail": str(exc.detail)}
        return json_response(body, status=exc.status_code, media_type=PROBLEM)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, _: ClientDisconnect) -> Response:
        # The client hung up mid-body (often on a refused oversized upload): not a server
        # error, no traceback. Nobody is left to read an answer: 499 (nginx's "client closed
        # request") only keeps ASGI servers happy, which drop it.
        log.info("client disconnected during %s %s", request.method, request.url.path)
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unexpected error", exc_info=exc)
        return renderer.response(InternalError("an unexpected error occurred; it has been logged"))

    return renderer
