"""Distributed entity queries and retrievals (ETSI GS CIM 009 clauses 4.3.6, 6.3.17, 6.3.18).

GET /entities and GET /entities/{id} ask every context source whose registration matches, in
parallel, with the caller's query (q, type, attrs, geoQ, scopeQ, pick, the @context Link, the
registration's tenant and contextSourceInfo headers), and merge their entities with the local
ones (`twin.federation`). Loops are cut with the `Via` header: each forwarded request carries
this broker's alias, and a request that already names it is answered from local data only.
A source that fails does not fail the query: it is reported in an `NGSILD-Warning` header
(clause 6.3.17: `199` could not be reached, `299` answered with an error, `111` answered data
that could not be read), and the registration's status members count it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from fastapi import Request
from starlette.concurrency import run_in_threadpool

from urbis.api.deps import AppState, LdContext, resolve_context_async, tenant_name
from urbis.api.http import CONTEXT_REL
from urbis.api.settings import Settings
from urbis.ngsild.merge import EntityMerger
from urbis.ngsild.registrations import Registration, RegistrationStore
from urbis.twin.caller_view import CallerView
from urbis.twin.errors import NgsiLdError, ResourceNotFound, TooManyResults
from urbis.twin.model import EntityReader
from urbis.twin.outbound import fetch_failed, guarded_async_client
from urbis.twin.query.plan import EntityQuery
from urbis.twin.query.selector import EntitySelector
from urbis.twin.query.typeexpr import TypeExpr, type_names
from urbis.twin.terms import Terms

Doc = dict[str, Any]
WARNING_HEADER = "NGSILD-Warning"
# Parameters the broker sets itself on forwarded queries; everything else passes verbatim.
_OWN_PARAMS = frozenset(
    {"limit", "offset", "count", "options", "format", "lang", "geometryProperty", "local",
     "localOnly", "attrs", "pick", "omit"}
)  # fmt: skip


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


@dataclass
class _SourceAnswer:
    registration: Registration
    documents: list[Doc] = field(default_factory=list)
    total: int | None = None
    warnings: list[str] = field(default_factory=list)


# -- identity and loops ---------------------------------------------------------------------


def broker_alias(settings: Settings) -> str:
    """This broker's name in Via headers: the setting, else one kept in the data directory."""
    if settings.federation_alias:
        return settings.federation_alias
    if settings.data_dir is None:
        return f"urbis-{uuid.uuid4().hex[:12]}"
    path = Path(settings.data_dir) / "federation-alias"
    if path.exists():
        return path.read_text().strip()
    alias = f"urbis-{uuid.uuid4().hex[:12]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(alias + "\n")
    return alias


def via_names(header: str | None) -> list[str]:
    """The received-by names of a Via header (`1.1 alias, 1.1 other`)."""
    names = []
    for entry in (header or "").split(","):
        parts = entry.split()
        if len(parts) >= 2:
            names.append(parts[1])
    return names


def _via(request: Request, alias: str) -> str:
    previous = request.headers.get("via")
    own = f"1.1 {alias}"
    return f"{previous}, {own}" if previous else own


def local_only(request: Request) -> bool:
    """`local=true` (clause 6.3.x) or its alias `localOnly=true`: no distributed operation."""
    params = request.query_params
    return any((params.get(k) or "").lower() == "true" for k in ("local", "localOnly"))


def http_client(state: AppState) -> httpx.AsyncClient:
    """One pooled client per app, made on first use and closed by the app's lifespan."""
    if state.http is None:
        state.http = guarded_async_client(  # sources: public addresses unless allowed
            state.outbound,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        )
    client: httpx.AsyncClient = state.http
    return client


# -- query ----------------------------------------------------------------------------------


async def federated_query(
    request: Request,
    state: AppState,
    ctx: LdContext,
    query: EntityQuery,
    view: CallerView,
) -> FederatedResult:
    """GET /entities over the local twin and every matching registered source, each part as
    the caller may see it (the access port) before the parts are merged."""
    tenant = tenant_name(request)
    regs = [] if local_only(request) else _matching(state.registrations, tenant, query)
    if not regs:
        result = await run_in_threadpool(view.query, query)
        return FederatedResult(result.documents, result.total)
    window = query.offset + query.limit
    if window > state.settings.federation_max_window:
        raise TooManyResults(
            f"a distributed query reaches at most {state.settings.federation_max_window} "
            f"entities (offset + limit = {window}); narrow it, or ask local=true"
        )
    warnings: list[str] = []
    forward = [r for r in regs if _may_forward(request, state, tenant, r, warnings)]
    local_task = run_in_threadpool(view.query, replace(query, offset=0, limit=window))
    remote_tasks = asyncio.gather(
        *(_query_source(request, state, ctx, query, window, reg) for reg in forward)
    )
    local, remote = await asyncio.gather(local_task, remote_tasks)
    if not view.unrestricted:
        await run_in_threadpool(_as_seen, view, remote, query, window)
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


def _matching(store: RegistrationStore, tenant: str, query: EntityQuery) -> list[Registration]:
    """Registrations some of whose entity infos may select what the query selects."""
    if query.selectors:  # POST query with EntitySelectors: not distributed yet
        return []
    wanted = EntitySelector.of(query.ids, query.id_pattern, query.types)  # compiled once
    return store.matching(tenant, lambda r: r.applies_to("queryEntity", wanted, query.attrs))


def _may_forward(
    request: Request, state: AppState, tenant: str, reg: Registration, warnings: list[str]
) -> bool:
    """Loops (our alias already in Via) and sources cooling down after a failure are skipped."""
    if state.alias in via_names(request.headers.get("via")):
        warnings.append(
            SourceWarning(
                199, reg.agent, f"not forwarded: loop detected, {state.alias} is already in Via"
            ).header()
        )
        return False
    if state.registrations.cooling_down(tenant, reg):
        warnings.append(
            SourceWarning(199, reg.agent, "not contacted: cooling down after a failure").header()
        )
        return False
    return True


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


async def _query_source(
    request: Request,
    state: AppState,
    ctx: LdContext,
    query: EntityQuery,
    window: int,
    reg: Registration,
) -> _SourceAnswer:
    terms = await _source_terms(state, ctx, reg)
    params = _forward_params(request, query, window, reg, terms)
    answer = _SourceAnswer(reg)
    response = await _send(request, state, ctx, reg, "/ngsi-ld/v1/entities", params, answer)
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


def _forward_params(
    request: Request, query: EntityQuery, window: int, reg: Registration, terms: Terms
) -> list[tuple[str, str]]:
    """The caller's query verbatim (q, type, geoQ, scopeQ, id...), our paging and format."""
    original = request.query_params
    params = [(k, v) for k, v in original.multi_items() if k not in _OWN_PARAMS]
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
    params += _projection(request)
    params += [("limit", str(window)), ("offset", "0"), ("options", "sysAttrs")]
    if query.count:
        params.append(("count", "true"))
    if reg.management is not None and reg.management.local_only:
        params.append(("local", "true"))
    return params


def _projection(request: Request) -> list[tuple[str, str]]:
    """pick keeps id and type, omit never drops them: the merge needs both."""
    params = []
    for key in ("pick", "omit"):
        raw = request.query_params.getlist(key)
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


# -- retrieve -------------------------------------------------------------------------------


async def federated_retrieve(
    request: Request,
    state: AppState,
    ctx: LdContext,
    entity_id: str,
    view: CallerView,
    *,
    types: TypeExpr | None,
    attrs: set[str] | None,
) -> tuple[Doc | None, list[str]]:
    """GET /entities/{id}: the local entity merged with what matching sources hold of it."""
    tenant = tenant_name(request)
    regs = (
        []
        if local_only(request)
        else state.registrations.matching(
            tenant,
            lambda r: r.applies_to_query(
                "retrieveEntity", ids=[entity_id], types=types, attrs=attrs
            ),
        )
    )
    if not regs:
        return await _local(view, entity_id), []
    warnings: list[str] = []
    forward = [r for r in regs if _may_forward(request, state, tenant, r, warnings)]
    tasks = [
        asyncio.ensure_future(_retrieve_source(request, state, ctx, entity_id, attrs, reg))
        for reg in forward
    ]
    try:
        local: Doc | None = await _local(view, entity_id)
    except ResourceNotFound:
        local = None
    answers: list[_SourceAnswer] = list(await asyncio.gather(*tasks))
    if not view.unrestricted:
        for answer in answers:  # as the caller may see them
            answer.documents = await run_in_threadpool(view.remote, answer.documents)
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


async def _local(view: CallerView, entity_id: str) -> Doc:
    """One key lookup runs here, cheaper than a worker-thread hop; a policy's decision may not."""
    if view.unrestricted:
        return view.get(entity_id)
    return await run_in_threadpool(view.get, entity_id)


async def _retrieve_source(
    request: Request,
    state: AppState,
    ctx: LdContext,
    entity_id: str,
    attrs: set[str] | None,
    reg: Registration,
) -> _SourceAnswer:
    terms = await _source_terms(state, ctx, reg)
    params = [(k, v) for k, v in request.query_params.multi_items() if k == "type"]
    params += _projection(request)
    wanted = _forward_attrs(attrs, reg)
    if wanted is not None:
        params.append(("attrs", ",".join(terms.compact(a) for a in sorted(wanted))))
    params.append(("options", "sysAttrs"))
    if reg.management is not None and reg.management.local_only:
        params.append(("local", "true"))
    answer = _SourceAnswer(reg)
    path = "/ngsi-ld/v1/entities/" + quote(entity_id, safe=":")
    response = await _send(request, state, ctx, reg, path, params, answer, missing_ok=True)
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


# -- one request to one source --------------------------------------------------------------


async def _source_terms(state: AppState, ctx: LdContext, reg: Registration) -> Terms:
    """The caller's @context, unless the registration names the source's own (jsonldContext)."""
    if reg.jsonld_context is None:
        return ctx.terms
    return (await resolve_context_async(state, reg.jsonld_context)).terms


async def _send(
    request: Request,
    state: AppState,
    ctx: LdContext,
    reg: Registration,
    path: str,
    params: list[tuple[str, str]],
    answer: _SourceAnswer,
    *,
    missing_ok: bool = False,
) -> httpx.Response | None:
    """The source's answer, or None with a warning when it failed; counts it either way."""
    tenant = tenant_name(request)
    headers = {"Accept": "application/json", "Via": _via(request, state.alias)}
    context_url = reg.jsonld_context or (ctx.value if isinstance(ctx.value, str) else None)
    if context_url:
        headers["Link"] = f'<{context_url}>; rel="{CONTEXT_REL}"; type="application/ld+json"'
    if reg.tenant is not None:
        headers["NGSILD-Tenant"] = reg.tenant
    headers.update(reg.headers)
    timeout = state.settings.federation_timeout
    if reg.management is not None and reg.management.timeout is not None:
        timeout = reg.management.timeout / 1000
    url = reg.endpoint + path
    try:
        request_sent = http_client(state).get(
            url, params=httpx.QueryParams(tuple(params)), headers=headers, timeout=timeout
        )
        # httpx's timeout bounds each phase; wait_for bounds the whole exchange.
        response = await asyncio.wait_for(request_sent, timeout)
    except (httpx.HTTPError, TimeoutError) as exc:
        # One text for refused, closed and timed out: the warnings are no port scanner.
        why = exc if str(exc) else f"no answer within {timeout:g} s"
        _fail(state, tenant, reg, answer, 199, f"{url}: {fetch_failed('source', url, why)}")
        return None
    remote_warning = response.headers.get(WARNING_HEADER.lower())
    if remote_warning:
        answer.warnings.append(remote_warning)
    if response.is_success or (missing_ok and response.status_code == 404):
        state.registrations.record(tenant, reg.id, ok=True)
        return response
    detail = _problem_detail(response)
    _fail(state, tenant, reg, answer, 299, f"{url} answered {response.status_code}: {detail}")
    return None


def _fail(
    state: AppState, tenant: str, reg: Registration, answer: _SourceAnswer, code: int, text: str
) -> None:
    state.registrations.record(tenant, reg.id, ok=False)
    answer.warnings.append(SourceWarning(code, reg.agent, text).header())


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
