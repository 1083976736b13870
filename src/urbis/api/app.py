"""The application factory: settings in, a FastAPI app with the twin on `app.state` out."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from fastapi import FastAPI
from pydantic import SecretStr
from starlette.responses import Response

from urbis.api import errors, openapi
from urbis.api.deps import AppState, well_formed_token
from urbis.api.federation import broker_alias
from urbis.api.responses import json_response
from urbis.api.routes import (
    batch,
    contexts,
    csources,
    datasets,
    discovery,
    entities,
    sources,
    sparql,
    subscriptions,
)
from urbis.api.settings import Settings
from urbis.ngsild.registrations import RegistrationStore
from urbis.twin.context import ContextRegistry, ContextResolver
from urbis.twin.core import Twin
from urbis.twin.iri import redact_client_logs
from urbis.twin.outbound import OutboundGuard
from urbis.twin.store.base import StoreBackend
from urbis.twin.store.oxigraph import OxigraphBackend

log = logging.getLogger("urbis")


def build_backend(settings: Settings) -> StoreBackend:
    """The embedded store, or a remote SPARQL engine (URBIS_STORE=sparql)."""
    if settings.store == "sparql":
        from urbis.twin.store.sparql import SparqlBackend  # type: ignore[import-not-found,unused-ignore]

        return SparqlBackend.from_settings(settings)  # type: ignore[no-any-return,unused-ignore]
    return OxigraphBackend(settings.data_dir)


def build_state(settings: Settings) -> AppState:
    backend = build_backend(settings)
    registry = ContextRegistry(settings.data_dir / "contexts" if settings.data_dir else None)
    outbound = OutboundGuard.from_settings(settings)  # for every server-side fetch
    resolver = ContextResolver(
        fetch_timeout=settings.context_fetch_timeout,
        max_context_bytes=settings.max_context_bytes,
        cache_ttl=settings.context_cache_ttl,
        allow_remote=settings.allow_remote_contexts,
        registry=registry,
        guard=outbound,
    )
    token = settings.admin_token
    if token and token.get_secret_value() and not well_formed_token(token.get_secret_value()):
        raise ValueError("URBIS_ADMIN_TOKEN must be visible ASCII characters only (no spaces)")
    if not settings.open and not (token and token.get_secret_value()):
        generated = secrets.token_urlsafe(24)
        # The one time a token is logged: the operator needs it, and nobody else set one.
        log.warning("no URBIS_ADMIN_TOKEN set: writes need this generated token: %s", generated)
        token = SecretStr(generated)
    state = AppState(
        settings=settings,
        twin=Twin(backend, max_scan=settings.max_scan),
        resolver=resolver,
        registry=registry,
        admin_token=token,
        notifier=subscriptions.build_notifier(settings, resolver, outbound),
        registrations=RegistrationStore(
            settings.data_dir / "registrations" if settings.data_dir else None
        ),
        alias=broker_alias(settings),
        outbound=outbound,
    )
    state.sources = sources.build_manager(state)  # connectors (api/routes/sources.py)
    return state


def _open_tenants(state: AppState) -> None:
    for name in state.twin.backend.tenants():
        service = state.twin.tenant(name)
        service.prestart_queries()  # so that the first /sparql query finds a worker ready
        log.info("tenant %r ready: %d geometries indexed", name or "(default)", len(service.index))


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    state = build_state(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        live: asyncio.Task[None] | None = None
        halt_devices = None  # the demo's MQTT device simulator (URBIS_DEMO_MQTT_URL)
        if settings.open:
            log.warning("*** URBIS RUNS OPEN: anyone who reaches it can read and write ***")
        # Open every tenant (and rebuild its spatial index) before the first request, not in it.
        await asyncio.to_thread(_open_tenants, state)
        await asyncio.to_thread(subscriptions.start_notifications, state)
        if settings.demo:
            from urbis.demo.loading import load_demo, run_live_demo, start_demo_devices

            await asyncio.to_thread(load_demo, state)
            if settings.demo_live_seconds > 0 and settings.demo_mqtt_url:
                halt_devices = start_demo_devices(state, settings.demo_mqtt_url)
            elif settings.demo_live_seconds > 0:
                live = asyncio.create_task(run_live_demo(state, settings.demo_live_seconds))
        scheduler = None  # the connectors' scheduled syncs (api/routes/sources.py)
        if settings.sources_scheduler:
            scheduler = asyncio.create_task(sources.run_scheduler(state))
        await asyncio.to_thread(sources.start_live, state)  # MQTT, NGSI-LD (connectors/live.py)
        try:
            yield
        finally:
            for task in (live, scheduler):
                if task is not None:
                    task.cancel()
                    with suppress(asyncio.CancelledError):
                        await task
            await asyncio.to_thread(sources.stop_live, state)
            if halt_devices is not None:
                await asyncio.to_thread(halt_devices)
            await asyncio.to_thread(subscriptions.stop_notifications, state)
            if state.http is not None:  # the federation's client (api/federation.py)
                await state.http.aclose()
            state.twin.close()

    app = FastAPI(
        title="Urbis",
        description="Open digital-twin data space for cities: NGSI-LD API over an RDF twin",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.urbis = state
    errors.install(app)
    redact_client_logs()  # outbound URLs may carry credentials: none reaches the log
    openapi.install(app, settings)  # /openapi.json: every operation described
    for module in (
        entities,
        batch,
        discovery,
        contexts,
        subscriptions,
        csources,
        sparql,
        datasets,
        sources,
    ):
        app.include_router(module.router)

    @app.get("/health", tags=["admin"])
    def health() -> Response:
        return json_response({"status": "ok", "store": state.twin.backend.name})

    return app
