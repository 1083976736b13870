"""Query-string parameters of the NGSI-LD API, parsed with precise errors (clause 6.3.x)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import QueryParams

from urbis.api.settings import Settings
from urbis.twin.errors import BadRequestData, TooComplexQuery, TooManyResults
from urbis.twin.geo import parse_geoq
from urbis.twin.model import check_uri
from urbis.twin.query.idpattern import compile_id_pattern
from urbis.twin.query.plan import EntityQuery, Selector
from urbis.twin.query.qlang import expand_q, parse_q
from urbis.twin.query.typeexpr import parse_types, type_size
from urbis.twin.terms import Terms

FORMATS = ("normalized", "concise", "keyValues")
RETRIEVE_OPTIONS = frozenset({"keyValues", "concise", "normalized", "sysAttrs"})


def options(params: QueryParams, allowed: frozenset[str]) -> set[str]:
    found: set[str] = set()
    for raw in params.getlist("options"):
        for item in raw.split(","):
            item = item.strip()
            if not item:
                continue
            if item not in allowed:
                raise BadRequestData(
                    f"unknown option {item!r}; allowed here: {', '.join(sorted(allowed))}"
                )
            found.add(item)
    return found


@dataclass
class Representation:
    form: str
    sys_attrs: bool
    lang: str | None


def representation(params: QueryParams) -> Representation:
    opts = options(params, RETRIEVE_OPTIONS)
    forms = [f for f in FORMATS if f in opts]
    fmt = params.get("format")
    if fmt is not None:
        if fmt not in FORMATS:
            raise BadRequestData(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
        forms.append(fmt)
    if len(set(forms)) > 1:
        raise BadRequestData(f"conflicting representations requested: {', '.join(forms)}")
    return Representation(
        form=forms[0] if forms else "normalized",
        sys_attrs="sysAttrs" in opts,
        lang=params.get("lang"),
    )


def name_list(params: QueryParams, key: str) -> list[str] | None:
    raw = params.getlist(key)
    if not raw:
        return None
    names = [n.strip() for item in raw for n in item.split(",") if n.strip()]
    if not names:
        raise BadRequestData(f"parameter {key!r} is empty")
    return names


def expanded_names(params: QueryParams, key: str, terms: Terms) -> set[str] | None:
    names = name_list(params, key)
    if names is None:
        return None
    return {n if n in ("id", "type", "scope") else terms.expand(n) for n in names}


# ASCII digits only: int() also takes '1_0', ' 1', '١'; 18 digits keep it a 64-bit integer.
_INTEGER = re.compile(r"-?[0-9]{1,18}")


def integer(params: QueryParams, key: str, default: int, *, minimum: int = 0) -> int:
    raw = params.get(key)
    if raw is None:
        return default
    if not _INTEGER.fullmatch(raw):
        raise BadRequestData(f"{key} must be an integer of at most 18 digits, got {raw[:40]!r}")
    value = int(raw)
    if value < minimum:
        raise BadRequestData(f"{key} must be >= {minimum}, got {value}")
    return value


def boolean(params: QueryParams, key: str) -> bool:
    raw = params.get(key)
    if raw is None:
        return False
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    raise BadRequestData(f"{key} must be true or false, got {raw!r}")


def entity_query(source: dict[str, Any], terms: Terms, settings: Settings) -> EntityQuery:
    """An EntityQuery from GET parameters or the body of POST /entityOperations/query."""
    query = EntityQuery()
    ids = source.get("id")
    if ids is not None:
        query.ids = [check_uri(i, "id") for i in ids]
    if source.get("idPattern") is not None:
        _check_regex(source["idPattern"])
        query.id_pattern = source["idPattern"]
    if source.get("type") is not None:
        query.types = parse_types(
            source["type"],
            terms.expand,
            max_terms=settings.max_query_terms,
            max_depth=settings.max_query_depth,
        )
    if source.get("attrs") is not None:
        query.attrs = {terms.expand(a) for a in source["attrs"]}
    q = source.get("q")
    if q is not None:
        query.q = expand_q(
            parse_q(
                q,
                max_length=settings.max_q_length,
                max_depth=settings.max_query_depth,
                max_terms=settings.max_query_terms,
            ),
            terms.expand,
            terms.expand_vocab,
        )
    geo = source.get("geoQ")
    if geo is not None:
        parsed = parse_geoq(
            geo.get("georel"), geo.get("geometry"), geo.get("coordinates"), geo.get("geoproperty")
        )
        if parsed is not None:
            from dataclasses import replace

            query.geo = replace(parsed, geoproperty=terms.expand(parsed.geoproperty))
    selectors = source.get("selectors")
    if selectors:
        query.selectors = _selectors(selectors, terms, settings.max_query_terms)
    if source.get("scopeQ") is not None:
        query.scope = str(source["scopeQ"])
    if not any(
        x is not None
        for x in (query.ids, query.id_pattern, query.types, query.attrs, query.q, query.geo)
    ) and not (source.get("local") or query.scope or query.selectors):
        raise BadRequestData(
            "a query needs at least one of: id, idPattern, type, attrs, q, geoQ (clause 5.7.2)"
        )
    query.limit = source.get("limit", settings.default_page_size)
    query.offset = source.get("offset", 0)
    query.count = bool(source.get("count"))
    if query.limit > settings.max_page_size:
        raise TooManyResults(
            f"limit {query.limit} is above the maximum page size {settings.max_page_size}"
        )
    if query.offset > settings.max_offset:  # the store is never asked for an absurd OFFSET
        raise BadRequestData(f"offset {query.offset} is above the maximum {settings.max_offset}")
    return query


def _selectors(raw: list[Any], terms: Terms, max_terms: int) -> list[Selector]:
    """The EntitySelectors, within max_terms: each counts its type names, or 1 without."""
    if len(raw) > max_terms:
        raise TooComplexQuery(f"{len(raw)} EntitySelectors; the limit is {max_terms}")
    selectors = [_selector(s, terms) for s in raw]
    total = sum(type_size(s.types) if s.types else 1 for s in selectors)
    if total > max_terms:
        raise TooComplexQuery(
            f"the EntitySelectors name {total} types; the limit is {max_terms} in all"
        )
    return selectors


def _selector(raw: Any, terms: Terms) -> Selector:
    if not isinstance(raw, dict) or not ({"id", "idPattern", "type"} & set(raw)):
        raise BadRequestData("each EntitySelector needs at least one of id, idPattern, type")
    ids = raw.get("id")
    id_list = ids if isinstance(ids, list) else [ids] if ids is not None else []
    pattern = raw.get("idPattern")
    if pattern is not None:
        _check_regex(pattern)
    return Selector(
        ids=tuple(check_uri(i, "EntitySelector id") for i in id_list),
        id_pattern=pattern,
        types=parse_types(raw["type"], terms.expand) if raw.get("type") else None,
    )


def _check_regex(pattern: object) -> None:
    compile_id_pattern(pattern)  # the subset that means the same to the store and to RE2


def query_source(params: QueryParams, settings: Settings) -> dict[str, Any]:
    """GET /entities parameters in the shape of a Query body."""
    source: dict[str, Any] = {
        "id": name_list(params, "id"),
        "idPattern": params.get("idPattern"),
        "type": params.get("type"),
        "attrs": name_list(params, "attrs"),
        "q": params.get("q"),
        "scopeQ": params.get("scopeQ"),
        "limit": integer(params, "limit", settings.default_page_size),
        "offset": integer(params, "offset", 0),
        "count": boolean(params, "count"),
        "local": boolean(params, "local"),
    }
    georel, geometry, coordinates = (params.get(k) for k in ("georel", "geometry", "coordinates"))
    if georel or geometry or coordinates:
        source["geoQ"] = {
            "georel": georel,
            "geometry": geometry,
            "coordinates": coordinates,
            "geoproperty": params.get("geoproperty"),
        }
    return source
