"""OGC API - Features sources (a water utility's flood sensors, ...): kind "ogcapi".

The conformance classes and the collection's metadata (its `crs` list, its items link) are
read first, then the items, page by page, by following the `next` links; all of it with httpx
through the outbound guard (twin/outbound.py), not OWSLib, whose requests would bypass it.
Some servers (pygeoapi among them) drop query parameters such as `f` or `bbox` from their
`next` links, so the parameters this connector sent are put back into each next link that
lacks them. A `crs` is asked for only where the server declares Part 2 (CRS by
reference) and lists that CRS for the collection; otherwise features come in CRS84, as Part 1
requires. The CRS of each page is read from its `Content-Crs` header.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from urbis.connectors.base import Connector, Cursor, Feature, Record, SourceUnavailable
from urbis.connectors.definition import SourceDefinition
from urbis.connectors.gml import crs_code
from urbis.twin.outbound import OutboundGuard, guarded_client

log = logging.getLogger("urbis.connectors.ogcapi")

CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
CONF_CRS = "http://www.opengis.net/spec/ogcapi-features-2/1.0/conf/crs"
MAX_PAGES = 100_000  # a server whose next links loop would otherwise never end a sync


class OgcApiOptions(BaseModel):
    """`[options]` of an "ogcapi" source."""

    model_config = ConfigDict(extra="forbid")

    collection: str = Field(min_length=1, description="the collection id")
    page_size: int = Field(default=1000, ge=1, le=100_000, description="`limit` per page")
    bbox: tuple[float, float, float, float] | None = Field(
        default=None, description="minLon, minLat, maxLon, maxLat (CRS84)"
    )
    crs: str | None = Field(
        default=None, description="ask for this CRS (e.g. EPSG:2154) where the server offers it"
    )
    key_property: str | None = Field(
        default=None, description="property holding the id; default: the feature's `id`"
    )
    query: dict[str, str] = Field(
        default_factory=dict, description="extra query parameters (queryables, e.g. status=ok)"
    )
    timeout: float = Field(default=60.0, gt=0, le=3600, description="seconds per request")

    @field_validator("bbox")
    @classmethod
    def _bbox_is_ordered(
        cls, value: tuple[float, float, float, float] | None
    ) -> tuple[float, float, float, float] | None:
        if value is not None:
            min_lon, min_lat, max_lon, max_lat = value
            if not (-180 <= min_lon <= max_lon <= 180 and -90 <= min_lat <= max_lat <= 90):
                raise ValueError(
                    "bbox must be [minLon, minLat, maxLon, maxLat] in degrees, min before max"
                )
        return value

    @field_validator("query")
    @classmethod
    def _query_is_not_paging(cls, value: dict[str, str]) -> dict[str, str]:
        reserved = {"limit", "offset", "bbox", "crs", "f"} & {k.lower() for k in value}
        if reserved:
            raise ValueError(
                f"query may not set {', '.join(sorted(reserved))}: use the options of the same "
                "name (paging is the connector's)"
            )
        return value


class OgcApiConnector(Connector):
    """Pulls every feature of one collection, following `next` links (always a full sync)."""

    kind: ClassVar[str] = "ogcapi"
    options_model: ClassVar[type[Any] | None] = OgcApiOptions

    def __init__(
        self,
        source: SourceDefinition,
        secret: str | None = None,
        *,
        guard: OutboundGuard | None = None,
    ) -> None:
        super().__init__(source, secret, guard=guard)
        if not source.endpoint or not source.endpoint.startswith(("http://", "https://")):
            raise ValueError(f"source {source.id!r}: endpoint must be the OGC API landing URL")
        self.endpoint = source.endpoint.rstrip("/")
        self.options = OgcApiOptions.model_validate(source.options)
        headers = {"Accept": "application/geo+json, application/json;q=0.9"}
        if secret:
            headers["Authorization"] = f"Bearer {secret}"
        self.http = guarded_client(self.guard, timeout=self.options.timeout, headers=headers)

    def close(self) -> None:
        self.http.close()

    # -- discovery ------------------------------------------------------------------------------

    def _discover(self) -> tuple[list[str], dict[str, Any]]:
        """(conformance classes, the collection's metadata)."""
        conformance = self._metadata(f"{self.endpoint}/conformance", missing_ok=True)
        collection = self._metadata(f"{self.endpoint}/collections/{self.options.collection}")
        return list(conformance.get("conformsTo") or []), collection

    def _metadata(self, url: str, missing_ok: bool = False) -> dict[str, Any]:
        try:
            response = self.http.get(url, params={"f": "json"})
        except httpx.HTTPError as e:
            raise SourceUnavailable(
                f"{self.endpoint} cannot be reached: {type(e).__name__}: {e}"
            ) from e
        if missing_ok and response.status_code == 404:
            return {}  # no /conformance: Part 1 only
        self._raise_for_status(url, response)
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError as e:
            raise SourceUnavailable(f"{url}: the answer is not JSON") from e
        if not isinstance(body, dict):
            raise SourceUnavailable(f"{url}: the answer is not a JSON object")
        return body

    def _raise_for_status(self, url: str, response: httpx.Response) -> None:
        if response.status_code >= 500 or response.status_code in {408, 429}:
            raise SourceUnavailable(f"{url}: HTTP {response.status_code}")
        if response.status_code == 404:
            raise ValueError(
                f"source {self.source.id!r}: collection {self.options.collection!r} does not "
                f"exist at {self.endpoint} (HTTP 404)"
            )
        if 400 <= response.status_code < 500 and response.status_code not in {408, 429}:
            raise ValueError(
                f"source {self.source.id!r}: {url} refused with HTTP {response.status_code}: "
                f"{response.text[:300]}"
            )

    def _crs_parameter(self, conformance: list[str], collection: Mapping[str, Any]) -> str | None:
        """The collection's own spelling of the wanted CRS, when the server can serve it."""
        wanted = crs_code(self.options.crs)
        if wanted is None or wanted == "OGC:CRS84":
            return None
        offered = [c for c in collection.get("crs") or [] if isinstance(c, str)]
        if CONF_CRS in conformance:
            for uri in offered:
                if crs_code(uri) == wanted:
                    return uri
        log.warning(
            "%s: %s does not offer %s for %s (offers %s): reading CRS84",
            self.source.id,
            self.endpoint,
            self.options.crs,
            self.options.collection,
            ", ".join(offered) or "nothing but CRS84",
        )
        return None

    def _items_url(self, collection: Mapping[str, Any]) -> str:
        for link in collection.get("links") or []:
            if link.get("rel") == "items" and "json" in str(link.get("type", "json")):
                return str(link["href"])
        return f"{self.endpoint}/collections/{self.options.collection}/items"

    # -- items ----------------------------------------------------------------------------------

    def fetch(self, cursor: Cursor) -> Iterator[Record]:
        conformance, collection = self._discover()
        crs = self._crs_parameter(conformance, collection)
        params: dict[str, str] = {"f": "json", "limit": str(self.options.page_size)}
        if self.options.bbox is not None:
            params["bbox"] = ",".join(repr(v) for v in self.options.bbox)
        if crs is not None:
            params["crs"] = crs
        params.update(self.options.query)
        url: str | None = with_params(self._items_url(collection), params, replace=True)
        cursor.full = True
        seen: set[str] = set()
        total = 0
        while url is not None:
            if url in seen or len(seen) >= MAX_PAGES:
                raise SourceUnavailable(f"{self.endpoint}: the next links loop at {url}")
            seen.add(url)
            page, page_crs = self._get(url)
            features = page.get("features") or []
            for item in features:
                yield self._feature(item, page_crs)
            total += len(features)
            url = next_link(page)
            if url is not None:
                url = with_params(url, params, replace=False)
            if not features:
                break
        cursor.state["features"] = total

    def _get(self, url: str) -> tuple[dict[str, Any], str]:
        try:
            response = self.http.get(url)
        except httpx.HTTPError as e:
            raise SourceUnavailable(f"{url} cannot be reached: {type(e).__name__}: {e}") from e
        if response.status_code >= 500 or response.status_code in {408, 429}:
            raise SourceUnavailable(f"{url}: HTTP {response.status_code}")
        if response.status_code >= 400:
            raise ValueError(
                f"source {self.source.id!r}: {url} refused with HTTP {response.status_code}: "
                f"{response.text[:300]}"
            )
        try:
            page = orjson.loads(response.content)
        except orjson.JSONDecodeError as e:
            raise SourceUnavailable(f"{url}: the items page is not JSON") from e
        header = response.headers.get("Content-Crs", "").strip().strip("<>")
        return page, crs_code(header) or "OGC:CRS84"

    def _feature(self, item: Mapping[str, Any], crs: str) -> Feature:
        properties = item.get("properties") or {}
        if self.options.key_property is not None:
            key = properties.get(self.options.key_property)
        else:
            key = item.get("id")
        return Feature(
            key=None if key is None else str(key),
            properties=properties,
            geometry=item.get("geometry"),
            crs=crs,
        )


def next_link(page: Mapping[str, Any]) -> str | None:
    """The page's `next` link (a JSON one when the server offers several formats)."""
    candidates = [
        link for link in page.get("links") or [] if link.get("rel") == "next" and link.get("href")
    ]
    for link in candidates:
        if "json" in str(link.get("type", "")):
            return str(link["href"])
    return str(candidates[0]["href"]) if candidates else None


def with_params(url: str, params: Mapping[str, str], *, replace: bool) -> str:
    """`url` with `params` added (all of them, or only those it lacks when not `replace`)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    for name, value in params.items():
        if replace or name not in query:
            query[name] = value
    return urlunsplit(parts._replace(query=urlencode(query)))
