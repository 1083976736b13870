"""The composition root (api/services.py): every service built up front, started and stopped in
order by the app's lifespan; a failed start takes down what had started."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from urbis.api.app import create_app
from urbis.api.deps import AppState
from urbis.api.services import Services
from urbis.api.settings import Settings
from urbis.twin.errors import ConfigError
from urbis.twin.store.oxigraph import OxigraphBackend

TOKEN = "services-token"


def spy(calls: list[str], name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    """The real method, with its call recorded (the order of shutdown is what is checked)."""
    if asyncio.iscoroutinefunction(method):

        async def recorded_async(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return await method(*args, **kwargs)

        return recorded_async

    def recorded(*args: Any, **kwargs: Any) -> Any:
        calls.append(name)
        return method(*args, **kwargs)

    return recorded


def test_every_service_is_built_before_any_request() -> None:
    services = Services(Settings(admin_token=TOKEN, demo=False))
    state = services.state
    try:
        assert isinstance(state, AppState)
        assert state.federation.client is not None and not state.federation.client.is_closed
        assert state.sources.twin is state.twin and state.live.sources is state.sources
        assert state.sources.guard is state.outbound
        assert state.federation.registrations is state.registrations
        assert state.notifier._thread is None  # built, not started: start() does that
    finally:
        state.twin.close()


def test_the_lifespan_starts_and_stops_every_service_in_order(tmp_path: Path) -> None:
    settings = Settings(admin_token=TOKEN, demo=False, data_dir=tmp_path)
    services = Services(settings)
    calls: list[str] = []
    services.live.close = spy(calls, "live sources", services.live.close)  # type: ignore[method-assign]
    services.notifier.stop = spy(calls, "notifier", services.notifier.stop)  # type: ignore[method-assign]
    services.federation.aclose = spy(calls, "federation", services.federation.aclose)  # type: ignore[method-assign]
    services.twin.close = spy(calls, "twin", services.twin.close)  # type: ignore[method-assign]
    app = create_app(services=services)
    assert app.state.urbis is services.state
    with TestClient(app) as client:
        assert services.notifier._thread is not None and services.notifier._thread.is_alive()
        assert client.get("/health").status_code == 200
        assert calls == []
    assert calls == ["live sources", "notifier", "federation", "twin"]
    assert services.federation.client.is_closed
    assert services.notifier._thread is None
    reopened = OxigraphBackend(tmp_path)  # the twin let go of its directory
    reopened.close()


def test_a_failed_start_stops_what_had_started(tmp_path: Path) -> None:
    class FailingToOpen(OxigraphBackend):
        def tenants(self) -> list[str]:
            raise OSError("disk unreadable")

    backend = FailingToOpen(None)
    services = Services(Settings(admin_token=TOKEN, demo=False), backend=backend)
    with pytest.raises(OSError, match="disk unreadable"):
        asyncio.run(services.start())
    assert services.federation.client.is_closed
    assert backend._tenants == {}  # the twin was closed
    assert services.notifier._thread is None  # never started


def test_services_start_once() -> None:
    services = Services(Settings(admin_token=TOKEN, demo=False, sources_scheduler=False))

    async def twice() -> None:
        await services.start()
        try:
            with pytest.raises(RuntimeError, match="already started"):
                await services.start()
        finally:
            await services.stop()

    asyncio.run(twice())
    assert services.federation.client.is_closed


def test_a_bad_admin_token_opens_nothing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="visible ASCII"):
        Services(Settings(admin_token="with space", data_dir=tmp_path))
    assert not (tmp_path / "tenants").exists()


def test_the_demo_is_loaded_by_the_lifespan() -> None:
    settings = Settings(open=True, demo=True, demo_live_seconds=0, sources_scheduler=False)
    with TestClient(create_app(settings)) as client:
        sources = client.get("/sources").json()
        assert {"demo", "demo-streetlights"} <= {s["id"] for s in sources}
        link = (
            "<http://testserver/ngsi-ld/v1/jsonldContexts/urbis-smart-city>; "
            'rel="http://www.w3.org/ns/json-ld#context"'
        )
        found = client.get(
            "/ngsi-ld/v1/entities",
            params={"type": "Streetlight", "limit": 1},
            headers={"Link": link},
        )
        assert found.status_code == 200 and len(found.json()) == 1
