"""A vendor's NGSI-LD broker, pulled by query: kind "ngsild".

`GET /ngsi-ld/v1/entities?type=...&limit=...&offset=...&count=true`, page by page, in the
vendor's @context (a Link header) and tenant (NGSILD-Tenant). Entities are passed on as they
are, with the @context they came in, for the framework to expand and upsert.

Broker quirks handled (each is an option where brokers disagree):
- limit caps differ (Orion-LD 1000, Stellio 100 by default, Urbis URBIS_MAX_PAGE_SIZE): a limit
  the broker refuses (400/403 naming the limit) is retried once at 100; a broker that silently
  returns fewer than asked is paged on until `NGSILD-Results-Count` is reached.
- the total comes in `NGSILD-Results-Count` (count=true); without it paging stops on a short page.
- Stellio and Urbis refuse a query with no type, attrs or q (ETSI GS CIM 009 5.7.2): so does
  the validation of the options, before any request.
- `Accept: application/ld+json` puts the @context in each entity; `application/json` puts it in
  a Link response header, read here. No Link header is ever sent with a body (Orion-LD refuses
  Link with application/ld+json): this connector only sends GETs.
- Incremental pulls: NGSI-LD has no modifiedSince on /entities and the entity's own modifiedAt
  is not a q target, but an attribute's `modifiedAt` is: `q=attr.modifiedAt>=<DateTime>`, the
  DateTime unquoted (clause 4.9; quoted, it is a string and matches nothing). With
  `changed_attribute` set, the cursor keeps the latest modifiedAt seen (asked with
  options=sysAttrs) and the next run asks only for entities changed since (>=: the boundary
  entities come again, which an idempotent upsert absorbs). Such runs set `cursor.full = False`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any, ClassVar, Literal

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from urbis.connectors.base import Connector, Cursor, NgsiEntity, Record, SourceUnavailable
from urbis.connectors.definition import SourceDefinition
from urbis.twin.errors import BadRequestData
from urbis.twin.linkheader import parse_links
from urbis.twin.outbound import OutboundGuard, guarded_client

log = logging.getLogger("urbis.connectors.ngsild")

JSONLD_CONTEXT_REL = "http://www.w3.org/ns/json-ld#context"
FALLBACK_LIMIT = 100  # the smallest common cap (Stellio's default)
_SINCE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


class NgsiLdOptions(BaseModel):
    """`[options]` of an "ngsild" source."""

    model_config = ConfigDict(extra="forbid")

    type: str | None = Field(default=None, description="entity type (a term of `context`)")
    attrs: list[str] | None = Field(default=None, description="only these attributes")
    q: str | None = Field(default=None, description="an NGSI-LD q filter")
    context: str | None = Field(
        default=None, description="the vendor's @context URL, sent as a Link header"
    )
    tenant: str | None = Field(default=None, description="NGSILD-Tenant header")
    page_size: int = Field(default=100, ge=1, le=10_000, description="limit per page")
    accept: Literal["application/ld+json", "application/json"] = "application/ld+json"
    count: bool = Field(default=True, description="ask for NGSILD-Results-Count (count=true)")
    changed_attribute: str | None = Field(
        default=None, description="attribute whose modifiedAt drives incremental pulls"
    )
    timeout: float = Field(default=30.0, gt=0, le=3600, description="seconds per request")

    @model_validator(mode="after")
    def _needs_a_selector(self) -> NgsiLdOptions:
        if not (self.type or self.attrs or self.q):
            raise ValueError(
                "set type, attrs or q: brokers (Stellio, Urbis) refuse a query without one "
                "(ETSI GS CIM 009 clause 5.7.2)"
            )
        return self


class NgsiLdConnector(Connector):
    """Pulls a vendor broker's entities by query, page by page."""

    kind: ClassVar[str] = "ngsild"
    options_model: ClassVar[type[Any] | None] = NgsiLdOptions

    def __init__(
        self,
        source: SourceDefinition,
        secret: str | None = None,
        *,
        guard: OutboundGuard | None = None,
    ) -> None:
        super().__init__(source, secret, guard=guard)
        if not source.endpoint or not source.endpoint.startswith(("http://", "https://")):
            raise ValueError(
                f"source {source.id!r}: endpoint must be the broker's base URL "
                "(e.g. http://broker:1026, without /ngsi-ld/v1)"
            )
        self.base = source.endpoint.rstrip("/").removesuffix("/ngsi-ld/v1")
        self.options = NgsiLdOptions.model_validate(source.options)
        self.limit = self.options.page_size
        self.http = guarded_client(
            self.guard, timeout=self.options.timeout, headers=self._headers()
        )

    def close(self) -> None:
        self.http.close()

    def _headers(self) -> dict[str, str]:
        headers: dict[str, str] = {"Accept": self.options.accept}
        if self.options.context:
            headers["Link"] = (
                f'<{self.options.context}>; rel="{JSONLD_CONTEXT_REL}"; type="application/ld+json"'
            )
        if self.options.tenant:
            headers["NGSILD-Tenant"] = self.options.tenant
        if self.secret:
            headers["Authorization"] = f"Bearer {self.secret}"
        return headers

    def _query(self, since: str | None) -> dict[str, str]:
        o = self.options
        params: dict[str, str] = {}
        if o.type:
            params["type"] = o.type
        if o.attrs:
            params["attrs"] = ",".join(o.attrs)
        if since is not None and o.changed_attribute:
            changed = f"{o.changed_attribute}.modifiedAt>={since}"  # DateTime: unquoted
            params["q"] = f"({o.q});{changed}" if o.q else changed
        elif o.q:
            params["q"] = o.q
        if o.changed_attribute:
            params["options"] = "sysAttrs"
        if o.count:
            params["count"] = "true"
        return params

    def fetch(self, cursor: Cursor) -> Iterator[Record]:
        since = cursor.state.get("modifiedSince") if self.options.changed_attribute else None
        if since is not None and not (isinstance(since, str) and _SINCE.match(since)):
            log.warning("%s: cursor modifiedSince %r unusable: full pull", self.source.id, since)
            since = None
        cursor.full = since is None
        params = self._query(since)
        offset, total, latest = 0, None, since
        while True:
            response = self._get({**params, "limit": str(self.limit), "offset": str(offset)})
            entities = _entities(response, self.source.id)
            if total is None and "NGSILD-Results-Count" in response.headers:
                total = _int(response.headers["NGSILD-Results-Count"])
            link_context = _link_context(response.headers.get("Link", ""), self.source.id)
            for entity in entities:
                context = entity.pop("@context", None) or link_context or self.options.context
                latest = _later(latest, self._modified_at(entity))
                yield NgsiEntity(entity, context)
            offset += len(entities)
            if not entities or (total is not None and offset >= total):
                break
            if total is None and len(entities) < self.limit:
                break
        if total is not None and offset < total:
            log.warning("%s: broker stopped at %d of %d entities", self.source.id, offset, total)
        cursor.state["entities"] = offset
        if self.options.changed_attribute and latest is not None:
            cursor.state["modifiedSince"] = latest

    def _modified_at(self, entity: Mapping[str, Any]) -> str | None:
        attribute = self.options.changed_attribute
        if attribute is None:
            return None
        value = entity.get(attribute)
        instances = value if isinstance(value, list) else [value]
        stamps = [
            i["modifiedAt"]
            for i in instances
            if isinstance(i, Mapping) and isinstance(i.get("modifiedAt"), str)
        ]
        return max(stamps) if stamps else None

    def _get(self, params: Mapping[str, str]) -> httpx.Response:
        url = f"{self.base}/ngsi-ld/v1/entities"
        try:
            response = self.http.get(url, params=params)
        except httpx.HTTPError as e:
            raise SourceUnavailable(f"{url} cannot be reached: {type(e).__name__}: {e}") from e
        if response.status_code >= 500 or response.status_code in {408, 429}:
            raise SourceUnavailable(f"{url}: HTTP {response.status_code} {response.text[:200]}")
        if response.status_code in {400, 403} and self._limit_refused(response):
            log.info(
                "%s: broker refuses limit %d, using %d", self.source.id, self.limit, FALLBACK_LIMIT
            )
            self.limit = FALLBACK_LIMIT
            return self._get({**params, "limit": str(self.limit)})
        if response.status_code >= 400:
            raise ValueError(
                f"source {self.source.id!r}: the broker refused the query with HTTP "
                f"{response.status_code}: {response.text[:300]}"
            )
        return response

    def _limit_refused(self, response: httpx.Response) -> bool:
        text = response.text.lower()
        return self.limit > FALLBACK_LIMIT and ("limit" in text or "toomanyresults" in text)


def _entities(response: httpx.Response, source_id: str) -> list[dict[str, Any]]:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError as e:
        raise SourceUnavailable(f"{response.url}: the broker's answer is not JSON") from e
    if not isinstance(body, list) or not all(isinstance(e, dict) for e in body):
        raise ValueError(f"source {source_id!r}: the broker's answer is not an entity array")
    return body


def _link_context(header: str, source_id: str) -> str | None:
    """The @context URL of a Link response header (application/json answers), read by the
    linear parser the API uses (a regex here was quadratic on a hostile broker's header)."""
    try:
        links = parse_links(header)
    except BadRequestData as e:  # the broker's fault, not a client's: no 400 from here
        raise ValueError(f"source {source_id!r}: the broker's Link header: {e.detail}") from None
    return next((url.strip() for url, rels in links if JSONLD_CONTEXT_REL in rels), None)


def _later(a: str | None, b: str | None) -> str | None:
    """The later of two ISO 8601 instants (compared as times: fractions vary by broker)."""
    if a is None or b is None:
        return a or b
    try:
        return a if datetime.fromisoformat(a) >= datetime.fromisoformat(b) else b
    except ValueError:
        return a


def _int(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None
