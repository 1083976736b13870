"""The application factory: settings in, a FastAPI app with the twin on `app.state` out.

The services are built, started and stopped by the composition root (api/services.py); this
module adds the HTTP side: the routers, error rendering, the OpenAPI description.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.responses import Response

from urbis.api import errors, openapi
from urbis.api.deps import AppState
from urbis.api.errors import StatusTable
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
from urbis.api.services import Services, build_backend
from urbis.api.settings import Settings
from urbis.twin.access import AccessPolicy
from urbis.twin.iri import redact_client_logs
from urbis.twin.store.base import StoreBackend

log = logging.getLogger("urbis")
__all__ = ["Services", "build_backend", "build_state", "create_app"]


def build_state(settings: Settings, **components: Any) -> AppState:
    """Every service built (none started), as requests would see them: for the command line,
    tests and benchmarks. `components` as for `Services` (e.g. `backend=`)."""
    return Services(settings, **components).state


def create_app(
    settings: Settings | None = None,
    *,
    backend: StoreBackend | None = None,
    access: AccessPolicy | None = None,
    statuses: StatusTable | None = None,
    services: Services | None = None,
) -> FastAPI:
    """The app of one deployment. `backend` replaces the store URBIS_STORE names; `access`
    decides what each caller may read (twin/access.py; None: everyone reads all); `statuses`
    overrides the HTTP status of error classes (docs/errors.md); `services`, a composition
    root built beforehand, replaces the one built here from `settings`, `backend`, `access`."""
    problems = errors.ProblemRenderer(statuses)  # a wrong table fails before anything opens
    if services is None:
        services = Services(settings or Settings(), backend=backend, access=access)
    elif backend is not None or access is not None:
        raise ValueError("give create_app its components or services, not both")
    settings = services.settings
    state = services.state

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with services.running():
            yield

    app = FastAPI(
        title="Urbis",
        description="Open digital-twin data space for cities: NGSI-LD API over an RDF twin",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.urbis = state  # what requests see (api/deps.py)
    app.state.services = services  # the composition root, for embedding applications
    errors.install(app, problems)
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
