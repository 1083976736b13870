"""Distributed entity queries and retrievals (ETSI GS CIM 009 clauses 4.3.6, 6.3.17, 6.3.18).

GET /entities and GET /entities/{id} ask every context source whose registration matches, in
parallel, with the caller's query (q, type, attrs, geoQ, scopeQ, pick, the @context Link, the
registration's tenant and contextSourceInfo headers), and merge their entities with the local
ones (`ngsild.merge`). Loops are cut with the `Via` header: each forwarded request carries
this broker's alias, and a request that already names it is answered from local data only.
A source that fails does not fail the query: it is reported in an `NGSILD-Warning` header
(clause 6.3.17: `199` could not be reached, `299` answered with an error, `111` answered data
that could not be read), and the registration's status members count it.

No HTTP framework here: the API hands over what the caller asked as a `CallerRequest`, and
`Federation` is built once by the composition root with everything it uses (the registrations,
a context resolver, the outbound guard's client, this broker's alias, the limits).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import httpx
from anyio import to_thread

from urbis.ngsild.merge import EntityMerger
from urbis.ngsild.registrations import Registration, RegistrationStore
from urbis.twin.caller_view import CallerView
from urbis.twin.context import ContextResolver
from urbis.twin.errors import NgsiLdError, ResourceNotFound, TooManyResults
from urbis.twin.linkheader import CONTEXT_REL
from urbis.twin.model import EntityReader
from urbis.twin.outbound import OutboundGuard, fetch_failed, guarded_async_client
from urbis.twin.query.plan import EntityQuery
from urbis.twin.query.selector import EntitySelector
from urbis.twin.query.typeexpr import TypeExpr, type_names
from urbis.twin.state import StateStore
from urbis.twin.terms import Terms

Doc = dict[str, Any]
WARNING_HEADER = "NGSILD-Warning"
# Parameters the broker sets itself on forwarded queries; everything else passes verbatim.
_OWN_PARAMS = frozenset(
    {"limit", "offset", "count", "options", "format", "lang", "geometryProperty", "local",
     "localOnly", "attrs", "pick", "omit"}
)  # fmt: skip
_LIMITS = httpx.Limits(max_connections=200, max_keepalive_connections=50)


@dataclass(frozen=True)
class SourceWarning:
    """One warning-value of the NGSILD-Warning header (RFC 7234 clause 5.5 syntax)."""

    code: int
    agent: str
    text: str

    def header(self) -> str:
        text = self.text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
        return f'{self.code} {self.agent} "{text}"'


@dataclass
class FederatedResult:
    documents: list[Doc]
    total: int | None = None
    warnings: list[str] = field(default_factory=list)

    def headers(self) -> dict[str, str]:
        return {WARNING_HEADER: ", ".join(self.warnings)} if self.warnings else {}


@dataclass(frozen=True)
class CallerRequest:
    """What a distributed operation needs of the caller's request."""

    tenant: str
    params: Sequence[tuple[str, str]]  # the query string, in order, repeated keys kept
    terms: Terms  # the caller's @context, resolved
    context: Any = None  # that @context as given (a URL is forwarded in the Link header)
    via: str | None = None  # the request's Via header

    def get(self, key: str) -> str | None:
        """The last value of a repeated parameter, as Starlette's query parameters answer."""
        values = self.getlist(key)
        return values[-1] if values else None

    def getlist(self, key: str) -> list[str]:
        return [v for k, v in self.params if k == key]

    def local_only(self) -> bool:
        """`local=true` (clause 6.3.x) or its alias `localOnly=true`: no distributed operation."""
        return any((self.get(k) or "").lower() == "true" for k in ("local", "localOnly"))

    def via_with(self, alias: str) -> str:
        own = f"1.1 {alias}"
        return f"{self.via}, {own}" if self.via else own


@dataclass
class _SourceAnswer:
    registration: Registration
    documents: list[Doc] = field(default_factory=list)
    total: int | None = None
    warnings: list[str] = field(default_factory=list)


# -- identity and loops ---------------------------------------------------------------------


FEDERATION: Final = "federation"  # the state store's collection: this broker's own settings


def broker_alias(configured: str | None, state: StateStore, legacy_dir: Path | None = None) -> str:
    """This broker's name in Via headers: the setting, else one kept in the state store (so it
    survives restarts and travels with `urbis export`); a `federation-alias` file of an older
    data directory is taken over once."""
    if configured:
        return configured
    stored = state.get(FEDERATION, "", "alias")
    if stored is not None and isinstance(stored.get("alias"), str):
        return str(stored["alias"])
    legacy = Path(legacy_dir) / "federation-alias" if legacy_dir is not None else None
    if legacy is not None and legacy.exists():
        alias = legacy.read_text().strip()
    else:
        alias = f"urbis-{uuid.uuid4().hex[:12]}"
    state.put(FEDERATION, "", "alias", {"alias": alias})
    return alias


def via_names(header: str | None) -> list[str]:
    """The received-by names of a Via header (`1.1 alias, 1.1 other`)."""
    names = []
    for entry in (header or "").split(","):
        parts = entry.split()
        if len(parts) >= 2:
            names.append(parts[1])
    return names


class Federation:
    """The distributed operations of one broker, with its one pooled HTTP client."""

    def __init__(
        self,
        registrations: RegistrationStore,
        resolver: ContextResolver,
        guard: OutboundGuard,
        *,
        alias: str,
        timeout: float = 5.0,
        max_window: int = 1000,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        """`timeout`: seconds a source has (a registration's management.timeout overrides
        it); `max_window`: the largest offset + limit of a distributed query. The client goes
        through `guard` (sources: public addresses unless allowed); close it with `aclose`."""
        self.registrations = registrations
        self.resolver = resolver
        self.alias = alias
        self.timeout = timeout
        self.max_window = max_window
        self.client = client or guarded_async_client(guard, follow_redirects=False, limits=_LIMITS)

    async def aclose(self) -> None:
        await self.client.aclose()

    # -- query ------------------------------------------------------------------------------

    async def query(
        self, caller: CallerRequest, query: EntityQuery, view: CallerView
    ) -> FederatedResult:
        """GET /entities over the local twin and every matching registered source, each part as
        the caller may see it (the access port) before the parts are merged."""
        tenant = caller.tenant
        regs = [] if caller.local_only() else _matching(self.registrations, tenant, query)
        if not regs:
            result = await to_thread.run_sync(view.query, query)
            return FederatedResult(result.documents, result.total)
        window = query.offset + query.limit
        if window > self.max_window:
            raise TooManyResults(
                f"a distributed query reaches at most {self.max_window} "
                f"entities (offset + limit = {window}); narrow it, or ask local=true"
            )
        warnings: list[str] = []
        forward = [r for r in regs if self._may_forward(caller, r, warnings)]
        local_task = to_thread.run_sync(view.query, replace(query, offset=0, limit=window))
        remote_tasks = asyncio.gather(
            *(self._query_source(caller, query, window, reg) for reg in forward)
        )
        local, remote = await asyncio.gather(local_task, remote_tasks)
        if not view.unrestricted:
            await to_thread.run_sync(_as_seen, view, remote, query, window)
        merger = EntityMerger()
        withdrawn = 0
        local_docs = []
        for doc in local.documents:
            kept = _withdraw(doc, regs)
            if kept is None:
                withdrawn += 1
            else:
                local_docs.append(kept)
        merger.add(local_docs)
        added = len(local_docs)
        for answer in sorted(remote, key=lambda a: a.registration.mode == "auxiliary"):
            merger.add(answer.documents, auxiliary=answer.registration.mode == "auxiliary")
            added += len(answer.documents)
            warnings.extend(answer.warnings)
        merged = merger.documents()
        total = None
        if query.count:
            total = _count(local.total, remote, window, len(merged), added, withdrawn)
        return FederatedResult(merged[query.offset : window], total, warnings)

    def _may_forward(self, caller: CallerRequest, reg: Registration, warnings: list[str]) -> bool:
        """Loops (our alias already in Via) and sources cooling down after a failure are
        skipped."""
        if self.alias in via_names(caller.via):
            warnings.append(
                SourceWarning(
                    199, reg.agent, f"not forwarded: loop detected, {self.alias} is already in Via"
                ).header()
            )
            return False
        if self.registrations.cooling_down(caller.tenant, reg):
            cooling = SourceWarning(199, reg.agent, "not contacted: cooling down after a failure")
            warnings.append(cooling.header())
            return False
        return True

    async def _query_source(
        self, caller: CallerRequest, query: EntityQuery, window: int, reg: Registration
    ) -> _SourceAnswer:
        terms = await self._source_terms(caller, reg)
        params = _forward_params(caller, query, window, reg, terms)
        answer = _SourceAnswer(reg)
        response = await self._send(caller, reg, "/ngsi-ld/v1/entities", params, answer)
        if response is None:
            return answer
        body = _json(response, reg, answer)
        if not isinstance(body, list):
            if body is not None:
                answer.warnings.append(
                    SourceWarning(111, reg.agent, "the answer is not a JSON array").header()
                )
            return answer
        answer.documents = _read_entities(body, terms, reg, answer)
        count = response.headers.get("ngsild-results-count")
        if count is not None and count.isdigit():
            answer.total = int(count)
        return answer

    # -- retrieve ---------------------------------------------------------------------------

    async def retrieve(
        self,
        caller: CallerRequest,
        entity_id: str,
        view: CallerView,
        *,
        types: TypeExpr | None,
        attrs: set[str] | None,
    ) -> tuple[Doc | None, list[str]]:
        """GET /entities/{id}: the local entity merged with what matching sources hold of it."""
        tenant = caller.tenant
        regs = (
            []
            if caller.local_only()
            else self.registrations.matching(
                tenant,
                lambda r: r.applies_to_query(
                    "retrieveEntity", ids=[entity_id], types=types, attrs=attrs
                ),
            )
        )
        if not regs:
            return await _local(view, entity_id), []
        warnings: list[str] = []
        forward = [r for r in regs if self._may_forward(caller, r, warnings)]
        tasks = [
            asyncio.ensure_future(self._retrieve_source(caller, entity_id, attrs, reg))
            for reg in forward
        ]
        try:
            local: Doc | None = await _local(view, entity_id)
        except ResourceNotFound:
            local = None
        answers: list[_SourceAnswer] = list(await asyncio.gather(*tasks))
        if not view.unrestricted:
            for answer in answers:  # as the caller may see them
                answer.documents = await to_thread.run_sync(view.remote, answer.documents)
        merger = EntityMerger()
        if local is not None:
            kept = _withdraw(local, regs)
            if kept is not None:
                merger.add([kept])
        for answer in sorted(answers, key=lambda a: a.registration.mode == "auxiliary"):
            merger.add(answer.documents, auxiliary=answer.registration.mode == "auxiliary")
            warnings.extend(answer.warnings)
        merged = merger.documents()
        return (merged[0] if merged else None), warnings

    async def _retrieve_source(
        self, caller: CallerRequest, entity_id: str, attrs: set[str] | None, reg: Registration
    ) -> _SourceAnswer:
        terms = await self._source_terms(caller, reg)
        params = [(k, v) for k, v in caller.params if k == "type"]
        params += _projection(caller)
        wanted = _forward_attrs(attrs, reg)
        if wanted is not None:
            params.append(("attrs", ",".join(terms.compact(a) for a in sorted(wanted))))
        params.append(("options", "sysAttrs"))
        if reg.management is not None and reg.management.local_only:
            params.append(("local", "true"))
        answer = _SourceAnswer(reg)
        path = "/ngsi-ld/v1/entities/" + quote(entity_id, safe=":")
        response = await self._send(caller, reg, path, params, answer, missing_ok=True)
        if response is None or response.status_code == 404:
            return answer
        body = _json(response, reg, answer)
        if isinstance(body, dict):
            answer.documents = _read_entities([body], terms, reg, answer)
        elif body is not None:
            answer.warnings.append(
                SourceWarning(111, reg.agent, "the answer is not a JSON object").header()
            )
        return answer

    # -- one request to one source ----------------------------------------------------------

    async def _source_terms(self, caller: CallerRequest, reg: Registration) -> Terms:
        """The caller's @context, unless the registration names the source's own
        (jsonldContext); a context not cached yet is fetched in a worker thread."""
        if reg.jsonld_context is None:
            return caller.terms
        terms = self.resolver.cached(reg.jsonld_context)
        if terms is None:
            terms = await to_thread.run_sync(self.resolver.resolve, reg.jsonld_context)
        return terms

    async def _send(
        self,
        caller: CallerRequest,
        reg: Registration,
        path: str,
        params: list[tuple[str, str]],
        answer: _SourceAnswer,
        *,
        missing_ok: bool = False,
    ) -> httpx.Response | None:
        """The source's answer, or None with a warning when it failed; counts it either way."""
        tenant = caller.tenant
        headers = {"Accept": "application/json", "Via": caller.via_with(self.alias)}
        context_url = reg.jsonld_context or (
            caller.context if isinstance(caller.context, str) else None
        )
        if context_url:
            headers["Link"] = f'<{context_url}>; rel="{CONTEXT_REL}"; type="application/ld+json"'
        if reg.tenant is not None:
            headers["NGSILD-Tenant"] = reg.tenant
        headers.update(reg.headers)
        timeout = self.timeout
        if reg.management is not None and reg.management.timeout is not None:
            timeout = reg.management.timeout / 1000
        url = reg.endpoint + path
        try:
            request_sent = self.client.get(
                url, params=httpx.QueryParams(tuple(params)), headers=headers, timeout=timeout
            )
            # httpx's timeout bounds each phase; wait_for bounds the whole exchange.
            response = await asyncio.wait_for(request_sent, timeout)
        except (httpx.HTTPError, TimeoutError) as exc:
            # One text for refused, closed and timed out: the warnings are no port scanner.
            why = exc if str(exc) else f"no answer within {timeout:g} s"
            self._fail(tenant, reg, answer, 199, f"{url}: {fetch_failed('source', url, why)}")
            return None
        remote_warning = response.headers.get(WARNING_HEADER.lower())
        if remote_warning:
            answer.warnings.append(remote_warning)
        if response.is_success or (missing_ok and response.status_code == 404):
            self.registrations.record(tenant, reg.id, ok=True)
            return response
        detail = _problem_detail(response)
        self._fail(tenant, reg, answer, 299, f"{url} answered {response.status_code}: {detail}")
        return None

    def _fail(
        self, tenant: str, reg: Registration, answer: _SourceAnswer, code: int, text: str
    ) -> None:
        self.registrations.record(tenant, reg.id, ok=False)
        answer.warnings.append(SourceWarning(code, reg.agent, text).header())


# -- what is forwarded ----------------------------------------------------------------------


def _matching(store: RegistrationStore, tenant: str, query: EntityQuery) -> list[Registration]:
    """Registrations some of whose entity infos may select what the query selects."""
    if query.selectors:  # POST query with EntitySelectors: not distributed yet
        return []
    wanted = EntitySelector.of(query.ids, query.id_pattern, query.types)  # compiled once
    return store.matching(tenant, lambda r: r.applies_to("queryEntity", wanted, query.attrs))


async def _local(view: CallerView, entity_id: str) -> Doc:
    """One key lookup runs here, cheaper than a worker-thread hop; a policy's decision may not."""
    if view.unrestricted:
        return view.get(entity_id)
    return await to_thread.run_sync(view.get, entity_id)


def _as_seen(
    view: CallerView, answers: Sequence[_SourceAnswer], query: EntityQuery, window: int
) -> None:
    """Sources' entities as the caller may see them, re-matched after the policy changed them.
    A source's count is kept only where its whole answer was seen; beyond the window the
    hidden entities cannot be told apart, so such a count is refused rather than guessed."""
    for answer in answers:
        before = len(answer.documents)
        answer.documents = view.remote(answer.documents, query)
        if answer.total is not None and answer.total <= window:
            answer.total = len(answer.documents)
        elif query.count and len(answer.documents) < before:
            raise TooManyResults(
                f"this count would include entities of {answer.registration.agent} that the "
                f"access policy hides: ask without count, or narrow the query to {window} "
                "entities per source"
            )


def _withdraw(doc: Doc, regs: Sequence[Registration]) -> Doc | None:
    """Exclusive and redirect sources own what they register: local copies are not served."""
    out: Doc | None = doc
    for reg in regs:
        if out is None:
            break
        if reg.mode in ("exclusive", "redirect"):
            out = reg.withdraw(out)
    return out


def _count(
    local_total: int | None,
    remote: Sequence[_SourceAnswer],
    window: int,
    merged: int,
    added: int,
    withdrawn: int,
) -> int:
    """Unique entities across sources: exact when every source fitted in the window, else the
    sum of the sources' counts less the duplicates seen in the window."""
    totals = [local_total or 0] + [a.total or len(a.documents) for a in remote]
    if all(t <= window for t in totals):
        return merged
    return sum(totals) - withdrawn - (added - merged)


def _forward_params(
    caller: CallerRequest, query: EntityQuery, window: int, reg: Registration, terms: Terms
) -> list[tuple[str, str]]:
    """The caller's query verbatim (q, type, geoQ, scopeQ, id...), our paging and format."""
    params = [(k, v) for k, v in caller.params if k not in _OWN_PARAMS]
    if reg.jsonld_context is not None and query.types is not None:
        names = type_names(query.types)
        if names is not None:  # re-compact the type with the source's own @context
            params = [(k, v) for k, v in params if k != "type"]
            params.append(("type", ",".join(terms.compact(n) for n in names)))
    if query.ids is None and query.id_pattern is None:
        ids = reg.registered_ids()
        if ids:
            params.append(("id", ",".join(ids)))
    attrs = _forward_attrs(query.attrs, reg)
    if attrs is not None:
        params.append(("attrs", ",".join(terms.compact(a) for a in sorted(attrs))))
    params += _projection(caller)
    params += [("limit", str(window)), ("offset", "0"), ("options", "sysAttrs")]
    if query.count:
        params.append(("count", "true"))
    if reg.management is not None and reg.management.local_only:
        params.append(("local", "true"))
    return params


def _projection(caller: CallerRequest) -> list[tuple[str, str]]:
    """pick keeps id and type, omit never drops them: the merge needs both."""
    params = []
    for key in ("pick", "omit"):
        raw = caller.getlist(key)
        names = [n.strip() for v in raw for n in v.split(",") if n.strip()]
        if key == "pick" and names:
            names = list(dict.fromkeys(["id", "type", *names]))
        elif key == "omit":
            names = [n for n in names if n not in ("id", "type")]
        if names:
            params.append((key, ",".join(names)))
    return params


def _forward_attrs(wanted: set[str] | None, reg: Registration) -> set[str] | None:
    registered = reg.registered_names()
    if registered is None:
        return wanted
    if wanted is None:
        return set(registered)
    return wanted & registered


# -- reading what a source answered ---------------------------------------------------------


def _problem_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("title") or body)[:200]
    return str(body)[:200]


def _json(response: httpx.Response, reg: Registration, answer: _SourceAnswer) -> Any:
    try:
        return response.json()
    except ValueError:
        answer.warnings.append(SourceWarning(111, reg.agent, "the answer is not JSON").header())
        return None


def _read_entities(
    body: list[Any], terms: Terms, reg: Registration, answer: _SourceAnswer
) -> list[Doc]:
    """Normalized entities (with sysAttrs) back into canonical documents, narrowed to what the
    registration covers; an entity that cannot be read is reported and left out."""
    reader = EntityReader(terms)
    docs = []
    for raw in body:
        try:
            doc = reader.entity(raw)
        except NgsiLdError as error:
            what = raw.get("id") if isinstance(raw, dict) else None
            answer.warnings.append(
                SourceWarning(
                    111, reg.agent, f"entity {what!r} unreadable: {error.detail}"
                ).header()
            )
            continue
        _restore_system_members(doc, raw, terms)
        narrowed = reg.narrow(doc)
        if narrowed is not None:
            docs.append(narrowed)
    return docs


def _restore_system_members(doc: Doc, raw: Doc, terms: Terms) -> None:
    """The reader stamps `now`; the source's createdAt/modifiedAt decide merge conflicts."""
    for key in ("createdAt", "modifiedAt"):
        if isinstance(raw.get(key), str):
            doc[key] = raw[key]
        else:
            doc.pop(key, None)
    for name, value in raw.items():
        instances = doc.get(terms.expand(name))
        if not isinstance(instances, list) or name in ("type", "scope"):
            continue
        raw_instances = value if isinstance(value, list) else [value]
        by_dataset = {r.get("datasetId"): r for r in raw_instances if isinstance(r, dict)}
        for inst in instances:
            source = by_dataset.get(inst.get("datasetId"), {})
            for key in ("createdAt", "modifiedAt"):
                if isinstance(source.get(key), str):
                    inst[key] = source[key]
                else:
                    inst.pop(key, None)
