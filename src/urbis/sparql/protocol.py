"""SPARQL 1.1 Protocol, the HTTP side: where the query is, which dataset, which format.

Kept apart from the route so that the route only strings these together (W3C SPARQL 1.1
Protocol, sections 2.1 query operation and 2.2 update operation; Service Description 1.1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from pyoxigraph import NamedNode, QueryResultsFormat, RdfFormat
from starlette.requests import Request

from urbis.twin.errors import BadRequestData, NotAcceptable, PayloadTooLarge, UnsupportedMediaType

FORM = "application/x-www-form-urlencoded"
QUERY_TYPE = "application/sparql-query"
UPDATE_TYPE = "application/sparql-update"
SD_TYPE = "text/turtle"
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": (
        "Accept, Content-Type, Authorization, NGSILD-Tenant, Fiware-Service"
    ),
    "Access-Control-Max-Age": "86400",
}

Format = QueryResultsFormat | RdfFormat
# Media types each kind of answer can take, in the server's order of preference (the first is
# the answer to `*/*` or no Accept header).
SOLUTION_TYPES: dict[str, QueryResultsFormat] = {
    "application/sparql-results+json": QueryResultsFormat.JSON,
    "application/sparql-results+xml": QueryResultsFormat.XML,
    "text/csv": QueryResultsFormat.CSV,
    "text/tab-separated-values": QueryResultsFormat.TSV,
    "application/json": QueryResultsFormat.JSON,
    "application/xml": QueryResultsFormat.XML,
    "text/xml": QueryResultsFormat.XML,
}
BOOLEAN_TYPES = {
    k: v
    for k, v in SOLUTION_TYPES.items()
    if v in (QueryResultsFormat.JSON, QueryResultsFormat.XML)
}
GRAPH_TYPES: dict[str, RdfFormat] = {
    "text/turtle": RdfFormat.TURTLE,
    "application/n-triples": RdfFormat.N_TRIPLES,
    "application/ld+json": RdfFormat.JSON_LD,
    "application/n-quads": RdfFormat.N_QUADS,
    "application/trig": RdfFormat.TRIG,
    "application/rdf+xml": RdfFormat.RDF_XML,
    "text/plain": RdfFormat.N_TRIPLES,
    "application/x-turtle": RdfFormat.TURTLE,
}
ALL_TYPES = {**SOLUTION_TYPES, **GRAPH_TYPES}

_PROLOGUE = re.compile(
    r"""\A(?:\s+|\#[^\n]*(?:\n|\Z)|BASE\s*<[^>]*>|PREFIX\s*[^\s:]*:\s*<[^>]*>)*""",
    re.IGNORECASE,
)
_UPDATE_KEYWORD = re.compile(
    r"(INSERT|DELETE|LOAD|CLEAR|DROP|CREATE|ADD|MOVE|COPY|WITH)\b", re.IGNORECASE
)


@dataclass
class Operation:
    """One protocol request: the query (or update) text and the dataset it names."""

    text: str | None
    is_update: bool = False
    default_graphs: list[str] = field(default_factory=list)
    named_graphs: list[str] = field(default_factory=list)


def looks_like_update(text: str) -> bool:
    """Whether the text, past its prologue, starts with an update keyword."""
    rest = text[_PROLOGUE.match(text).end() :]  # type: ignore[union-attr]
    return _UPDATE_KEYWORD.match(rest) is not None


async def read_operation(request: Request, *, max_length: int, max_body: int) -> Operation:
    """The query or update of a GET or POST in any of the protocol's three forms."""
    params = parse_qs(request.url.query, keep_blank_values=True)
    if request.method == "POST":
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body = await request.body()
        if len(body) > max_body:
            raise PayloadTooLarge(f"the request body exceeds {max_body} bytes")
        if kind == FORM:
            form = parse_qs(_decode(body), keep_blank_values=True)
            for key, values in form.items():
                params.setdefault(key, []).extend(values)
        elif kind in (QUERY_TYPE, UPDATE_TYPE):
            key = "query" if kind == QUERY_TYPE else "update"
            params.setdefault(key, []).append(_decode(body))
        else:
            raise UnsupportedMediaType(
                f"POST a query as {QUERY_TYPE} or {FORM} (query=...), an update as "
                f"{UPDATE_TYPE} or {FORM} (update=...); got {kind or 'no Content-Type'}"
            )
    queries, updates = params.get("query", []), params.get("update", [])
    if len(queries) + len(updates) > 1:
        raise BadRequestData("send exactly one 'query' or one 'update' per request")
    text = next(iter(queries or updates), None)
    if text is not None and len(text) > max_length:
        raise PayloadTooLarge(
            f"the SPARQL text has {len(text)} characters; at most {max_length} are accepted "
            "(URBIS_SPARQL_MAX_QUERY_LENGTH)"
        )
    operation = Operation(text=text, is_update=bool(updates))
    for key, target in (
        ("default-graph-uri", operation.default_graphs),
        ("named-graph-uri", operation.named_graphs),
        ("using-graph-uri", operation.default_graphs),
        ("using-named-graph-uri", operation.named_graphs),
    ):
        for iri in params.get(key, []):
            target.append(_graph_iri(key, iri))
    return operation


def _decode(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadRequestData(f"the request body is not UTF-8: {error}") from None


def _graph_iri(key: str, value: str) -> str:
    try:
        return NamedNode(value).value
    except ValueError as error:
        raise BadRequestData(f"{key} {value!r} is not an absolute IRI: {error}") from None


# -- content negotiation -----------------------------------------------------------------------


def _accepted(header: str) -> list[tuple[str, float, int]]:
    """(media range, q, position) for each entry of an Accept header."""
    ranges: list[tuple[str, float, int]] = []
    for position, item in enumerate(header.split(",")):
        parts = [p.strip() for p in item.split(";")]
        if not parts[0]:
            continue
        q = 1.0
        for param in parts[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        ranges.append((parts[0].lower(), q, position))
    return ranges


def _quality(media_type: str, ranges: list[tuple[str, float, int]]) -> tuple[float, int]:
    """The q of the most specific range matching `media_type` (RFC 9110, 12.5.1)."""
    best: tuple[int, float, int] | None = None
    main = media_type.split("/")[0]
    for range_, q, position in ranges:
        if range_ == media_type:
            specificity = 3
        elif range_ == main + "/*":
            specificity = 2
        elif range_ == "*/*":
            specificity = 1
        else:
            continue
        if best is None or specificity > best[0]:
            best = (specificity, q, position)
    return (0.0, 0) if best is None else (best[1], -best[2])


def negotiate(accept: str | None, offers: dict[str, Format]) -> tuple[str, Format]:
    """The offered media type the client prefers; NotAcceptable when none is acceptable."""
    if not accept or not accept.strip():
        return next(iter(offers.items()))
    ranges = _accepted(accept)
    scored = [
        (_quality(media_type, ranges), -order, media_type)
        for order, media_type in enumerate(offers)
    ]
    (q, _), _, media_type = max(scored)
    if q <= 0:
        raise NotAcceptable(
            f"none of {accept!r} can be produced for this query; acceptable: " + ", ".join(offers)
        )
    return media_type, offers[media_type]


def acceptable_at_all(accept: str | None) -> None:
    """Refuse before running a query whose answer no Accept entry could take."""
    if accept:
        negotiate(accept, ALL_TYPES)  # type: ignore[arg-type]


def content_type(fmt: Format) -> str:
    """The response Content-Type: an alias (application/json) resolves to the format's type."""
    media_type: str = fmt.media_type
    return media_type


# -- service description ----------------------------------------------------------------------

_FORMAT_IRIS = (
    "SPARQL_Results_JSON",
    "SPARQL_Results_XML",
    "SPARQL_Results_CSV",
    "SPARQL_Results_TSV",
    "Turtle",
    "N-Triples",
    "JSON-LD",
    "N-Quads",
    "TriG",
    "RDF_XML",
)


def service_description(
    endpoint: str, graphs: list[str], functions: list[str], max_rows: int, timeout: float
) -> str:
    """SPARQL 1.1 Service Description of /sparql (and its update path) in Turtle."""
    formats = ", ".join(f"formats:{name}" for name in _FORMAT_IRIS)
    named = "".join(
        f"\n        sd:namedGraph [ a sd:NamedGraph ; sd:name <{g}> ] ;" for g in graphs
    )
    extensions = "".join(f"\n    sd:extensionFunction <{f}> ;" for f in sorted(functions))
    return f"""@prefix sd: <http://www.w3.org/ns/sparql-service-description#> .
@prefix formats: <http://www.w3.org/ns/formats/> .
@prefix rdfs: <http://www.w3.org/2000/01/rdf-schema#> .
@prefix xsd: <http://www.w3.org/2001/XMLSchema#> .

<{endpoint}#service> a sd:Service ;
    sd:endpoint <{endpoint}> ;
    sd:supportedLanguage sd:SPARQL10Query, sd:SPARQL11Query ;
    sd:resultFormat {formats} ;
    sd:feature sd:UnionDefaultGraph ;{extensions}
    rdfs:comment "Urbis digital twin. Answers stop after {timeout:g} s and hold at most \
{max_rows} rows or triples; the default graph is the union of the named graphs." ;
    sd:defaultDataset [
        a sd:Dataset ;
        sd:defaultGraph [ a sd:Graph ] ;{named}
    ] .

<{endpoint}/update#service> a sd:Service ;
    sd:endpoint <{endpoint}/update> ;
    sd:supportedLanguage sd:SPARQL11Update ;
    rdfs:comment "Admin only (Authorization: Bearer <admin token>)." .
"""
