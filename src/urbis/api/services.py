"""The composition root: every service of a deployment, built from its settings, started and
stopped in order.

`Services(settings)` builds everything at once (no service is made by whichever request comes
first): the store backend (by name from twin/store/registry.py, or injected), the twin, the
hosted contexts and the @context resolver, the outbound guard, the subscriptions' notifier,
the context source registrations and the federation (with its HTTP client), the connectors'
sync manager and live sources. `start()` then brings them up in order (tenants opened,
notifications, the demo city, live sources, the scheduler) and `stop()` takes down what was
started, in reverse. Routes only see `state`, the request-facing view (api/deps.py).

Components can be injected instead of built, as stac-fastapi injects a backend:
`Services(settings, backend=MyBackend())`, or `create_app(settings, backend=...)`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from typing import Any

from pydantic import SecretStr

from urbis.api.deps import AppState, well_formed_token
from urbis.api.durable_state import open_durable_state
from urbis.api.settings import Settings
from urbis.connectors.live import LiveManager
from urbis.connectors.registry import ConnectorRegistry
from urbis.connectors.scheduler import run_scheduler
from urbis.connectors.sync import SyncManager
from urbis.ngsild.contexts import ContextRegistry
from urbis.ngsild.federation import Federation, broker_alias
from urbis.ngsild.registrations import RegistrationStore
from urbis.ngsild.subscriptions import Notifier, SubscriptionStore
from urbis.twin.access import ALLOW_ALL, AccessPolicy
from urbis.twin.context import ContextResolver
from urbis.twin.core import Twin
from urbis.twin.errors import ConfigError
from urbis.twin.outbound import OutboundGuard
from urbis.twin.store.base import StoreBackend
from urbis.twin.store.registry import StoreRegistry, default_registry

log = logging.getLogger("urbis")


def build_backend(settings: Settings, stores: StoreRegistry | None = None) -> StoreBackend:
    """The store backend URBIS_STORE names; UnknownStore (listing the known ones) otherwise."""
    return (stores or default_registry()).create(settings.store, settings)


def admin_token(settings: Settings) -> SecretStr | None:
    """URBIS_ADMIN_TOKEN, checked; a generated one (logged once) when none is set and the
    server is not open."""
    token = settings.admin_token
    if token and token.get_secret_value() and not well_formed_token(token.get_secret_value()):
        raise ConfigError("URBIS_ADMIN_TOKEN must be visible ASCII characters only (no spaces)")
    if not settings.open and not (token and token.get_secret_value()):
        generated = secrets.token_urlsafe(24)
        # The one time a token is logged: the operator needs it, and nobody else set one.
        log.warning("no URBIS_ADMIN_TOKEN set: writes need this generated token: %s", generated)
        token = SecretStr(generated)
    return token


class Services:
    """Every service of one deployment; `state` is what requests see of them."""

    def __init__(
        self,
        settings: Settings,
        *,
        backend: StoreBackend | None = None,
        access: AccessPolicy | None = None,
        stores: StoreRegistry | None = None,
        connectors: ConnectorRegistry | None = None,
    ) -> None:
        """`backend` replaces the one URBIS_STORE names (from `stores`, default: the built-ins
        and the `urbis.stores` entry points); `access` decides what each caller may read
        (default: everyone reads all); `connectors` replaces the connector kinds."""
        self.settings = settings
        self.access = access or ALLOW_ALL
        token = admin_token(settings)  # before anything is opened: a bad token opens nothing
        self.backend = backend if backend is not None else build_backend(settings, stores)
        try:
            self._build(settings, token, connectors)
        except BaseException:
            if backend is None:  # ours: nothing may keep its files or connections open
                self.backend.close()
            durable = getattr(self, "durable", None)
            if durable is not None:
                durable.close()
            raise
        self._stack: AsyncExitStack | None = None

    def _build(
        self, settings: Settings, token: SecretStr | None, connectors: ConnectorRegistry | None
    ) -> None:
        data_dir = settings.data_dir
        # Subscriptions, registrations, hosted contexts, sources and their sync state (twin/state).
        self.durable = open_durable_state(settings)
        self.twin = Twin(self.backend, max_scan=settings.max_scan)
        self.registry = ContextRegistry(self.durable)
        self.outbound = OutboundGuard.from_settings(settings)  # for every server-side fetch
        self.resolver = ContextResolver(
            fetch_timeout=settings.context_fetch_timeout,
            max_context_bytes=settings.max_context_bytes,
            cache_ttl=settings.context_cache_ttl,
            allow_remote=settings.allow_remote_contexts,
            registry=self.registry,
            guard=self.outbound,
        )
        self.notifier = Notifier(
            SubscriptionStore(self.durable),
            self.resolver.resolve,
            queue_size=settings.notification_queue_size,
            timeout=settings.notification_timeout,
            max_q_length=settings.max_q_length,
            guard=self.outbound,
            access=self.access,
        )
        self.registrations = RegistrationStore(self.durable)
        self.federation = Federation(
            self.registrations,
            self.resolver,
            self.outbound,
            alias=broker_alias(settings.federation_alias, self.durable, data_dir),
            timeout=settings.federation_timeout,
            max_window=settings.federation_max_window,
        )
        # Connectors: definitions and sync state in the state store (definitions in
        # URBIS_SOURCES_DIR instead when it is set).
        self.sources = SyncManager(
            self.twin,
            self.resolver,
            self.registry,
            data_dir=data_dir,
            sources_dir=settings.sources_dir,
            registry=connectors,
            area=settings.area(),
            guard=self.outbound,
            state=self.durable,
        )
        self.live = LiveManager(self.sources)  # live sources: MQTT, NGSI-LD
        self.state = AppState(
            settings=settings,
            twin=self.twin,
            resolver=self.resolver,
            registry=self.registry,
            admin_token=token,
            outbound=self.outbound,
            notifier=self.notifier,
            registrations=self.registrations,
            federation=self.federation,
            sources=self.sources,
            live=self.live,
            access=self.access,
            durable=self.durable,
        )

    # -- start and stop ---------------------------------------------------------------------

    async def start(self) -> None:
        """Bring the services up in order; what failed to start takes down what had started."""
        if self._stack is not None:
            raise RuntimeError("the services are already started")
        stack = AsyncExitStack()
        try:
            await self._start(stack)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack

    async def stop(self) -> None:
        """Stop what `start` started, in reverse order; then the twin is closed."""
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Started inside the block, stopped after it: the app's lifespan."""
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    async def _start(self, stack: AsyncExitStack) -> None:
        settings = self.settings
        # Callbacks run last-in first-out: the twin closes last, after everything using it.
        stack.push_async_callback(asyncio.to_thread, self.durable.close)
        stack.push_async_callback(asyncio.to_thread, self.twin.close)
        stack.push_async_callback(self.federation.aclose)
        if settings.open:
            log.warning("*** URBIS RUNS OPEN: anyone who reaches it can read and write ***")
        # Open every tenant (and rebuild its spatial index) before the first request, not in it.
        await asyncio.to_thread(self._open_tenants)
        await asyncio.to_thread(self._start_notifications)
        stack.push_async_callback(asyncio.to_thread, self._stop_notifications)
        if settings.demo:
            await self._start_demo(stack)
        await asyncio.to_thread(self.live.start_all)  # MQTT, NGSI-LD (connectors/live.py)
        stack.push_async_callback(asyncio.to_thread, self.live.close)
        if settings.sources_scheduler:  # the connectors' scheduled syncs
            _background(stack, run_scheduler(self.sources), "scheduler")

    def _open_tenants(self) -> None:
        for name in self.twin.backend.tenants():
            service = self.twin.tenant(name)
            service.prestart_queries()  # so that the first /sparql query finds a worker ready
            log.info(
                "tenant %r ready: %d geometries indexed", name or "(default)", len(service.index)
            )

    def _start_notifications(self) -> None:
        """Listen to every tenant's committed writes, then start delivering."""
        self.twin.listen(self.notifier)
        self.notifier.start()

    def _stop_notifications(self) -> None:
        self.twin.unlisten(self.notifier)
        self.notifier.stop()

    async def _start_demo(self, stack: AsyncExitStack) -> None:
        """The demo city, synced from its files; then its sensors: simulated MQTT devices
        (URBIS_DEMO_MQTT_URL, read back by a live source) or direct periodic updates."""
        from urbis.demo.loading import demo_terms, load_demo, run_live_demo, start_demo_devices

        settings = self.settings
        directory = settings.data_dir / "demo-files" if settings.data_dir else None
        await asyncio.to_thread(load_demo, self.sources, directory=directory)
        period = settings.demo_live_seconds
        if period > 0 and settings.demo_mqtt_url:
            halt = start_demo_devices(self.sources, settings.demo_mqtt_url, period)
            stack.push_async_callback(asyncio.to_thread, halt)
        elif period > 0:
            terms = await asyncio.to_thread(demo_terms, self.resolver, self.registry)
            _background(stack, run_live_demo(self.twin, terms, period), "live demo")


def _background(stack: AsyncExitStack, work: Coroutine[Any, Any, None], name: str) -> None:
    """Run `work` as a task, cancelled when the stack unwinds."""
    task: asyncio.Task[None] = asyncio.create_task(work, name=f"urbis {name}")
    stack.push_async_callback(_cancel(task))


def _cancel(task: asyncio.Task[None]) -> Callable[[], Any]:
    async def cancel() -> None:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task

    return cancel
