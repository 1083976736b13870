"""The twin: a store backend, one entity service per tenant, and the change listeners."""

from __future__ import annotations

import threading

from urbis.twin.changes import ChangeListener, ChangeListeners
from urbis.twin.entities import EntityService
from urbis.twin.store.base import StoreBackend


class Twin:
    """Hands out the entity service of a tenant, opening it (and its spatial index) once.

    Listeners registered here hear the committed writes of every tenant, including tenants
    opened later (twin/changes.py says what a listener may do).
    """

    def __init__(self, backend: StoreBackend, *, max_scan: int = 200_000) -> None:
        self.backend = backend
        self.max_scan = max_scan
        self.listeners = ChangeListeners()
        self._services: dict[str, EntityService] = {}
        self._lock = threading.Lock()

    def listen(self, listener: ChangeListener) -> None:
        """Hear every tenant's committed writes from now on (registering twice: no effect)."""
        self.listeners.add(listener)

    def unlisten(self, listener: ChangeListener) -> None:
        self.listeners.remove(listener)

    def tenant(self, name: str, *, create: bool = False) -> EntityService:
        service = self._services.get(name)
        if service is not None:
            return service
        with self._lock:
            service = self._services.get(name)
            if service is None:
                store = self.backend.tenant(name, create=create)
                service = EntityService(
                    store, tenant=name, max_scan=self.max_scan, listeners=self.listeners
                )
                self._services[name] = service
            return service

    def is_open(self, name: str) -> bool:
        return name in self._services

    def close(self) -> None:
        """Drop every reference to the stores, so an embedded store's lock is released."""
        with self._lock:
            self._services.clear()
        self.backend.close()
