"""The OpenAPI description of every operation: parameters, bodies, media types, problems.

The routes read the raw request on purpose (one parse, no pydantic model per request), so
FastAPI cannot infer what they take. This module says it, keyed by (method, path), and
`install` makes `/openapi.json` serve it. `missing` lists routes without a description: a test
keeps it empty, so that a new route cannot forget its own.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from urbis.api.errors import PROBLEM
from urbis.api.http import CONTEXT_REL, CORE_CONTEXT, GEOJSON, JSON, JSONLD, MERGE_PATCH
from urbis.api.settings import Settings
from urbis.connectors.definition import SourceDefinition
from urbis.ngsild.subscriptions import ENDPOINT_MEMBERS, KNOWN_MEMBERS, NOTIFICATION_MEMBERS
from urbis.sparql.protocol import ALL_TYPES, FORM, QUERY_TYPE, UPDATE_TYPE
from urbis.twin.dumps import FORMATS
from urbis.twin.geo.query import QUERY_GEOMETRIES

Schema = dict[str, Any]
# The examples name these; tests seed them, so that examples reach real data.
EXAMPLE_ID, EXAMPLE_TENANT = "urn:ngsi-ld:Streetlight:openapi-1", "city"


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


# -- schemas: true of every request the server takes and every answer it gives ---------------

_STRINGS: Schema = {"type": "array", "items": {"type": "string"}}
_TEXT: Schema = {"type": "string", "minLength": 1}
# Attribute and type names, as twin.model.check_name takes them: no JSON-LD keyword, no space,
# control character or any of <>"'=;(){}|\^` (an IRI is a name too).
_NAME_CHARS = r"""\s\x00-\x1f\x7f<>"'=;(){}|\\^`"""
NAME_PATTERN = f"^[^@{_NAME_CHARS}][^{_NAME_CHARS}]*$"
_NAME: Schema = {"type": "string", "pattern": NAME_PATTERN}
_MEMBER_NAMES: Schema = {"anyOf": [{"const": "@context"}, _NAME]}
_CONTEXT: Schema = {
    "description": "JSON-LD @context: a URL, an inline object or an array of both",
    "anyOf": [{"type": "string"}, {"type": "object"}, {"type": "array"}],
}
_INSTANCE: Schema = {
    "type": "object",
    "description": "One attribute instance in normalized form; sub-attributes beside value",
    "required": ["type"],
    "properties": {
        "type": {
            "enum": [
                "Property",
                "Relationship",
                "GeoProperty",
                "LanguageProperty",
                "VocabProperty",
                "ListProperty",
                "ListRelationship",
                "JsonProperty",
            ]
        },
        "value": {},
        "object": {},
        "languageMap": {"type": "object"},
        "vocab": {},
        "json": {},
        "observedAt": {"type": "string", "format": "date-time"},
        "unitCode": {"type": "string"},
        "datasetId": {"type": "string", "format": "uri"},
    },
}
_SELECTOR: Schema = {
    "type": "object",
    "description": "EntitySelector: at least one of id, idPattern, type",
    "properties": {
        "id": {"type": "string", "format": "uri"},
        "idPattern": {
            "type": "string",
            "description": "Regular expression that some part of the id must match "
            "(^...$ for the whole id), as in entity queries (docs/matching.md)",
        },
        "type": {"type": "string", "minLength": 1},
    },
    "anyOf": [{"required": [k]} for k in ("id", "idPattern", "type")],
}
_REG_SELECTOR: Schema = {  # a registration's: its type is required (clause 5.2.8)
    **_SELECTOR,
    "required": ["type"],
    "additionalProperties": False,
}
_GEOQ: Schema = {
    "type": "object",
    "required": ["georel", "geometry", "coordinates"],
    "properties": {
        "georel": {"type": "string", "example": "near;maxDistance==500"},
        "geometry": {"enum": list(QUERY_GEOMETRIES)},
        "coordinates": {"anyOf": [{"type": "array"}, {"type": "string"}]},
        "geoproperty": {"type": "string"},
    },
}
_ANY_OBJECT: Schema = {"type": "object"}

SCHEMAS: dict[str, Schema] = {
    "ProblemDetails": {
        "type": "object",
        "description": "RFC 7807 problem; type is an NGSI-LD error type URI (clause 5.5.2)",
        "required": ["type", "title"],
        "properties": {
            "type": {"type": "string", "format": "uri"},
            "title": {"type": "string"},
            "detail": {"type": "string"},
            "status": {"type": "integer"},
        },
    },
    "LdContext": _CONTEXT,
    "EntityType": {
        "description": "A type name (term or IRI), or several",
        "anyOf": [_NAME, {"type": "array", "items": _NAME, "minItems": 1}],
    },
    "AttributeInstance": _INSTANCE,
    "Attribute": {
        "description": "Normalized instance(s) or, in concise form, the value itself",
        "anyOf": [
            _ref("AttributeInstance"),
            {"type": "array", "items": _ref("AttributeInstance"), "minItems": 1},
            {"type": ["string", "number", "boolean"]},
        ],
    },
    "Entity": {
        "type": "object",
        "description": "An NGSI-LD entity: id, type and attributes named by terms or IRIs",
        "required": ["id", "type"],
        "properties": {
            "id": {"type": "string", "format": "uri"},
            "type": _ref("EntityType"),
            "scope": {"anyOf": [{"type": "string"}, _STRINGS]},
            "@context": _ref("LdContext"),
        },
        "propertyNames": _MEMBER_NAMES,
        "additionalProperties": _ref("Attribute"),
        "example": {
            "id": "urn:ngsi-ld:Streetlight:example",
            "type": "Streetlight",
            "status": {"type": "Property", "value": "on"},
            "location": {
                "type": "GeoProperty",
                "value": {"type": "Point", "coordinates": [2.35, 48.85]},
            },
        },
    },
    "EntityReplacement": {
        "type": "object",
        "description": "The entity's new content; its id, if given, is the URL's",
        "required": ["type"],
        "properties": {
            "id": {"type": "string", "format": "uri"},
            "type": _ref("EntityType"),
            "scope": {"anyOf": [{"type": "string"}, _STRINGS]},
            "@context": _ref("LdContext"),
        },
        "propertyNames": _MEMBER_NAMES,
        "additionalProperties": _ref("Attribute"),
        "example": {"type": "Streetlight", "status": {"type": "Property", "value": "off"}},
    },
    "EntityFragment": {
        "type": "object",
        "description": "Attributes to add, update or merge (urn:ngsi-ld:null deletes in merges)",
        "properties": {"@context": _ref("LdContext")},
        "propertyNames": _MEMBER_NAMES,
        "additionalProperties": _ref("Attribute"),
        "example": {"status": {"type": "Property", "value": "off"}},
    },
    "EntityOut": {
        "type": "object",
        "description": "An entity in the representation asked for (normalized, concise, "
        "keyValues); pick/omit may leave out id and type",
        "properties": {
            "id": {"type": "string"},
            "type": {"anyOf": [{"type": "string"}, _STRINGS]},
            "@context": _ref("LdContext"),
        },
    },
    "FeatureCollection": {
        "type": "object",
        "required": ["type", "features"],
        "properties": {
            "type": {"const": "FeatureCollection"},
            "features": {"type": "array", "items": _ref("Feature")},
        },
    },
    "Feature": {
        "type": "object",
        "required": ["type", "geometry", "properties"],
        "properties": {
            "id": {"type": "string"},
            "type": {"const": "Feature"},
            "geometry": {"type": ["object", "null"]},
            "properties": {"type": "object"},
        },
    },
    "UpdateResult": {
        "type": "object",
        "properties": {
            "updated": _STRINGS,
            "notUpdated": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "attributeName": {"type": "string"},
                        "reason": {"type": "string"},
                    },
                },
            },
        },
    },
    "BatchOperationResult": {
        "type": "object",
        "required": ["success", "errors"],
        "properties": {
            "success": _STRINGS,
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "entityId": {"type": ["string", "null"]},
                        "error": _ref("ProblemDetails"),
                    },
                },
            },
        },
    },
    "Query": {
        "type": "object",
        "required": ["type"],
        "properties": {
            "type": {"const": "Query"},
            "entities": {"type": "array", "items": _SELECTOR},
            "attrs": _STRINGS,
            "q": {"type": "string"},
            "geoQ": _GEOQ,
            "scopeQ": {"type": "string"},
            "local": {"type": "boolean"},
            "@context": _ref("LdContext"),
        },
        "anyOf": [{"required": [k]} for k in ("entities", "attrs", "q", "geoQ", "scopeQ")]
        + [{"required": ["local"], "properties": {"local": {"const": True}}}],
        "example": {"type": "Query", "entities": [{"type": "Streetlight"}]},
    },
    "Subscription": {
        "type": "object",
        "description": "Clause 5.2.12; receiverInfo and endpoint are shown to the admin only",
        "required": ["type", "notification"],
        "anyOf": [{"required": ["entities"]}, {"required": ["watchedAttributes"]}],
        "propertyNames": {"enum": sorted(KNOWN_MEMBERS)},
        "properties": {
            "id": {"type": "string", "format": "uri"},
            "type": {"const": "Subscription"},
            "entities": {"type": "array", "items": _SELECTOR, "minItems": 1},
            "watchedAttributes": _STRINGS,
            "q": {"type": "string"},
            "geoQ": _GEOQ,
            "notification": {
                "type": "object",
                "required": ["endpoint"],
                "propertyNames": {"enum": sorted(NOTIFICATION_MEMBERS)},
                "properties": {
                    "attributes": _STRINGS,
                    "format": {"type": "string"},
                    "endpoint": {
                        "type": "object",
                        "required": ["uri"],
                        "propertyNames": {"enum": sorted(ENDPOINT_MEMBERS)},
                        "properties": {"uri": {"type": "string"}, "accept": {"type": "string"}},
                    },
                },
            },
            "expiresAt": {"type": "string", "format": "date-time"},
            "throttling": {"type": "number", "minimum": 0},
            "timeInterval": {"type": "number", "minimum": 0},
            "isActive": {"type": "boolean"},
            "@context": _ref("LdContext"),
        },
        "example": {
            "type": "Subscription",
            "entities": [{"type": "Streetlight"}],
            "notification": {"endpoint": {"uri": "http://127.0.0.1:9/notify"}},
        },
    },
    "SubscriptionPatch": {
        "type": "object",
        "description": "Members replacing the subscription's (merge-patch)",
        "propertyNames": {"enum": sorted(KNOWN_MEMBERS)},
        "example": {"isActive": False},
    },
    "CSourceRegistration": {
        "type": "object",
        "description": "Clause 5.2.9; contextSourceInfo values are shown to the admin only",
        "required": ["type", "information", "endpoint"],
        "properties": {
            "id": {"type": "string", "format": "uri"},
            "type": {"const": "ContextSourceRegistration"},
            "information": {"type": "array", "items": _ref("RegistrationInfo"), "minItems": 1},
            "endpoint": {"type": "string"},
            "mode": {"enum": ["inclusive", "exclusive", "redirect", "auxiliary"]},
            "operations": _STRINGS,
            "contextSourceInfo": {"type": "array", "items": _ANY_OBJECT},
            "@context": _ref("LdContext"),
        },
        "example": {
            "type": "ContextSourceRegistration",
            "information": [{"entities": [{"type": "Bench"}]}],
            "endpoint": "http://127.0.0.1:9",
        },
    },
    "RegistrationInfo": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "entities": {"type": "array", "items": _REG_SELECTOR, "minItems": 1},
            "propertyNames": {"type": "array", "items": _NAME, "minItems": 1},
            "relationshipNames": {"type": "array", "items": _NAME, "minItems": 1},
        },
        "anyOf": [{"required": [k]} for k in ("entities", "propertyNames", "relationshipNames")],
    },
    "CSourceRegistrationPatch": {
        "type": "object",
        "description": "Members replacing the registration's",
        "example": {"mode": "inclusive"},
    },
    "ContextDocument": {
        "type": "object",
        "required": ["@context"],
        "properties": {"@context": {"type": ["object", "array"]}},  # hosted: not a bare URL
        "example": {"@context": {"Bench": "https://smartdatamodels.org/dataModel.Bench/Bench"}},
    },
    "Health": {
        "type": "object",
        "required": ["status", "store"],
        "properties": {"status": {"const": "ok"}, "store": {"type": "string"}},
    },
}

# A source definition is a pydantic model: its own JSON schema is the true one.
_SOURCE = SourceDefinition.model_json_schema(ref_template="#/components/schemas/{model}")
SCHEMAS.update(_SOURCE.pop("$defs", {}), SourceDefinition=_SOURCE)

_LIST_OUT: Schema = {"type": "array", "items": _ANY_OBJECT}
_ENTITIES_OUT: Schema = {"type": "array", "items": _ref("EntityOut")}
_URLS_OR_OBJECTS: Schema = {"type": "array", "items": {"type": ["string", "object"]}}
_DISCOVERY_OUT: Schema = {"anyOf": [_ANY_OBJECT, _LIST_OUT]}


# -- parameters -------------------------------------------------------------------------------


def _param(where: str, name: str, schema: Schema, description: str, **extra: Any) -> Schema:
    return {"name": name, "in": where, "schema": schema, "description": description, **extra}


def _path(name: str, description: str, example: str | None = None) -> Schema:
    # Ids are URIs, but no `format: uri` here: generated URIs have slashes, which no client
    # sends unencoded in a path segment (a 400 says when an id is not a URI).
    extra = {"example": example} if example else {}
    return _param("path", name, _TEXT, description, required=True, **extra)


def _query(name: str, schema: Schema, description: str, **extra: Any) -> Schema:
    return _param("query", name, schema, description, **extra)


def _csv(name: str, description: str, items: Schema | None = None) -> Schema:
    """A comma-separated list (style form, explode false: `attrs=a,b`)."""
    schema = {"type": "array", "items": items or {"type": "string", "minLength": 1}}
    return _query(name, {**schema, "minItems": 1}, description, style="form", explode=False)


TENANT = _param(
    "header",
    "NGSILD-Tenant",
    {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"},
    "Tenant (clause 5.5.7): reads of an unknown tenant are 404 NonexistentTenant, writes create it",
    example=EXAMPLE_TENANT,
)
LINK = _param(
    "header",
    "Link",
    {"type": "string"},
    'The @context: <url>; rel="http://www.w3.org/ns/json-ld#context" (clause 6.3.5)',
    example=f'<{CORE_CONTEXT}>; rel="{CONTEXT_REL}"; type="application/ld+json"',
)


def _paging(settings: Settings, *, count: bool = True) -> list[Schema]:
    out = [
        _query(
            "limit",
            {
                "type": "integer",
                "minimum": 0,
                "maximum": settings.max_page_size,
                "default": settings.default_page_size,
            },
            "Page size; above the maximum: 403 TooManyResults",
        ),
        _query(
            "offset",
            {"type": "integer", "minimum": 0, "maximum": settings.max_offset},
            "Entities to skip",
        ),
    ]
    if count:
        out.append(_query("count", {"type": "boolean"}, "Total in NGSILD-Results-Count"))
    return out


def _options(values: list[str]) -> Schema:
    return _csv("options", "Comma-separated options", {"enum": values})


_REPRESENTATION = [
    _options(["keyValues", "concise", "normalized", "sysAttrs"]),
    _query("format", {"enum": ["normalized", "concise", "keyValues"]}, "Representation"),
    _query("lang", _TEXT, "LanguageProperty language to pick"),
    _csv("pick", "Only these members (attributes, id, type)"),
    _csv("omit", "All members but these"),
    _query("geometryProperty", _TEXT, "GeoProperty of GeoJSON features"),
]


def _entity_query(settings: Settings) -> list[Schema]:
    return [
        _csv("id", "Entity ids", {"type": "string", "format": "uri"}),
        _query(
            "idPattern",
            _TEXT,
            "Regular expression that some part of the entity id must match (a search: "
            "Road:1 matches urn:ngsi-ld:Road:12; ^...$ for the whole id), the same in "
            "queries, subscriptions and registrations; \\d, \\w, \\s, back-references "
            "and (?...) are refused (docs/matching.md)",
        ),
        _query(
            "type",
            {"type": "string", "minLength": 1, "example": "Streetlight"},
            "Type names or a type expression (a,b  a|b  (a;b))",
        ),
        _csv("attrs", "Attributes to return; entities need one of them"),
        _query(
            "q",
            {"type": "string", "maxLength": settings.max_q_length},
            "Query language filter (clause 4.9)",
            example='status=="on"',
        ),
        _query("scopeQ", _TEXT, "Scope filter"),
        _query(
            "georel",
            {"type": "string"},
            "near;maxDistance==<m>, near;minDistance==<m>, within, contains, intersects, "
            "equals, disjoint or overlaps",
            example="near;maxDistance==2000",
        ),
        _query(
            "geometry",
            {"enum": list(QUERY_GEOMETRIES)},
            "Reference geometry type",
        ),
        _query(
            "coordinates",
            {"type": "string"},
            "Reference coordinates, JSON text",
            example="[2.35,48.85]",
        ),
        _query("geoproperty", _TEXT, "GeoProperty the geo-query tests"),
        _query("local", {"type": "boolean"}, "Only this broker's entities (no federation)"),
        *_paging(settings),
    ]


# -- bodies and responses ---------------------------------------------------------------------


def _with_context(schema: Schema) -> Schema:
    return {"allOf": [schema, {"type": "object", "required": ["@context"]}]}


def _body(schema: Schema, *, merge: bool = False, batch: int | None = None) -> Schema:
    """An NGSI-LD body (clause 6.3.5): JSON with a Link header, or JSON-LD with @context."""
    ld = _with_context(schema)
    if batch is not None:
        schema = {"type": "array", "items": schema, "minItems": 1, "maxItems": batch}
        ld = {"type": "array", "items": ld, "minItems": 1, "maxItems": batch}
    content = {JSON: {"schema": schema}, JSONLD: {"schema": ld}}
    if merge:
        content[MERGE_PATCH] = {"schema": schema}
    return {"required": True, "content": content}


def _json_body(schema: Schema) -> Schema:
    return {"required": True, "content": {JSON: {"schema": schema}}}


def _ok(description: str, schema: Schema | None = None, *media: str, **headers: str) -> Schema:
    out: Schema = {"description": description}
    if media:
        out["content"] = {m: ({"schema": schema} if schema is not None else {}) for m in media}
    if headers:
        out["headers"] = {
            n: {"description": d, "schema": {"type": "string"}} for n, d in headers.items()
        }
    return out


def _ngsi(schema: Schema, *, geo: bool = False, count: bool = False) -> Schema:
    """JSON (context in Link) or JSON-LD (context in the body); GeoJSON where offered."""
    headers = {"Link": "the @context of the body", **(COUNT if count else {})}
    out = _ok("OK", schema, JSON, JSONLD, **headers)
    if geo:
        out["content"][GEOJSON] = {
            "schema": {"anyOf": [_ref("FeatureCollection"), _ref("Feature")]}
        }
    return out


PROBLEMS = {
    400: "BadRequestData or InvalidRequest: the detail says what to fix",
    401: "Authentication required: 'Authorization: Bearer <admin token>'",
    403: (
        "TooManyResults, TooComplexQuery or Forbidden (a SPARQL Update not allowed, or the "
        "access policy's refusal, with its reason)"
    ),
    404: "ResourceNotFound or NonexistentTenant",
    406: "NotAcceptable: no offered media type matches Accept",
    409: "AlreadyExists, or a sync already running",
    413: "The body is larger than the limit (URBIS_MAX_BODY_BYTES)",
    415: "UnsupportedMediaType: the Content-Type is not accepted here",
    422: "OperationNotSupported",
    503: "LdContextNotAvailable (a remote @context), or QueryTimeout",
}
_NO_CONTENT = {"description": "Done"}
COUNT = {"NGSILD-Results-Count": "total matches when count=true"}
_CREATED = _ok("Created", None, Location="the new resource")


def _responses(ok: dict[int, Schema], errors: set[int]) -> dict[str, Schema]:
    out = {str(code): response for code, response in ok.items()}
    for code in sorted(errors):
        out[str(code)] = {"$ref": f"#/components/responses/Problem{code}"}
    return out


def _problem_response(code: int) -> Schema:
    out: Schema = {
        "description": PROBLEMS[code],
        "content": {PROBLEM: {"schema": _ref("ProblemDetails")}},
    }
    if code == 401:
        out["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    return out


# Who may call: public reads, admin writes (bearer token; anyone when the server runs --open).
_PUBLIC: list[Schema] = [{}, {"bearerAuth": []}]
_ADMIN: list[Schema] = [{"bearerAuth": []}]

# What each kind of operation can answer besides its own codes.
# Bad tenant or parameter; the access policy's refusal; nonexistent tenant or resource.
READ = {400, 403, 404}
WRITE = {400, 401, 404}
BODY = {400, 413, 415, 503}  # size, media type, a body @context that cannot be loaded
CONTEXT = {400, 503}  # the Link header's @context


def _op(
    operation_id: str,
    summary: str,
    ok: dict[int, Schema],
    errors: set[int],
    *,
    params: list[Schema] | None = None,
    body: Schema | None = None,
    admin: bool = False,
) -> Schema:
    op: Schema = {
        "operationId": operation_id,
        "summary": summary,
        "parameters": [TENANT, *(params or [])],
        "responses": _responses(ok, errors),
        "security": _ADMIN if admin else _PUBLIC,
    }
    if body is not None:
        op["requestBody"] = body
    return op


def operations(settings: Settings) -> dict[tuple[str, str], Schema]:
    """Every operation of the app, keyed by (METHOD, path as FastAPI spells it)."""
    s = settings
    ent, attr = "/ngsi-ld/v1/entities/{entity_id}", "/ngsi-ld/v1/entities/{entity_id}/attrs"
    eid = _path("entity_id", "Entity id (a URI)", EXAMPLE_ID)
    aname = _path("attr", "Attribute name (term or IRI)", "status")
    batch = "/ngsi-ld/v1/entityOperations/"
    subs, regs = "/ngsi-ld/v1/subscriptions", "/ngsi-ld/v1/csourceRegistrations"
    ctxs, src = "/ngsi-ld/v1/jsonldContexts", "/sources/{source_id}"
    sid = _path("source_id", "Source id")
    sys_attrs = [_options(["sysAttrs"])]
    reg_options = [_options(["sysAttrs", "keyValues"])]
    entity_write = WRITE | BODY
    batch_errors = {400, 401, 413, 415}
    sparql_in = [
        _query(
            "query",
            {"type": "string", "maxLength": s.sparql_max_query_length},
            "SPARQL 1.1 query; GET without it: the service description",
            example="SELECT * WHERE { ?s ?p ?o } LIMIT 5",
        ),
        _csv("default-graph-uri", "Default graph IRIs", {"type": "string", "format": "uri"}),
        _csv("named-graph-uri", "Named graph IRIs", {"type": "string", "format": "uri"}),
    ]
    sparql_out = _ok(
        "Results in the negotiated format: SELECT/ASK results, CONSTRUCT/DESCRIBE graphs, "
        "or the service description (Turtle)",
        None,
        *ALL_TYPES,
    )
    sparql_errors = {400, 403, 404, 406, 413, 503}
    sparql_text = {"type": "string", "maxLength": s.sparql_max_query_length}
    ops = {
        # -- entities (clauses 5.6, 5.7) ----------------------------------------------------
        ("POST", "/ngsi-ld/v1/entities"): _op(
            "createEntity",
            "Create an entity",
            {201: _CREATED},
            (entity_write - {404}) | {409},
            params=[LINK],
            body=_body(_ref("Entity")),
        ),
        ("GET", "/ngsi-ld/v1/entities"): _op(
            "queryEntity",
            "Query entities",
            {200: _ngsi(_ENTITIES_OUT, geo=True, count=True)},
            READ | CONTEXT | {403, 406, 422},
            params=[LINK, *_entity_query(s), *_REPRESENTATION],
        ),
        ("GET", ent): _op(
            "retrieveEntity",
            "Retrieve an entity",
            {200: _ngsi(_ref("EntityOut"), geo=True)},
            READ | CONTEXT | {406},
            params=[
                eid,
                LINK,
                _query("type", {"type": "string"}, "Expected type"),
                _csv("attrs", "Attributes to return"),
                *_REPRESENTATION,
            ],
        ),
        ("DELETE", ent): _op(
            "deleteEntity", "Delete an entity", {204: _NO_CONTENT}, WRITE, params=[eid]
        ),
        ("PUT", ent): _op(
            "replaceEntity",
            "Replace an entity",
            {204: _NO_CONTENT},
            entity_write,
            params=[eid, LINK],
            body=_body(_ref("EntityReplacement")),
        ),
        ("PATCH", ent): _op(
            "mergeEntity",
            "Merge-patch an entity",
            {204: _NO_CONTENT},
            entity_write,
            params=[eid, LINK],
            body=_body(_ref("EntityFragment"), merge=True),
        ),
        ("POST", attr): _op(
            "appendAttrs",
            "Append attributes",
            {204: _NO_CONTENT, 207: _ok("Some not appended", _ref("UpdateResult"), JSON)},
            entity_write,
            params=[eid, LINK, _options(["noOverwrite"])],
            body=_body(_ref("EntityFragment")),
        ),
        ("PATCH", attr): _op(
            "updateAttrs",
            "Update existing attributes",
            {204: _NO_CONTENT, 207: _ok("Some not updated", _ref("UpdateResult"), JSON)},
            entity_write,
            params=[eid, LINK],
            body=_body(_ref("EntityFragment")),
        ),
        ("PATCH", attr + "/{attr}"): _op(
            "partialAttrUpdate",
            "Update part of an attribute",
            {204: _NO_CONTENT},
            entity_write,
            params=[eid, aname, LINK],
            body=_body(_ANY_OBJECT, merge=True),
        ),
        ("PUT", attr + "/{attr}"): _op(
            "replaceAttribute",
            "Replace an attribute",
            {204: _NO_CONTENT},
            entity_write,
            params=[eid, aname, LINK],
            body=_body(_ref("Attribute")),
        ),
        ("DELETE", attr + "/{attr}"): _op(
            "deleteAttribute",
            "Delete an attribute",
            {204: _NO_CONTENT},
            WRITE | CONTEXT,
            params=[
                eid,
                aname,
                LINK,
                _query("datasetId", {"type": "string", "format": "uri"}, "Instance"),
                _query("deleteAll", {"type": "boolean"}, "Every instance"),
            ],
        ),
        # -- batch operations (clause 5.6.7-5.6.10), POST query (5.7.2) -----------------------
        ("POST", batch + "create"): _op(
            "batchEntityCreate",
            "Create entities",
            {
                201: _ok("Created ids", _STRINGS, JSON),
                207: _ok("Partial success", _ref("BatchOperationResult"), JSON),
            },
            batch_errors,
            params=[LINK],
            body=_body(_ref("Entity"), batch=s.max_batch_size),
        ),
        ("POST", batch + "upsert"): _op(
            "batchEntityUpsert",
            "Create or replace (options=update: update) entities",
            {
                201: _ok("Created ids", _STRINGS, JSON),
                204: _NO_CONTENT,
                207: _ok("Partial success", _ref("BatchOperationResult"), JSON),
            },
            batch_errors,
            params=[LINK, _options(["update", "replace"])],
            body=_body(_ref("Entity"), batch=s.max_batch_size),
        ),
        ("POST", batch + "update"): _op(
            "batchEntityUpdate",
            "Update attributes of entities",
            {204: _NO_CONTENT, 207: _ok("Partial success", _ref("BatchOperationResult"), JSON)},
            batch_errors,
            params=[LINK, _options(["noOverwrite"])],
            body=_body(_ref("Entity"), batch=s.max_batch_size),
        ),
        ("POST", batch + "merge"): _op(
            "batchEntityMerge",
            "Merge-patch entities",
            {204: _NO_CONTENT, 207: _ok("Partial success", _ref("BatchOperationResult"), JSON)},
            batch_errors,
            params=[LINK],
            body=_body(_ref("Entity"), batch=s.max_batch_size),
        ),
        ("POST", batch + "delete"): _op(
            "batchEntityDelete",
            "Delete entities",
            {204: _NO_CONTENT, 207: _ok("Partial success", _ref("BatchOperationResult"), JSON)},
            batch_errors,
            body={
                "required": True,
                "content": {
                    m: {
                        "schema": {
                            "type": "array",
                            "items": {"type": "string", "format": "uri"},
                            "minItems": 1,
                            "maxItems": s.max_batch_size,
                            "example": [EXAMPLE_ID],
                        }
                    }
                    for m in (JSON, JSONLD)
                },
            },
        ),
        ("POST", batch + "query"): _op(
            "queryBatch",
            "Query entities with a Query body (a read)",
            {200: _ngsi(_ENTITIES_OUT, count=True)},
            READ | BODY | {403, 406, 422},
            params=[LINK, *_paging(s), *_REPRESENTATION[:3]],
            body=_body(_ref("Query")),
        ),
        # -- discovery (clause 5.7.5-5.7.8) ---------------------------------------------------
        ("GET", "/ngsi-ld/v1/types"): _op(
            "retrieveEntityTypes",
            "Entity types (details=true: with their attributes)",
            {200: _ngsi(_DISCOVERY_OUT)},
            READ | CONTEXT | {406},
            params=[LINK, _query("details", {"type": "boolean"}, "Details per type")],
        ),
        ("GET", "/ngsi-ld/v1/types/{type_name}"): _op(
            "retrieveEntityTypeInfo",
            "One entity type",
            {200: _ngsi(_ANY_OBJECT)},
            READ | CONTEXT | {406},
            params=[_path("type_name", "Type name", "Streetlight"), LINK],
        ),
        ("GET", "/ngsi-ld/v1/attributes"): _op(
            "retrieveAttrTypes",
            "Attributes (details=true: with their types)",
            {200: _ngsi(_DISCOVERY_OUT)},
            READ | CONTEXT | {406},
            params=[LINK, _query("details", {"type": "boolean"}, "Details per attribute")],
        ),
        ("GET", "/ngsi-ld/v1/attributes/{attr}"): _op(
            "retrieveAttrTypeInfo",
            "One attribute",
            {200: _ngsi(_ANY_OBJECT)},
            READ | CONTEXT | {406},
            params=[aname, LINK],
        ),
        # -- @context source (clause 5.13) ----------------------------------------------------
        ("POST", ctxs): _op(
            "addJsonldContext",
            "Host an @context",
            {201: _CREATED},
            {400, 401, 413, 415},
            body={
                "required": True,
                "content": {m: {"schema": _ref("ContextDocument")} for m in (JSON, JSONLD)},
            },
        ),
        ("GET", ctxs): _op(
            "listJsonldContexts",
            "Stored @contexts",
            {200: _ok("URLs, or with details=true metadata objects", _URLS_OR_OBJECTS, JSON)},
            {400},
            params=[
                _query("details", {"type": "boolean"}, "Metadata instead of URLs"),
                _query("kind", {"enum": ["Hosted", "Cached", "ImplicitlyCreated"]}, "Kind"),
            ],
        ),
        ("GET", ctxs + "/{context_id}"): _op(
            "serveJsonldContext",
            "An @context (details=true: its metadata)",
            {200: _ok("OK", _ANY_OBJECT, JSONLD, JSON)},
            {400, 404, 422},
            params=[
                _path("context_id", "Local id of the context"),
                _query("details", {"type": "boolean"}, "Metadata instead of the context"),
            ],
        ),
        ("DELETE", ctxs + "/{context_id}"): _op(
            "deleteJsonldContext",
            "Delete a hosted @context",
            {204: _NO_CONTENT},
            {400, 401, 404, 422},
            params=[_path("context_id", "Local id, or a cached URL")],
        ),
        # -- subscriptions (clauses 5.8, 5.11): admin only, they reveal receivers ------------
        ("POST", subs): _op(
            "createSubscription",
            "Create a subscription",
            {201: _CREATED},
            (entity_write - {404}) | {403, 409, 422},
            params=[LINK],
            body=_body(_ref("Subscription")),
            admin=True,
        ),
        ("GET", subs): _op(
            "querySubscription",
            "List subscriptions",
            {200: _ok("OK", _LIST_OUT, JSON, JSONLD, **COUNT)},
            {400, 401, 403, 404, 406},
            params=[*_paging(s), *sys_attrs],
            admin=True,
        ),
        ("GET", subs + "/{subscription_id}"): _op(
            "retrieveSubscription",
            "A subscription",
            {200: _ok("OK", _ANY_OBJECT, JSON, JSONLD)},
            {400, 401, 404, 406},
            params=[_path("subscription_id", "Subscription id (a URI)"), *sys_attrs],
            admin=True,
        ),
        ("PATCH", subs + "/{subscription_id}"): _op(
            "updateSubscription",
            "Update a subscription",
            {204: _NO_CONTENT},
            entity_write | {403, 422},
            params=[_path("subscription_id", "Subscription id (a URI)"), LINK],
            body=_body(_ref("SubscriptionPatch"), merge=True),
            admin=True,
        ),
        ("DELETE", subs + "/{subscription_id}"): _op(
            "removeSubscription",
            "Delete a subscription",
            {204: _NO_CONTENT},
            WRITE,
            params=[_path("subscription_id", "Subscription id (a URI)")],
            admin=True,
        ),
        # -- context source registrations (clauses 5.9, 5.10) --------------------------------
        ("POST", regs): _op(
            "registerCSource",
            "Register a context source",
            {201: _CREATED},
            (entity_write - {404}) | {409},
            params=[LINK],
            body=_body(_ref("CSourceRegistration")),
            admin=True,
        ),
        ("GET", regs): _op(
            "queryCSourceRegistrations",
            "Registrations that may hold the entities described",
            {200: _ngsi(_LIST_OUT, count=True)},
            READ | CONTEXT | {403, 406},
            params=[
                LINK,
                _csv("id", "Entity ids", {"type": "string", "format": "uri"}),
                _query(
                    "idPattern",
                    {"type": "string"},
                    "Regular expression on entity ids, a search as in entity queries "
                    "(docs/matching.md)",
                ),
                _query("type", {"type": "string"}, "Entity types"),
                _csv("attrs", "Attributes"),
                *_paging(s),
                *reg_options,
            ],
        ),
        ("GET", regs + "/{reg_id}"): _op(
            "retrieveCSourceRegistration",
            "A registration",
            {200: _ngsi(_ANY_OBJECT)},
            READ | CONTEXT | {406},
            params=[_path("reg_id", "Registration id (a URI)"), LINK, *reg_options],
        ),
        ("PATCH", regs + "/{reg_id}"): _op(
            "updateCSourceRegistration",
            "Update a registration",
            {204: _NO_CONTENT},
            entity_write | {409},
            params=[_path("reg_id", "Registration id (a URI)"), LINK],
            body=_body(_ref("CSourceRegistrationPatch"), merge=True),
            admin=True,
        ),
        ("DELETE", regs + "/{reg_id}"): _op(
            "deleteCSourceRegistration",
            "Delete a registration",
            {204: _NO_CONTENT},
            WRITE,
            params=[_path("reg_id", "Registration id (a URI)")],
            admin=True,
        ),
        # -- SPARQL 1.1 Protocol (docs/sparql.md) ---------------------------------------------
        ("GET", "/sparql"): _op(
            "sparqlQuery",
            "SPARQL query (no query: the service description)",
            {200: sparql_out},
            sparql_errors,
            params=sparql_in,
        ),
        ("POST", "/sparql"): _op(
            "sparqlQueryPost",
            "SPARQL query in the body",
            {200: sparql_out},
            sparql_errors | {415},
            params=sparql_in[1:],
            body={
                "required": True,
                "content": {
                    QUERY_TYPE: {"schema": {**sparql_text, "example": "ASK { ?s ?p ?o }"}},
                    FORM: {
                        "schema": {
                            "type": "object",
                            "required": ["query"],
                            "properties": {"query": sparql_text},
                        }
                    },
                },
            },
        ),
        ("OPTIONS", "/sparql"): _op("sparqlPreflight", "CORS preflight", {204: _NO_CONTENT}, set()),
        ("POST", "/sparql/update"): _op(
            "sparqlUpdate",
            "SPARQL Update (admin)",
            {204: _NO_CONTENT},
            {400, 401, 403, 413, 415},
            body={
                "required": True,
                "content": {
                    UPDATE_TYPE: {
                        "schema": {
                            **sparql_text,
                            "example": "INSERT DATA { <urn:a> <urn:b> <urn:c> }",
                        }
                    },
                    FORM: {
                        "schema": {
                            "type": "object",
                            "required": ["update"],
                            "properties": {"update": sparql_text},
                        }
                    },
                },
            },
            admin=True,
        ),
        ("OPTIONS", "/sparql/update"): _op(
            "sparqlUpdatePreflight", "CORS preflight", {204: _NO_CONTENT}, set()
        ),
        # -- datasets ---------------------------------------------------------------------
        ("GET", "/datasets"): _op(
            "listDatasets",
            "The tenant's datasets and their entity counts",
            {200: _ok("OK", _LIST_OUT, JSON)},
            READ,
        ),
        ("GET", "/datasets/{name}/dump"): _op(
            "dumpDataset",
            "One dataset as N-Quads or TriG (admin)",
            {200: _ok("The dump", None, *(media for _, media, _ in FORMATS.values()))},
            {400, 401, 403, 404, 406},
            params=[_path("name", "Dataset name")],
            admin=True,
        ),
        # -- connector sources (admin) -------------------------------------------------------
        ("GET", "/sources"): _op(
            "listSources",
            "Sources and their last syncs",
            {200: _ok("OK", _LIST_OUT, JSON)},
            {400, 401},
            admin=True,
        ),
        ("POST", "/sources"): _op(
            "addSource",
            "Add (replace=true: replace) a source definition",
            {201: _ok("Created", _ANY_OBJECT, JSON, Location="the source")},
            {400, 401, 409, 413},
            params=[_query("replace", {"type": "boolean"}, "Overwrite an existing source")],
            body=_json_body(_ref("SourceDefinition")),
            admin=True,
        ),
        ("GET", src): _op(
            "getSource",
            "A source, its definition and state",
            {200: _ok("OK", _ANY_OBJECT, JSON)},
            {400, 401, 404},
            params=[sid],
            admin=True,
        ),
        ("DELETE", src): _op(
            "deleteSource",
            "Forget a source definition",
            {204: _NO_CONTENT},
            {400, 401, 404},
            params=[sid],
            admin=True,
        ),
        ("POST", src + "/sync"): _op(
            "syncSource",
            "Sync a source now (waits for the report)",
            {200: _ok("The sync report", _ANY_OBJECT, JSON)},
            {400, 401, 404, 409, 422},
            params=[sid],
            admin=True,
        ),
        ("GET", src + "/report"): _op(
            "sourceReport",
            "The last sync report",
            {200: _ok("OK", _ANY_OBJECT, JSON)},
            {400, 401, 404},
            params=[sid],
            admin=True,
        ),
        ("GET", src + "/quarantine"): _op(
            "sourceQuarantine",
            "Records that could not be mapped",
            {200: _ok("OK", _LIST_OUT, JSON, **{"Urbis-Total-Count": "quarantined records"})},
            {400, 401, 404},
            params=[
                sid,
                _query(
                    "limit",
                    {"type": "integer", "minimum": 0, "maximum": s.max_page_size, "default": 100},
                    "Page",
                ),
                _query("offset", {"type": "integer", "minimum": 0}, "Skip"),
            ],
            admin=True,
        ),
        ("DELETE", src + "/quarantine"): _op(
            "clearQuarantine",
            "Empty the quarantine",
            {204: _NO_CONTENT},
            {400, 401, 404},
            params=[sid],
            admin=True,
        ),
        ("GET", "/health"): _op(
            "health", "Liveness", {200: _ok("OK", _ref("Health"), JSON)}, set()
        ),
    }
    # Tenants partition entities, subscriptions, registrations, datasets and SPARQL; @contexts,
    # sources and the health check are the broker's own.
    for (method, path), op in ops.items():
        if method == "OPTIONS" or path.startswith((ctxs, "/sources", "/health")):
            op["parameters"].remove(TENANT)
    return ops


def _generated(app: FastAPI) -> dict[str, Any]:
    """FastAPI's own document: it knows every published route, if nothing about them."""
    return get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )


def published(app: FastAPI) -> list[tuple[str, str]]:
    """(METHOD, path) of every operation the app publishes."""
    paths = _generated(app)["paths"]
    return [(method.upper(), path) for path, ops in paths.items() for method in ops]


def missing(app: FastAPI, settings: Settings) -> list[tuple[str, str]]:
    described = operations(settings)
    return [key for key in published(app) if key not in described]


def document(app: FastAPI, settings: Settings) -> dict[str, Any]:
    base = _generated(app)
    described = operations(settings)
    for path, ops in base["paths"].items():
        for method, generated in ops.items():
            # A route without a description keeps FastAPI's bare one; `missing` reports it.
            op = described.get((method.upper(), path), generated)
            ops[method] = {"tags": generated.get("tags", []), **op}
    base["components"] = {
        "schemas": SCHEMAS,
        "responses": {f"Problem{code}": _problem_response(code) for code in PROBLEMS},
        "securitySchemes": {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "description": "The admin token (URBIS_ADMIN_TOKEN)",
            },
        },
    }
    return base


def install(app: FastAPI, settings: Settings) -> None:
    """Serve `document` at /openapi.json, built once on first request."""

    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(app, settings)
        return app.openapi_schema

    app.openapi = build  # type: ignore[method-assign]
