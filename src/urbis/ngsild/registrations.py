"""Context source registrations (ETSI GS CIM 009 clauses 5.2.9, 5.9, 4.3.6, 4.20).

A registration tells the broker that another NGSI-LD endpoint holds some of the context
information: which entities (id, idPattern, type) and attributes, in which mode (inclusive,
exclusive, redirect, auxiliary) and for which operations. This module reads and validates
registrations, stores them per tenant (in the state store, twin/state, so they survive restarts
and crashes; in memory when the twin is) and decides which registrations apply
to an entity query or retrieval. The forwarding itself (HTTP) lives in `api.federation`.

Names (entity types, propertyNames, relationshipNames) are kept expanded, as entity documents
are, and compacted with the caller's @context when rendered.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from urbis.twin.entities import EntityService
from urbis.twin.errors import AlreadyExists, BadRequestData, NgsiLdError, ResourceNotFound
from urbis.twin.model import check_datetime, check_name, check_uri, now_iso
from urbis.twin.query.idpattern import compile_id_pattern
from urbis.twin.query.plan import EntityQuery
from urbis.twin.query.selector import EntitySelector
from urbis.twin.query.typeexpr import TypeExpr, TypeName
from urbis.twin.state import StateStore, StateTransaction, memory_state_store
from urbis.twin.store.base import check_tenant
from urbis.twin.terms import Terms

REGISTRATION_TYPE = "ContextSourceRegistration"
MODES = ("inclusive", "exclusive", "redirect", "auxiliary")

# Table 4.20-1: the operations a registration may name (v1.8 and v1.9 names).
OPERATIONS = frozenset(
    {
        "createEntity", "updateEntity", "appendAttrs", "updateAttrs", "deleteAttrs",
        "deleteEntity", "createBatch", "upsertBatch", "updateBatch", "deleteBatch",
        "upsertTemporal", "appendAttrsTemporal", "deleteAttrsTemporal",
        "updateAttrsTemporal", "updateAttrInstanceTemporal", "deleteAttrInstanceTemporal",
        "deleteTemporal", "mergeEntity", "replaceEntity", "replaceAttrs", "mergeBatch",
        "purgeEntity", "retrieveEntity", "queryEntity", "queryBatch", "retrieveTemporal",
        "queryTemporal", "retrieveEntityTypes", "retrieveEntityTypeDetails",
        "retrieveEntityTypeInfo", "retrieveAttrTypes", "retrieveAttrTypeDetails",
        "retrieveAttrTypeInfo", "createSubscription", "updateSubscription",
        "retrieveSubscription", "querySubscription", "deleteSubscription",
        "retrieveEntityMap", "updateEntityMap", "deleteEntityMap",
        "createEntityMapQueryEntity", "createEntityMapQueryTemporal",
        "retrieveContextSourceIdentity",
    }
)  # fmt: skip
_DISCOVERY = (
    "retrieveEntityTypes", "retrieveEntityTypeDetails", "retrieveEntityTypeInfo",
    "retrieveAttrTypes", "retrieveAttrTypeDetails", "retrieveAttrTypeInfo",
)  # fmt: skip
_SUBSCRIPTIONS = (
    "createSubscription", "updateSubscription", "retrieveSubscription",
    "querySubscription", "deleteSubscription",
)  # fmt: skip
_ENTITY_MAPS = (
    "retrieveEntityMap", "updateEntityMap", "deleteEntityMap", "createEntityMapQueryEntity",
)  # fmt: skip
_REDIRECTION = (
    "createEntity", "updateEntity", "appendAttrs", "updateAttrs", "deleteAttrs",
    "deleteEntity", "mergeEntity", "replaceEntity", "replaceAttrs", "retrieveEntity",
    "queryEntity", "purgeEntity", "retrieveContextSourceIdentity",
)  # fmt: skip
# Table 4.20-2: the operation groups. A registration without `operations` means federationOps.
OPERATION_GROUPS: dict[str, frozenset[str]] = {
    "retrieveOps": frozenset({"retrieveEntity", "queryEntity"}),
    "updateOps": frozenset({"updateEntity", "updateAttrs", "replaceEntity", "replaceAttrs"}),
    "associationOps": frozenset(
        {"retrieveEntity", "queryEntity", "queryBatch", "retrieveContextSourceIdentity"}
        | set(_DISCOVERY)
        | set(_SUBSCRIPTIONS)
    ),
    "federationOps": frozenset(
        {"retrieveEntity", "queryEntity", "queryBatch", "retrieveContextSourceIdentity"}
        | set(_DISCOVERY)
        | set(_SUBSCRIPTIONS)
        | set(_ENTITY_MAPS)
    ),
    "redirectionOps": frozenset(_REDIRECTION) | set(_DISCOVERY) | set(_ENTITY_MAPS),
}
DEFAULT_OPERATIONS = ("federationOps",)
# contextSourceInfo becomes request headers (clause 4.3.6.5); these would break the request.
RESERVED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "via", "ngsild-tenant"}
)
JSONLD_CONTEXT_KEY = "jsonldContext"  # pre-processed: the @context of forwarded requests
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_KNOWN = frozenset(
    {
        "id", "type", "registrationName", "description", "information", "tenant",
        "observationInterval", "managementInterval", "location", "observationSpace",
        "operationSpace", "expiresAt", "endpoint", "contextSourceInfo", "scope", "mode",
        "operations", "refreshRate", "management", "createdAt", "modifiedAt", "status",
        "timesSent", "timesFailed", "lastSuccess", "lastFailure", "@context",
    }
)  # fmt: skip
_READ_ONLY = frozenset(
    {"createdAt", "modifiedAt", "status", "timesSent", "timesFailed", "lastSuccess", "lastFailure"}
)
Doc = dict[str, Any]


@dataclass(frozen=True)
class EntityInfo:
    """One member of `information[].entities` (clause 5.2.8): a type, optionally an id or an
    idPattern. What it selects is decided by the EntitySelector queries and subscriptions use."""

    type: str  # expanded IRI
    id: str | None = None
    id_pattern: str | None = None

    @cached_property
    def selector(self) -> EntitySelector:
        ids = (self.id,) if self.id is not None else ()
        return EntitySelector(ids, self.id_pattern, TypeName(self.type))

    def matches(self, entity_id: str, types: Collection[str]) -> bool:
        return self.selector.selects_entity(entity_id, types)


@dataclass(frozen=True)
class RegistrationInfo:
    """One member of `information`: entities and attribute names (all optional, one needed)."""

    entities: tuple[EntityInfo, ...] = ()
    property_names: tuple[str, ...] = ()
    relationship_names: tuple[str, ...] = ()

    @property
    def names(self) -> frozenset[str]:
        """The registered attributes; empty means every attribute."""
        return frozenset(self.property_names) | frozenset(self.relationship_names)

    def may_hold(
        self,
        *,
        ids: Sequence[str] | None,
        id_pattern: str | None,
        types: TypeExpr | None,
        attrs: Iterable[str] | None,
    ) -> bool:
        """Whether a query with these conditions may find data of this information item."""
        return self.may_serve(EntitySelector.of(ids, id_pattern, types), attrs)

    def may_serve(self, wanted: EntitySelector, attrs: Iterable[str] | None) -> bool:
        """Whether entities a query selects by `wanted` (and `attrs`) may be held here: some
        registered entity info may select the same entities (`EntitySelector.may_overlap`)."""
        names = self.names
        if attrs is not None and names and not names & set(attrs):
            return False
        return not self.entities or any(e.selector.may_overlap(wanted) for e in self.entities)

    def holds(self, entity_id: str, types: Iterable[str]) -> bool:
        type_set = set(types)
        return not self.entities or any(s.matches(entity_id, type_set) for s in self.entities)


@dataclass(frozen=True)
class Management:
    """RegistrationManagementInfo (clause 5.2.34): timeout and cooldown in milliseconds."""

    local_only: bool = False
    timeout: float | None = None
    cooldown: float | None = None
    cache_duration: float | None = None


@dataclass(frozen=True)
class Registration:
    """A validated CSourceRegistration; `extra` keeps members this broker does not interpret."""

    id: str
    information: tuple[RegistrationInfo, ...]
    endpoint: str
    mode: str = "inclusive"
    operations: tuple[str, ...] = DEFAULT_OPERATIONS
    tenant: str | None = None
    context_source_info: tuple[tuple[str, str], ...] = ()
    registration_name: str | None = None
    description: str | None = None
    expires_at: str | None = None
    observation_interval: Doc | None = None
    management_interval: Doc | None = None
    management: Management | None = None
    scope: tuple[str, ...] = ()
    created_at: str = ""
    modified_at: str = ""
    extra: tuple[tuple[str, Any], ...] = ()

    # -- what it covers --------------------------------------------------------------------

    @property
    def supported_operations(self) -> frozenset[str]:
        out: set[str] = set()
        for name in self.operations:
            out |= OPERATION_GROUPS.get(name, {name})
        return frozenset(out)

    def active(self, now: datetime | None = None) -> bool:
        if self.expires_at is None:
            return True
        return _parse_time(self.expires_at) > (now or datetime.now(UTC))

    def applies_to_query(
        self,
        operation: str,
        *,
        ids: Sequence[str] | None = None,
        id_pattern: str | None = None,
        types: TypeExpr | None = None,
        attrs: Iterable[str] | None = None,
    ) -> bool:
        """Whether an entity query or retrieval (by `operation`) should reach this source."""
        return self.applies_to(operation, EntitySelector.of(ids, id_pattern, types), attrs)

    def applies_to(
        self, operation: str, wanted: EntitySelector, attrs: Iterable[str] | None = None
    ) -> bool:
        """`applies_to_query` for a query's entity conditions already compiled."""
        if operation not in self.supported_operations or not self.active():
            return False
        attr_list = list(attrs) if attrs is not None else None
        return any(info.may_serve(wanted, attr_list) for info in self.information)

    def attribute_scope(self, entity_id: str, types: Iterable[str]) -> frozenset[str] | None:
        """The attributes this source is registered for on one entity: None means all of them,
        an empty set means the entity is not covered at all."""
        types = list(types)
        names: set[str] = set()
        for info in self.information:
            if info.holds(entity_id, types):
                if not info.names:
                    return None
                names |= info.names
        return frozenset(names)

    def narrow(self, doc: Doc) -> Doc | None:
        """The part of a source's entity this registration covers (None: nothing)."""
        scope = self.attribute_scope(doc["id"], doc.get("type", []))
        if scope is None:
            return doc
        if not scope:
            return None
        return {k: v for k, v in doc.items() if not _is_attribute(k, v) or k in scope}

    def withdraw(self, doc: Doc) -> Doc | None:
        """A local entity without what an exclusive or redirect registration claims."""
        scope = self.attribute_scope(doc["id"], doc.get("type", []))
        if scope is None:
            return None
        if not scope:
            return doc
        return {k: v for k, v in doc.items() if not (_is_attribute(k, v) and k in scope)}

    def registered_names(self) -> frozenset[str] | None:
        """Union of registered attributes; None when some information item has none (all)."""
        names: set[str] = set()
        for info in self.information:
            if not info.names:
                return None
            names |= info.names
        return frozenset(names)

    def registered_ids(self) -> list[str] | None:
        """Specific entity ids, when every selector names one (to narrow forwarded queries)."""
        ids: list[str] = []
        for info in self.information:
            if not info.entities:
                return None
            for sel in info.entities:
                if sel.id is None:
                    return None
                ids.append(sel.id)
        return list(dict.fromkeys(ids))

    @property
    def headers(self) -> dict[str, str]:
        """contextSourceInfo as request headers (jsonldContext is used as the @context)."""
        return {k: v for k, v in self.context_source_info if k != JSONLD_CONTEXT_KEY}

    @property
    def jsonld_context(self) -> str | None:
        return next((v for k, v in self.context_source_info if k == JSONLD_CONTEXT_KEY), None)

    @property
    def agent(self) -> str:
        """How warnings name this source (clause 6.3.17): its name, else its id."""
        return self.registration_name or self.id


def _is_attribute(key: str, value: Any) -> bool:
    return isinstance(value, list) and key not in ("type", "scope")


def _parse_time(text: str) -> datetime:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# -- reading and rendering ------------------------------------------------------------------


class RegistrationReader:
    """Turns a request body into a Registration, with a precise error for each mistake."""

    def __init__(self, terms: Terms, *, now: str | None = None) -> None:
        self.terms = terms
        self.now = now or now_iso()

    def create(self, body: object) -> Registration:
        data = _object(body, "a context source registration")
        _check_type(data)
        reg_id = data.get("id")
        if reg_id is None:
            reg_id = f"urn:ngsi-ld:ContextSourceRegistration:{uuid.uuid4()}"
        reg = self._read(data, check_uri(reg_id, "registration id"))
        return replace(reg, created_at=self.now, modified_at=self.now)

    def patch(self, current: Registration, body: object) -> Registration:
        """Clause 5.9.3: the given members replace the current ones; null removes optional ones."""
        data = _object(body, "a registration fragment")
        if "id" in data and data["id"] != current.id:
            raise BadRequestData(f"id {data['id']!r} does not match the URL ({current.id!r})")
        if "type" in data:
            _check_type(data)
        if not any(k not in ("id", "type", "@context") for k in data):
            raise BadRequestData("the fragment changes nothing: give at least one member")
        merged = render(current, _IdentityTerms())
        for key, value in data.items():
            if key in ("id", "@context"):
                continue
            if key in _READ_ONLY:
                raise BadRequestData(f"{key!r} is set by the broker and cannot be patched")
            if value is None:
                if key in ("information", "endpoint", "type"):
                    raise BadRequestData(f"{key!r} is mandatory and cannot be removed")
                merged.pop(key, None)
            else:
                merged[key] = self._compact_input(key, value)
        reg = self._read(merged, current.id, expanded_terms=True)
        return replace(reg, created_at=current.created_at, modified_at=self.now)

    def _compact_input(self, key: str, value: Any) -> Any:
        """Patch members arrive with the caller's @context: expand their names now."""
        if key != "information":
            return value
        return [self._expand_info(i) for i in _array(value, "information")]

    def _expand_info(self, raw: Any) -> Any:
        info = _object(raw, "each information item")
        out = dict(info)
        if isinstance(info.get("entities"), list):
            out["entities"] = [
                {**e, "type": self.terms.expand(e["type"])}
                if isinstance(e, dict)
                and isinstance(e.get("type"), str)
                and not _bad_name(e["type"])
                else e
                for e in info["entities"]
            ]
        for key in ("propertyNames", "relationshipNames"):
            if isinstance(info.get(key), list):
                out[key] = [
                    self.terms.expand(n) if isinstance(n, str) and not _bad_name(n) else n
                    for n in info[key]
                ]
        return out

    def _read(self, data: Doc, reg_id: str, *, expanded_terms: bool = False) -> Registration:
        terms: Terms = _IdentityTerms() if expanded_terms else self.terms
        for key in ("information", "endpoint"):
            if key not in data:
                raise BadRequestData(f"a registration needs {key!r} (clause 5.2.9)")
        information = tuple(
            _info(item, terms, n)
            for n, item in enumerate(_array(data["information"], "information"))
        )
        if not information:
            raise BadRequestData("information must hold at least one RegistrationInfo")
        mode = data.get("mode", "inclusive")
        if mode not in MODES:
            raise BadRequestData(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "exclusive":
            _check_exclusive(information)
        reg = Registration(
            id=reg_id,
            information=information,
            endpoint=_endpoint(data["endpoint"]),
            mode=mode,
            operations=_operations(data.get("operations")),
            tenant=_tenant(data.get("tenant")),
            context_source_info=_context_source_info(data.get("contextSourceInfo")),
            registration_name=_optional_string(data, "registrationName"),
            description=_optional_string(data, "description"),
            expires_at=(
                check_datetime(data["expiresAt"], "expiresAt") if "expiresAt" in data else None
            ),
            observation_interval=_interval(data, "observationInterval"),
            management_interval=_interval(data, "managementInterval"),
            management=_management(data.get("management")),
            scope=_scope(data.get("scope")),
            extra=tuple((k, v) for k, v in data.items() if k not in _KNOWN),
        )
        return reg


class _IdentityTerms:
    """Terms for documents whose names are already expanded (stored form, patches)."""

    def expand(self, term: str) -> str:
        return term

    def compact(self, iri: str) -> str:
        return iri

    def expand_vocab(self, value: str) -> str:
        return value

    def compact_vocab(self, value: str) -> str:
        return value


def _bad_name(name: str) -> bool:
    try:
        check_name(name)
    except BadRequestData:
        return True
    return False


def _object(value: object, what: str) -> Doc:
    if not isinstance(value, dict):
        raise BadRequestData(f"{what} must be a JSON object")
    return value


def _array(value: object, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise BadRequestData(f"{what} must be a JSON array")
    return value


def _check_type(data: Doc) -> None:
    if data.get("type") != REGISTRATION_TYPE:
        raise BadRequestData(f'type must be "{REGISTRATION_TYPE}", got {data.get("type")!r}')


def _info(raw: object, terms: Terms, n: int) -> RegistrationInfo:
    where = f"information[{n}]"
    info = _object(raw, where)
    unknown = set(info) - {"entities", "propertyNames", "relationshipNames"}
    if unknown:
        raise BadRequestData(f"{where} has unknown members: {', '.join(sorted(unknown))}")
    entities = tuple(
        _selector(e, terms, f"{where}.entities[{i}]")
        for i, e in enumerate(_array(info.get("entities", []), f"{where}.entities"))
    )
    if "entities" in info and not entities:
        raise BadRequestData(f"{where}.entities must not be empty when given")
    props = _names(info.get("propertyNames"), terms, f"{where}.propertyNames")
    rels = _names(info.get("relationshipNames"), terms, f"{where}.relationshipNames")
    if not (entities or props or rels):
        raise BadRequestData(
            f"{where} needs at least one of entities, propertyNames, relationshipNames"
        )
    return RegistrationInfo(entities, props, rels)


def _selector(raw: object, terms: Terms, where: str) -> EntityInfo:
    sel = _object(raw, where)
    unknown = set(sel) - {"id", "idPattern", "type"}
    if unknown:
        raise BadRequestData(f"{where} has unknown members: {', '.join(sorted(unknown))}")
    if "type" not in sel:
        raise BadRequestData(f"{where} needs a type (clause 5.2.8)")
    type_name = check_name(sel["type"], f"{where}.type")
    if "id" in sel and "idPattern" in sel:
        raise BadRequestData(f"{where} has both id and idPattern: give one")
    pattern = sel.get("idPattern")
    if pattern is not None:
        compile_id_pattern(pattern, f"{where}.idPattern")  # RE2, the subset queries share
    return EntityInfo(
        type=terms.expand(type_name),
        id=check_uri(sel["id"], f"{where}.id") if "id" in sel else None,
        id_pattern=pattern,
    )


def _names(raw: object, terms: Terms, where: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    items = _array(raw, where)
    if not items:
        raise BadRequestData(f"{where} must not be empty when given")
    return tuple(dict.fromkeys(terms.expand(check_name(n, where)) for n in items))


def _check_exclusive(information: Sequence[RegistrationInfo]) -> None:
    """Exclusive registrations name specific entities and attributes (clause 4.3.6.3)."""
    for n, info in enumerate(information):
        if not info.entities or any(s.id is None for s in info.entities):
            raise BadRequestData(
                f"an exclusive registration names each entity by id: information[{n}] has "
                "an entity without id"
            )
        if not info.names:
            raise BadRequestData(
                f"an exclusive registration names its attributes: information[{n}] has no "
                "propertyNames or relationshipNames"
            )


def _endpoint(raw: object) -> str:
    if not isinstance(raw, str):
        raise BadRequestData("endpoint must be a URL string")
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequestData(f"endpoint must be an absolute http(s) URL, got {raw!r}")
    if parts.query or parts.fragment:
        raise BadRequestData("endpoint must not carry a query or a fragment")
    return raw.rstrip("/")


def _operations(raw: object) -> tuple[str, ...]:
    if raw is None:
        return DEFAULT_OPERATIONS
    items = [raw] if isinstance(raw, str) else _array(raw, "operations")
    if not items:
        raise BadRequestData("operations must not be empty when given")
    for op in items:
        if not isinstance(op, str) or (op not in OPERATIONS and op not in OPERATION_GROUPS):
            raise BadRequestData(
                f"unknown operation {op!r}: use an operation name of clause 4.20 or a group "
                f"({', '.join(sorted(OPERATION_GROUPS))})"
            )
    return tuple(dict.fromkeys(items))


def _tenant(raw: object) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw:
        raise BadRequestData("tenant must be a non-empty string")
    return check_tenant(raw)


def _context_source_info(raw: object) -> tuple[tuple[str, str], ...]:
    if raw is None:
        return ()
    items = [raw] if isinstance(raw, dict) else _array(raw, "contextSourceInfo")
    out: list[tuple[str, str]] = []
    for n, item in enumerate(items):
        pair = _object(item, f"contextSourceInfo[{n}]")
        key, value = pair.get("key"), pair.get("value")
        if set(pair) != {"key", "value"} or not isinstance(key, str) or not isinstance(value, str):
            raise BadRequestData(
                f'contextSourceInfo[{n}] must be {{"key": string, "value": string}}'
            )
        if not _HEADER_NAME.match(key):
            raise BadRequestData(f"contextSourceInfo key {key!r} is not a valid HTTP header name")
        if key.lower() in RESERVED_HEADERS:
            raise BadRequestData(f"contextSourceInfo key {key!r} is reserved by the broker")
        if any(c in value for c in "\r\n\0"):
            raise BadRequestData(f"contextSourceInfo value of {key!r} has a line break")
        if key == JSONLD_CONTEXT_KEY:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise BadRequestData("contextSourceInfo jsonldContext must be an http(s) URL")
        out.append((key, value))
    return tuple(out)


def _optional_string(data: Doc, key: str) -> str | None:
    value = data.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise BadRequestData(f"{key} must be a non-empty string")
    return value


def _interval(data: Doc, key: str) -> Doc | None:
    if key not in data:
        return None
    raw = _object(data[key], key)
    if "startAt" not in raw:
        raise BadRequestData(f"{key} needs startAt (clause 5.2.11)")
    if set(raw) - {"startAt", "endAt"}:
        raise BadRequestData(f"{key} holds only startAt and endAt")
    start = check_datetime(raw["startAt"], f"{key}.startAt")
    out = {"startAt": start}
    if "endAt" in raw:
        end = check_datetime(raw["endAt"], f"{key}.endAt")
        if _parse_time(end) <= _parse_time(start):
            raise BadRequestData(f"{key}.endAt must be after startAt")
        out["endAt"] = end
    return out


def _management(raw: object) -> Management | None:
    if raw is None:
        return None
    data = _object(raw, "management")
    unknown = set(data) - {"localOnly", "timeout", "cooldown", "cacheDuration"}
    if unknown:
        raise BadRequestData(f"management has unknown members: {', '.join(sorted(unknown))}")
    local_only = data.get("localOnly", False)
    if not isinstance(local_only, bool):
        raise BadRequestData("management.localOnly must be true or false")
    numbers: dict[str, float | None] = {}
    for key in ("timeout", "cooldown", "cacheDuration"):
        value = data.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
        ):
            raise BadRequestData(f"management.{key} must be a positive number of milliseconds")
        numbers[key] = float(value) if value is not None else None
    return Management(local_only, numbers["timeout"], numbers["cooldown"], numbers["cacheDuration"])


def _scope(raw: object) -> tuple[str, ...]:
    if raw is None:
        return ()
    items = raw if isinstance(raw, list) else [raw]
    for item in items:
        if not isinstance(item, str) or not re.match(r"^/?[^\s/]+(/[^\s/]+)*$|^/$", item):
            raise BadRequestData(f"scope must be a path like /City/District, got {item!r}")
    return tuple(items)


def local_conflict(reg: Registration, service: EntityService) -> None:
    """Clause 5.9.2.4: an exclusive registration of attributes the local twin already holds,
    or a redirect registration of entities it already holds, is refused (409)."""
    if reg.mode not in ("exclusive", "redirect"):
        return
    for info in reg.information:
        names = info.names
        for sel in info.entities or (None,):
            if sel is not None and sel.id is not None:
                found = service.get_many([sel.id])
                docs = [found[sel.id][0]] if sel.id in found else []
                docs = [d for d in docs if sel.type in d.get("type", [])]
            else:
                query = EntityQuery(
                    types=TypeName(sel.type) if sel is not None else None,
                    id_pattern=sel.id_pattern if sel is not None else None,
                    attrs=set(names) if names else None,
                    limit=1,
                )
                docs = service.query(query).documents
            for doc in docs:
                held = sorted(names & set(doc)) if names else []
                if names and not held:
                    continue
                what = f"attributes {', '.join(held)} of" if held else "entity"
                raise AlreadyExists(
                    f"the local twin already holds {what} {doc['id']!r}: a {reg.mode} "
                    "registration of them would hide local data; remove it first"
                )


def render(reg: Registration, terms: Terms, stats: RegistrationStats | None = None) -> Doc:
    """The registration as JSON, names compacted with `terms` (clause 5.2.9)."""
    out: Doc = {"id": reg.id, "type": REGISTRATION_TYPE}
    if reg.registration_name:
        out["registrationName"] = reg.registration_name
    if reg.description:
        out["description"] = reg.description
    information = []
    for info in reg.information:
        item: Doc = {}
        if info.entities:
            entities = []
            for sel in info.entities:
                e: Doc = {"type": terms.compact(sel.type)}
                if sel.id is not None:
                    e["id"] = sel.id
                if sel.id_pattern is not None:
                    e["idPattern"] = sel.id_pattern
                entities.append(e)
            item["entities"] = entities
        if info.property_names:
            item["propertyNames"] = [terms.compact(n) for n in info.property_names]
        if info.relationship_names:
            item["relationshipNames"] = [terms.compact(n) for n in info.relationship_names]
        information.append(item)
    out["information"] = information
    out["endpoint"] = reg.endpoint
    out["mode"] = reg.mode
    out["operations"] = list(reg.operations)
    if reg.tenant is not None:
        out["tenant"] = reg.tenant
    if reg.context_source_info:
        out["contextSourceInfo"] = [{"key": k, "value": v} for k, v in reg.context_source_info]
    if reg.expires_at:
        out["expiresAt"] = reg.expires_at
    if reg.observation_interval:
        out["observationInterval"] = reg.observation_interval
    if reg.management_interval:
        out["managementInterval"] = reg.management_interval
    if reg.management is not None:
        m = reg.management
        management: Doc = {"localOnly": m.local_only} if m.local_only else {}
        for key, value in (
            ("timeout", m.timeout),
            ("cooldown", m.cooldown),
            ("cacheDuration", m.cache_duration),
        ):
            if value is not None:
                management[key] = int(value) if value.is_integer() else value
        out["management"] = management
    if reg.scope:
        out["scope"] = reg.scope[0] if len(reg.scope) == 1 else list(reg.scope)
    out.update(dict(reg.extra))
    if stats is not None:
        out.update(stats.render())
    return out


# -- storage --------------------------------------------------------------------------------


@dataclass
class RegistrationStats:
    """Read-only status members (clause 5.2.9): kept in memory, not persisted."""

    times_sent: int = 0
    times_failed: int = 0
    last_success: str | None = None
    last_failure: str | None = None
    failed_at: float | None = None  # monotonic, for the cooldown

    def render(self) -> Doc:
        out: Doc = {"timesSent": self.times_sent, "timesFailed": self.times_failed}
        if self.times_sent:
            out["status"] = "failed" if self.failed_at is not None else "ok"
        if self.last_success:
            out["lastSuccess"] = self.last_success
        if self.last_failure:
            out["lastFailure"] = self.last_failure
        return out


@dataclass
class _Tenant:
    registrations: dict[str, Registration] = field(default_factory=dict)
    stats: dict[str, RegistrationStats] = field(default_factory=dict)


REGISTRATIONS = "registrations"  # the state store's collection, per tenant, keyed by id


class RegistrationStore:
    """Registrations per tenant, in the state store (collection `registrations`).

    The in-memory copy is the cache every query reads; each change is written to the store
    first (one transaction) and then replaces the cached entry, under one lock, so the next
    query after a PATCH or DELETE sees the new state and an acknowledged change survives a crash.
    """

    def __init__(self, state: StateStore | None = None) -> None:
        self.state = state if state is not None else memory_state_store()
        self._tenants: dict[str, _Tenant] = {}
        self._lock = threading.RLock()

    # -- reads ------------------------------------------------------------------------------

    def registrations(self, tenant: str) -> list[Registration]:
        return list(self._tenant(tenant).registrations.values())

    def get(self, tenant: str, reg_id: str) -> Registration:
        found = self._tenant(tenant).registrations.get(reg_id)
        if found is None:
            raise ResourceNotFound(f"context source registration {reg_id!r} not found")
        return found

    def stats(self, tenant: str, reg_id: str) -> RegistrationStats:
        with self._lock:
            return self._tenant(tenant).stats.setdefault(reg_id, RegistrationStats())

    def matching(self, tenant: str, test: Callable[[Registration], bool]) -> list[Registration]:
        return [r for r in self._tenant(tenant).registrations.values() if test(r)]

    # -- writes -----------------------------------------------------------------------------

    def create(self, tenant: str, reg: Registration) -> None:
        with self._lock:
            state = self._tenant(tenant)
            if reg.id in state.registrations:
                raise AlreadyExists(f"context source registration {reg.id!r} already exists")
            self._save(tenant, {**state.registrations, reg.id: reg})

    def update(
        self, tenant: str, reg_id: str, change: Callable[[Registration], Registration]
    ) -> Registration:
        with self._lock:
            new = change(self.get(tenant, reg_id))
            self._save(tenant, {**self._tenant(tenant).registrations, reg_id: new})
            return new

    def delete(self, tenant: str, reg_id: str) -> None:
        with self._lock:
            self.get(tenant, reg_id)
            remaining = dict(self._tenant(tenant).registrations)
            del remaining[reg_id]
            self._save(tenant, remaining)
            self._tenant(tenant).stats.pop(reg_id, None)

    def record(self, tenant: str, reg_id: str, *, ok: bool) -> None:
        """Count one distributed operation sent to this source (status members)."""
        with self._lock:
            stats = self._tenant(tenant).stats.setdefault(reg_id, RegistrationStats())
            stats.times_sent += 1
            if ok:
                stats.last_success = now_iso()
                stats.failed_at = None
            else:
                stats.times_failed += 1
                stats.last_failure = now_iso()
                stats.failed_at = time.monotonic()

    def cooling_down(self, tenant: str, reg: Registration) -> bool:
        """Within `management.cooldown` ms after a failure, the source is not contacted."""
        if reg.management is None or reg.management.cooldown is None:
            return False
        stats = self._tenant(tenant).stats.get(reg.id)
        if stats is None or stats.failed_at is None:
            return False
        return time.monotonic() - stats.failed_at < reg.management.cooldown / 1000

    # -- persistence ------------------------------------------------------------------------

    def _tenant(self, tenant: str) -> _Tenant:
        state = self._tenants.get(tenant)
        if state is None:
            with self._lock:
                state = self._tenants.get(tenant)
                if state is None:
                    state = _Tenant(self._load(tenant))
                    self._tenants[tenant] = state
        return state

    def _load(self, tenant: str) -> dict[str, Registration]:
        return {
            reg.id: reg
            for reg in (_stored(doc) for _, doc in self.state.list(REGISTRATIONS, tenant))
        }

    def _save(self, tenant: str, registrations: dict[str, Registration]) -> None:
        """Writes what changed between the cached registrations and these, in one transaction."""
        before = self._tenant(tenant).registrations
        with self.state.transaction() as tx:
            for reg_id in before.keys() - registrations.keys():
                tx.delete(REGISTRATIONS, tenant, reg_id)
            for reg_id, reg in registrations.items():
                if before.get(reg_id) is not reg:
                    tx.put(REGISTRATIONS, tenant, reg_id, _document(reg))
        self._tenant(tenant).registrations = registrations


def _document(reg: Registration) -> Doc:
    """A registration as stored: rendered in expanded terms, with its timestamps."""
    doc = render(reg, _IdentityTerms())
    doc["createdAt"], doc["modifiedAt"] = reg.created_at, reg.modified_at
    return doc


def _stored(doc: Doc) -> Registration:
    reg = RegistrationReader(_IdentityTerms())._read(doc, doc["id"], expanded_terms=True)
    return replace(reg, created_at=doc.get("createdAt", ""), modified_at=doc.get("modifiedAt", ""))


def import_legacy_registrations(tx: StateTransaction, directory: Path) -> int:
    """The store's files before the state store: `<data dir>/registrations/<tenant>.json`,
    a JSON array of stored documents (`_default.json`: the default tenant)."""
    count = 0
    for path in sorted(directory.glob("*.json")):
        tenant = "" if path.stem == "_default" else path.stem
        try:
            docs = json.loads(path.read_text())
            for doc in docs:
                _stored(doc)  # as a start read them: a bad one stops the import
        except (OSError, ValueError, KeyError, TypeError, NgsiLdError) as error:
            raise ValueError(f"cannot import the registrations file {path}: {error!r}") from None
        for doc in docs:
            tx.put(REGISTRATIONS, tenant, doc["id"], doc)
            count += 1
    return count
