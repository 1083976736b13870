"""OGC WFS 2.0 sources (a GIS department's street lights, parcels, ...): kind "wfs".

OWSLib parses the capabilities (feature types, output formats, the GetFeature URLs) and the
DescribeFeatureType schema (property types, to type GML text), which httpx fetches through the
outbound guard (twin/outbound.py; OWSLib's own requests would bypass it). GetFeature goes
through httpx too, one page at a time with COUNT/STARTINDEX: by KVP GET without a filter, by an
XML POST with one, because servers ignore a filter that OWSLib puts in a GET URL. GeoJSON is
asked for where the server lists it (it parses 5-10x faster than GML); GML 3.2 is read by
connectors.gml otherwise. Features come out in the CRS of the answer (its srsName / GeoJSON
`crs`), which the framework reprojects; a server that does not say falls back to the
definition's `crs`.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Literal

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from urbis.connectors.base import Connector, Cursor, Feature, Record, SourceUnavailable
from urbis.connectors.definition import SourceDefinition
from urbis.connectors.gml import GmlError, crs_code, north_first, parse_feature_collection
from urbis.twin.outbound import OutboundGuard, guarded_client

log = logging.getLogger("urbis.connectors.wfs")

WFS_NS = "http://www.opengis.net/wfs/2.0"
FES_NS = "http://www.opengis.net/fes/2.0"
POSITION = "@position"  # key_property value: the feature's position in the answer


class WfsOptions(BaseModel):
    """`[options]` of a "wfs" source."""

    model_config = ConfigDict(extra="forbid")

    typename: str = Field(min_length=1, description="feature type, with or without its prefix")
    page_size: int = Field(default=5000, ge=1, le=100_000, description="COUNT per GetFeature")
    format: Literal["auto", "geojson", "gml"] = Field(
        default="auto", description="auto: GeoJSON when the server lists it, else GML"
    )
    filter: str | None = Field(
        default=None, description="an FES 2.0 <fes:Filter> element, sent by POST"
    )
    key_property: str | None = Field(
        default=None,
        description="property holding the feature's id (default: the feature id); "
        f"{POSITION!r}: its position, for sources without ids (stable while their order is)",
    )
    srs_name: str | None = Field(
        default=None, description="ask for this CRS (e.g. EPSG:2154); default: the server's"
    )
    sort_by: str | None = Field(default=None, description="SORTBY, for stable paging")
    timeout: float = Field(default=60.0, gt=0, le=3600, description="seconds per request")

    @field_validator("filter")
    @classmethod
    def _filter_is_fes(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            element = ET.fromstring(value)
        except ET.ParseError as e:
            raise ValueError(f"filter is not well-formed XML: {e}") from e
        if element.tag != f"{{{FES_NS}}}Filter":
            raise ValueError(
                f'filter must be an <fes:Filter xmlns:fes="{FES_NS}"> element, not {element.tag}'
            )
        return value


class WfsConnector(Connector):
    """Pulls every feature of one feature type, page by page (always a full sync)."""

    kind: ClassVar[str] = "wfs"
    options_model: ClassVar[type[Any] | None] = WfsOptions

    def __init__(
        self,
        source: SourceDefinition,
        secret: str | None = None,
        *,
        guard: OutboundGuard | None = None,
    ) -> None:
        super().__init__(source, secret, guard=guard)
        if not source.endpoint or not source.endpoint.startswith(("http://", "https://")):
            raise ValueError(f"source {source.id!r}: endpoint must be the WFS http(s) URL")
        self.endpoint = source.endpoint
        self.options = WfsOptions.model_validate(source.options)
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        self.http = guarded_client(self.guard, timeout=self.options.timeout, headers=headers)

    def close(self) -> None:
        self.http.close()

    # -- discovery ------------------------------------------------------------------------------

    def _get_xml(self, request: str, **params: str) -> bytes:
        """A KVP request through the guarded client (OWSLib would fetch with requests, past
        the outbound guard): its body, or SourceUnavailable."""
        query = {"SERVICE": "WFS", "VERSION": "2.0.0", "REQUEST": request, **params}
        try:
            response = self.http.get(self.endpoint, params=query)
        except httpx.HTTPError as e:
            raise _unavailable(self.endpoint, e) from e
        if response.status_code >= 400:
            raise SourceUnavailable(
                f"{self.endpoint}: {request} answered HTTP {response.status_code}"
            )
        return response.content

    def _capabilities(self) -> Any:
        from owslib.wfs import WebFeatureService

        xml = self._get_xml("GetCapabilities")
        try:
            return WebFeatureService(self.endpoint, version="2.0.0", xml=xml)
        except Exception as e:  # lxml's or ElementTree's parse errors
            raise SourceUnavailable(f"{self.endpoint}: capabilities are not XML: {e}") from e

    def _typename(self, wfs: Any) -> str:
        names = list(wfs.contents)
        wanted = self.options.typename
        if wanted in names:
            return wanted
        matches = [n for n in names if n.split(":", 1)[-1] == wanted.split(":", 1)[-1]]
        if len(matches) == 1:
            return str(matches[0])
        raise ValueError(
            f"source {self.source.id!r}: feature type {wanted!r} is not offered by "
            f"{self.endpoint}; it offers {', '.join(names) or 'none'}"
        )

    def _output_format(self, wfs: Any, gml: bool = False) -> tuple[str, str | None]:
        """("geojson" | "gml", the outputFormat value to send)."""
        try:
            operation = wfs.getOperationByName("GetFeature")
            offered = list(operation.parameters.get("outputFormat", {}).get("values", []))
        except (KeyError, AttributeError):
            offered = []
        if self.options.format != "gml" and not gml:
            for value in offered:
                if "json" in value.lower():
                    return "geojson", value
            if self.options.format == "geojson":
                raise ValueError(
                    f"source {self.source.id!r}: format = 'geojson' but {self.endpoint} offers "
                    f"only {', '.join(offered) or 'no listed format'}"
                )
        for value in offered:
            if "3.2" in value and "gml" in value.lower():
                return "gml", value
        return "gml", None  # the WFS 2.0 default is GML 3.2

    def _post_url(self, wfs: Any) -> str:
        try:
            for method in wfs.getOperationByName("GetFeature").methods:
                if method.get("type", "").lower() == "post" and method.get("url"):
                    return str(method["url"])
        except (KeyError, AttributeError):
            pass
        return self.endpoint

    def _schema(self, typename: str) -> dict[str, str]:
        """Property name -> XSD type from DescribeFeatureType (to type GML values)."""
        from owslib.etree import etree
        from owslib.feature.schema import XS_NAMESPACE, _construct_schema, _get_elements

        # owslib's get_schema, minus its own (unguarded) fetch: same private helpers, pinned.
        try:
            root = etree.fromstring(self._get_xml("DescribeFeatureType", TYPENAME=typename))
            element = root.find(f"./{{{XS_NAMESPACE}}}element")
            schema = None
            if element is not None:
                elements = _get_elements(element.attrib["type"].split(":")[1], root)
                schema = _construct_schema(elements, getattr(root, "nsmap", None))
        except Exception as e:
            log.warning("%s: DescribeFeatureType failed (%s); GML values stay text", typename, e)
            return {}
        return dict((schema or {}).get("properties", {}))

    # -- GetFeature -----------------------------------------------------------------------------

    def _request(
        self, url: str, typename: str, fmt: str | None, start: int, count: int
    ) -> httpx.Response:
        o = self.options
        try:
            if o.filter is None:
                params = {
                    "SERVICE": "WFS",
                    "VERSION": "2.0.0",
                    "REQUEST": "GetFeature",
                    "TYPENAMES": typename,
                    "COUNT": str(count),
                    "STARTINDEX": str(start),
                }
                if fmt:
                    params["OUTPUTFORMAT"] = fmt
                if o.srs_name:
                    params["SRSNAME"] = o.srs_name
                if o.sort_by:
                    params["SORTBY"] = o.sort_by
                response = self.http.get(self.endpoint, params=params)
            else:
                body = get_feature_xml(typename, o.filter, fmt, start, count, o.srs_name, o.sort_by)
                response = self.http.post(
                    url, content=body, headers={"Content-Type": "application/xml"}
                )
        except httpx.HTTPError as e:
            raise _unavailable(self.endpoint, e) from e
        if response.status_code >= 500 or response.status_code in {408, 429}:
            raise SourceUnavailable(
                f"{self.endpoint}: GetFeature answered HTTP {response.status_code}"
            )
        if response.status_code >= 400:
            raise ValueError(
                f"source {self.source.id!r}: {self.endpoint} refused GetFeature with HTTP "
                f"{response.status_code}: {response.text[:300]}"
            )
        return response

    def fetch(self, cursor: Cursor) -> Iterator[Record]:
        wfs = self._capabilities()
        typename = self._typename(wfs)
        kind, fmt = self._output_format(wfs)
        url = self._post_url(wfs)
        cursor.full = True
        start, size = 0, min(self.options.page_size, _count_default(wfs) or self.options.page_size)
        types: dict[str, str] | None = None
        while True:
            if kind == "gml" and types is None:
                types = self._schema(typename)
            response = self._request(url, typename, fmt, start, size)
            features = self._parse(response.content, kind, types or {}, typename, start)
            if start == 0 and kind == "geojson" and self._ids_only_in_gml(features, url, typename):
                # MapServer's GeoJSON drops the gml_featureid: read GML, which keeps the ids.
                log.info("%s: GeoJSON has no feature ids, GML has: reading GML", self.source.id)
                kind, fmt = self._output_format(wfs, gml=True)
                continue
            yield from features
            start += len(features)
            if len(features) < size:
                break
        cursor.state["features"] = start
        log.info("%s: %d features from %s (%s)", self.source.id, start, typename, kind)

    def _ids_only_in_gml(self, features: list[Feature], url: str, typename: str) -> bool:
        """Whether GeoJSON came without ids that GML would give (probed with one feature)."""
        if self.options.format != "auto" or self.options.key_property is not None:
            return False
        if not features or any(f.key is not None for f in features):
            return False
        probe = self._request(url, typename, None, 0, 1)
        return any(f.key is not None for f in self._parse(probe.content, "gml", {}, typename, 0))

    # -- parsing --------------------------------------------------------------------------------

    def _key(
        self, fid: Any, properties: Mapping[str, Any], typename: str, position: int
    ) -> str | None:
        if self.options.key_property == POSITION:
            return str(position)
        if self.options.key_property is not None:
            value = properties.get(self.options.key_property)
            return None if value is None else str(value)
        if fid is None:
            return None
        text = str(fid)
        prefix = typename.split(":", 1)[-1] + "."  # MapServer and GeoServer: "<type>.<id>"
        return text[len(prefix) :] if text.startswith(prefix) else text

    def _parse(
        self, data: bytes, kind: str, types: Mapping[str, str], typename: str, start: int
    ) -> list[Feature]:
        if kind == "geojson" and not data.lstrip().startswith(b"<"):
            return self._parse_geojson(data, typename, start)
        try:
            page = parse_feature_collection(data, types)
        except GmlError as e:
            raise ValueError(f"source {self.source.id!r}: {e}") from e
        return [
            Feature(
                key=self._key(f.fid, f.properties, typename, start + i),
                properties=f.properties,
                geometry=f.geometry,
                crs=crs_code(f.srs_name) or self.source.crs,
            )
            for i, f in enumerate(page.features)
        ]

    def _parse_geojson(self, data: bytes, typename: str, start: int) -> list[Feature]:
        try:
            collection = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise ValueError(f"source {self.source.id!r}: GetFeature answer is not JSON") from e
        named = ((collection.get("crs") or {}).get("properties") or {}).get("name")
        crs = crs_code(named) or crs_code(self.options.srs_name) or self.source.crs
        swap = north_first(named)  # a GeoJSON that keeps a lat/lon CRS's axis order
        features = []
        for i, item in enumerate(collection.get("features") or []):
            properties = item.get("properties") or {}
            geometry = item.get("geometry")
            if swap and geometry is not None:
                geometry = _swap_xy(geometry)
            features.append(
                Feature(
                    key=self._key(item.get("id"), properties, typename, start + i),
                    properties=properties,
                    geometry=geometry,
                    crs=crs,
                )
            )
        return features


def get_feature_xml(
    typename: str,
    fes_filter: str,
    output_format: str | None,
    start: int,
    count: int,
    srs_name: str | None = None,
    sort_by: str | None = None,
) -> bytes:
    """A WFS 2.0 GetFeature request body (OWSLib's spells `outputformat` in lower case)."""
    ET.register_namespace("wfs", WFS_NS)
    ET.register_namespace("fes", FES_NS)
    root = ET.Element(
        f"{{{WFS_NS}}}GetFeature",
        {"service": "WFS", "version": "2.0.0", "count": str(count), "startIndex": str(start)},
    )
    if output_format:
        root.set("outputFormat", output_format)
    query = ET.SubElement(root, f"{{{WFS_NS}}}Query", {"typeNames": typename})
    if srs_name:
        query.set("srsName", srs_name)
    query.append(ET.fromstring(fes_filter))
    if sort_by:
        sort = ET.SubElement(query, f"{{{FES_NS}}}SortBy")
        for part in sort_by.split(","):
            name, _, order = part.strip().partition(" ")
            prop = ET.SubElement(sort, f"{{{FES_NS}}}SortProperty")
            ET.SubElement(prop, f"{{{FES_NS}}}ValueReference").text = name
            ET.SubElement(prop, f"{{{FES_NS}}}SortOrder").text = (order or "ASC").upper()
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return body


def _count_default(wfs: Any) -> int | None:
    """The server's CountDefault (its page cap): a larger COUNT would silently be cut to it."""
    constraints = getattr(wfs, "constraints", None) or {}
    constraint = constraints.get("CountDefault")
    values = getattr(constraint, "values", None) or [getattr(constraint, "value", None)]
    for value in values:
        try:
            return int(value) if value is not None and int(value) > 0 else None
        except (TypeError, ValueError):
            continue
    return None


def _swap_xy(geometry: Mapping[str, Any]) -> dict[str, Any]:
    def swap(c: Any) -> Any:
        if c and isinstance(c[0], (int, float)):
            return [c[1], c[0], *c[2:]]
        return [swap(x) for x in c]

    if geometry.get("type") == "GeometryCollection":
        return {**geometry, "geometries": [_swap_xy(g) for g in geometry.get("geometries", [])]}
    return {**geometry, "coordinates": swap(geometry.get("coordinates", []))}


def _unavailable(endpoint: str, error: Exception) -> SourceUnavailable:
    return SourceUnavailable(f"{endpoint} cannot be reached: {type(error).__name__}: {error}")
