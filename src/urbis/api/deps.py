"""Typed request dependencies: the twin, the tenant, the @context terms, the access gate."""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from pydantic import SecretStr
from starlette.concurrency import run_in_threadpool

from urbis.api.http import CORE_CONTEXT, link_context
from urbis.api.settings import Settings
from urbis.connectors.live import LiveManager
from urbis.connectors.sync import SyncManager
from urbis.ngsild.contexts import ContextRegistry
from urbis.ngsild.federation import Federation
from urbis.ngsild.registrations import RegistrationStore
from urbis.ngsild.subscriptions import Notifier
from urbis.twin.access import AccessPolicy, AllowAll, Caller
from urbis.twin.caller_view import CallerView
from urbis.twin.changes import WriteContext
from urbis.twin.context import ContextResolver
from urbis.twin.core import Twin
from urbis.twin.entities import EntityService
from urbis.twin.errors import BadRequestData, Unauthorized
from urbis.twin.model import EntityReader
from urbis.twin.outbound import OutboundGuard
from urbis.twin.state import StateStore, memory_state_store
from urbis.twin.store.base import DEFAULT_TENANT, check_tenant
from urbis.twin.terms import Terms

log = logging.getLogger("urbis")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# A bearer token is visible ASCII (RFC 6750 b64token, and any punctuation an operator chose).
_TOKEN = re.compile(r"[\x21-\x7e]+")
_READS: set[Callable[..., Any]] = set()
Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


def reads(endpoint: Endpoint) -> Endpoint:
    """Marks a route whose method is not GET as a read (POST /entityOperations/query): the
    access gate classifies operations, not HTTP methods. Put it below the @router lines."""
    _READS.add(endpoint)
    return endpoint


def well_formed_token(token: str) -> bool:
    return bool(_TOKEN.fullmatch(token))


def is_write(request: Request) -> bool:
    if request.method in SAFE_METHODS:
        return False
    return request.scope.get("endpoint") not in _READS


@dataclass
class AppState:
    """The request-facing view of the services, on `app.state.urbis`: what routes and request
    dependencies use. The composition root (api/services.py) builds, starts and stops them."""

    settings: Settings
    twin: Twin
    resolver: ContextResolver  # @context terms (twin/context.py)
    registry: ContextRegistry  # hosted contexts (/jsonldContexts)
    admin_token: SecretStr | None  # a SecretStr so that no repr or log shows it
    outbound: OutboundGuard  # every server-side fetch goes through it (twin/outbound.py)
    notifier: Notifier  # NGSI-LD subscriptions and their delivery (ngsild/subscriptions.py)
    registrations: RegistrationStore  # context source registrations (ngsild/registrations.py)
    federation: Federation  # distributed queries (ngsild/federation.py)
    sources: SyncManager  # connectors: definitions, syncs (connectors/sync.py)
    live: LiveManager  # live sources: MQTT, NGSI-LD (connectors/live.py)
    # What each caller may read (twin/access.py): every read path asks it; allow-all by default.
    access: AccessPolicy = field(default_factory=AllowAll)
    # Everything kept beside the twin (twin/state): one store, opened once, closed at shutdown.
    durable: StateStore = field(default_factory=memory_state_store)

    def reader(self, terms: Terms, *, now: str | None = None) -> EntityReader:
        """Reads request entities with this deployment's checks (service area)."""
        return EntityReader(terms, now=now, area=self.settings.area())


# Dependencies are `async def`: FastAPI runs plain `def` dependencies in a worker thread each,
# and four thread hops per request cost more than the work they wrap.


async def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.urbis
    return state


StateDep = Annotated[AppState, Depends(app_state)]


async def access_gate(request: Request, state: StateDep) -> Caller:
    """Reads are public; writes need the admin bearer token unless the server runs open. The
    Caller it builds is who the access port (twin/access.py) decides each read for."""
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header[:7].lower() == "bearer " else None
    if token and not well_formed_token(token):
        # Never echo the token: it may be a real secret sent with a stray character.
        raise BadRequestData("the bearer token must be visible ASCII characters only")
    expected = state.admin_token
    admin = bool(
        token
        and expected is not None
        # On bytes: compare_digest refuses non-ASCII str (a 500 once).
        and hmac.compare_digest(token.encode("ascii"), _secret_bytes(expected))
    )
    if state.settings.open:
        return Caller(admin=True, anonymous=not admin)
    if is_write(request) and not admin:
        if token:
            raise Unauthorized("the bearer token is not valid for writes")
        raise Unauthorized(
            "writes need 'Authorization: Bearer <admin token>' (URBIS_ADMIN_TOKEN); "
            "start with --open for anonymous local development"
        )
    return Caller(admin=admin, anonymous=token is None)


def _secret_bytes(secret: SecretStr) -> bytes:
    return secret.get_secret_value().encode("utf-8", "surrogateescape")


CallerDep = Annotated[Caller, Depends(access_gate)]


async def admin_only(caller: CallerDep) -> Caller:
    """Admin operations (sources, SPARQL Update, dumps) need the admin token, even to read."""
    if not caller.admin:
        raise Unauthorized("this operation needs 'Authorization: Bearer <admin token>'")
    return caller


AdminDep = Annotated[Caller, Depends(admin_only)]


async def write_context(caller: CallerDep) -> WriteContext:
    """Who writes, for the change events: the admin, or anyone on an open server."""
    return (
        WriteContext.admin() if caller.admin and not caller.anonymous else WriteContext.anonymous()
    )


WriterDep = Annotated[WriteContext, Depends(write_context)]


def tenant_name(request: Request) -> str:
    name = request.headers.get("ngsild-tenant") or request.headers.get("fiware-service")
    return check_tenant(name.strip()) if name else DEFAULT_TENANT


async def tenant_service(request: Request, state: StateDep, _: CallerDep) -> EntityService:
    """Reads of an unknown tenant fail (NonexistentTenant); writes create it (clause 5.5.7)."""
    create = is_write(request)
    name = tenant_name(request)
    if state.twin.is_open(name):
        return state.twin.tenant(name)
    # First use opens the store and rebuilds its spatial index: keep that off the event loop.
    return await run_in_threadpool(lambda: state.twin.tenant(name, create=create))


ServiceDep = Annotated[EntityService, Depends(tenant_service)]


async def caller_view(request: Request, state: StateDep) -> CallerView:
    """The tenant as this caller may read it: every route that reads entity data reads here.

    One dependency that calls the gate and the tenant lookup itself, rather than three nested
    ones: FastAPI's per-dependency bookkeeping cost a GET by id about 10 % (BENCHMARKS.md)."""
    caller = await access_gate(request, state)
    service = await tenant_service(request, state, caller)
    return CallerView.of(service, state.access, caller, tenant_name(request))


ViewDep = Annotated[CallerView, Depends(caller_view)]


@dataclass
class LdContext:
    """The request's @context: its resolved terms and the value to echo in responses."""

    terms: Terms
    value: Any  # URL string, list or inline object; None means the core context only

    def link_url(self) -> str:
        return self.value if isinstance(self.value, str) else CORE_CONTEXT

    def body_value(self) -> Any:
        if self.value is None:
            return CORE_CONTEXT
        return self.value


def resolve_context(state: AppState, value: Any) -> LdContext:
    return LdContext(terms=state.resolver.resolve(value), value=value)


async def resolve_context_async(state: AppState, value: Any) -> LdContext:
    """Cached contexts resolve in place; a fetch goes to a worker thread, off the event loop."""
    terms = state.resolver.cached(value)
    if terms is None:
        terms = await run_in_threadpool(state.resolver.resolve, value)
    return LdContext(terms=terms, value=value)


async def link_context_dep(request: Request, state: StateDep) -> LdContext:
    return await resolve_context_async(state, link_context(request))


ContextDep = Annotated[LdContext, Depends(link_context_dep)]
