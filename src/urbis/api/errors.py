"""One place that renders every error as application/problem+json (RFC 7807, NGSI-LD 5.5)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from urbis.api.responses import json_response
from urbis.twin.errors import ERROR_BASE, InternalError, NgsiLdError

log = logging.getLogger("urbis")
PROBLEM = "application/problem+json"

_HTTP_TYPES = {
    400: ("BadRequestData", "Bad request data"),
    404: ("ResourceNotFound", "Resource not found"),
    405: ("OperationNotSupported", "Method not allowed"),
    406: ("NotAcceptable", "Not acceptable"),
    415: ("UnsupportedMediaType", "Unsupported media type"),
}


def problem_response(error: NgsiLdError, headers: dict[str, str] | None = None) -> Response:
    return json_response(error.problem(), status=error.status, media_type=PROBLEM, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(NgsiLdError)
    async def _ngsi(_: Request, exc: NgsiLdError) -> Response:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return problem_response(exc, headers)

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
        return problem_response(InternalError("an unexpected error occurred; it has been logged"))
