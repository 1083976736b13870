"""HTTP details of NGSI-LD requests: bodies, Link headers, content negotiation (clause 6.3)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from urbis.twin.errors import ERROR_BASE, BadRequestData, PayloadTooLarge
from urbis.twin.errors import NotAcceptable as NotAcceptable  # here before twin.errors had it
from urbis.twin.errors import UnsupportedMediaType as UnsupportedMediaType
from urbis.twin.linkheader import CONTEXT_REL as CONTEXT_REL
from urbis.twin.linkheader import parse_links

JSON = "application/json"
JSONLD = "application/ld+json"
GEOJSON = "application/geo+json"
MERGE_PATCH = "application/merge-patch+json"
CORE_CONTEXT = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"

# A Link header longer than this is refused: a context link needs a few hundred bytes.
MAX_LINK_LENGTH = 8192


def link_context(request: Request) -> str | None:
    """The @context URL of a `Link: <url>; rel="http://www.w3.org/ns/json-ld#context"` header.

    Clause 6.3.5: at most one such link; a malformed Link header is a 400, never ignored.
    Several Link fields are one comma-separated list (RFC 9110 5.3).
    """
    header = ", ".join(request.headers.getlist("link"))
    if not header.strip():
        return None
    if len(header) > MAX_LINK_LENGTH:
        raise BadRequestData(
            f"the Link header is {len(header)} characters long; the limit is {MAX_LINK_LENGTH}"
        )
    urls = [url for url, rels in parse_links(header) if CONTEXT_REL in rels]
    if len(urls) > 1:
        raise BadRequestData(f"the Link header names {len(urls)} @context links; give one")
    if urls and not urls[0].strip():
        raise BadRequestData("the Link header names an empty @context URL")
    return urls[0].strip() if urls else None


def limit_headers(app: ASGIApp, max_bytes: int) -> ASGIApp:
    """The app behind a cap on the request line and headers: 431 above `max_bytes`.

    h11's own cap (`h11_max_incomplete_event_size`) only applies to a block that arrives in
    pieces, and httptools has none; this one holds whatever the parser let through.
    """

    async def limited(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
            size += sum(len(name) + len(value) + 4 for name, value in scope["headers"])
            if size > max_bytes:
                detail = f"the request line and headers exceed {max_bytes} bytes"
                problem = {"type": ERROR_BASE + "BadRequestData", "title": "Headers too large"}
                body = orjson.dumps({**problem, "detail": detail})
                headers = [
                    (b"content-type", b"application/problem+json"),
                    (b"connection", b"close"),
                ]
                await send({"type": "http.response.start", "status": 431, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await app(scope, receive, send)

    return limited


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_json(request: Request, *, max_bytes: int, max_depth: int) -> Any:
    """The parsed body, refusing oversized, malformed and over-deep JSON with a precise 400."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"the body has {declared} bytes; the limit is {max_bytes}")
    chunks = bytearray()
    async for chunk in request.stream():
        chunks.extend(chunk)
        if len(chunks) > max_bytes:
            raise PayloadTooLarge(f"the body exceeds the limit of {max_bytes} bytes")
    if not chunks.strip():
        raise BadRequestData("the request body is empty; a JSON document is required")
    try:
        body = orjson.loads(chunks)
    except orjson.JSONDecodeError as exc:
        raise BadRequestData(f"the body is not valid JSON: {exc}") from None
    check_depth(body, max_depth)
    return body


def check_depth(value: Any, max_depth: int) -> None:
    """Iterative, so a hostile document cannot exhaust the stack while being measured."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            raise BadRequestData(f"the JSON is nested deeper than {max_depth} levels")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


async def entity_body(
    request: Request, *, max_bytes: int, max_depth: int, patch: bool = False
) -> tuple[Any, Any]:
    """(body without @context, the context to use) following clause 6.3.5."""
    kind = media_type(request)
    allowed = {JSON, JSONLD} | ({MERGE_PATCH} if patch else set())
    if kind not in allowed:
        raise UnsupportedMediaType(
            f"Content-Type {kind or '(none)'!r} is not supported here; use "
            + " or ".join(sorted(allowed))
        )
    body = await read_json(request, max_bytes=max_bytes, max_depth=max_depth)
    link = link_context(request)
    if kind == JSONLD:
        if link is not None:
            raise BadRequestData(
                "with Content-Type application/ld+json the @context goes in the body, "
                "not in a Link header"
            )
        return body, _body_context(body, required=True)
    if _has_context(body):
        raise BadRequestData(
            "with Content-Type application/json the @context must come in a Link header; "
            "use application/ld+json to send it in the body"
        )
    return body, link


def _has_context(body: Any) -> bool:
    if isinstance(body, dict):
        return "@context" in body
    return isinstance(body, list) and any(isinstance(x, dict) and "@context" in x for x in body)


def _body_context(body: Any, *, required: bool) -> Any:
    if isinstance(body, dict):
        if "@context" not in body and required:
            raise BadRequestData("an application/ld+json body must carry an @context member")
        return body.get("@context")
    if isinstance(body, list):
        # Batches: each entity carries its own @context; returned per item by the caller.
        return None
    raise BadRequestData("the body must be a JSON object or array")


def accept(request: Request, offered: tuple[str, ...] = (JSON, JSONLD, GEOJSON)) -> str:
    """The best offered media type for the Accept header (q-values honoured)."""
    header = request.headers.get("accept", "").strip()
    if not header:
        return offered[0]
    choices: list[tuple[float, int, str]] = []
    for position, part in enumerate(header.split(",")):
        fields = [f.strip() for f in part.split(";")]
        kind = fields[0].lower()
        quality = 1.0
        for f in fields[1:]:
            if f.startswith("q="):
                try:
                    quality = float(f[2:])
                except ValueError:
                    quality = 0.0
        choices.append((-quality, position, kind))
    for neg_quality, _, kind in sorted(choices):
        if neg_quality == 0:
            continue
        if kind in offered:
            return kind
        if kind in ("*/*", "application/*"):
            return offered[0]
    raise NotAcceptable(f"cannot answer with {header!r}; offered: {', '.join(offered)}")
