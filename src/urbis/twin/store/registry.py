"""Store backends by name: the built-ins, and plugins from the `urbis.stores` entry points.

URBIS_STORE names the backend. A city adds one without forking by publishing a package with,
in its pyproject.toml,

    [project.entry-points."urbis.stores"]
    quadstore = "city_store.backend:QuadStoreBackend"

where the object is a factory, `(settings) -> StoreBackend`, or a StoreBackend subclass with a
`from_settings(settings)` class method. The settings are read by attribute (`data_dir`,
`sparql_url`, ...: the twin does not know the settings class). The built-ins are registered
here in code, so that they never depend on installed package metadata; each imports its module
only when it is chosen. An entry point with a built-in's name replaces it (installing a package
is an explicit choice), as for connector kinds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from urbis.twin.errors import ConfigError
from urbis.twin.store.base import StoreBackend

log = logging.getLogger("urbis.store")
GROUP = "urbis.stores"
StoreFactory = Callable[[Any], StoreBackend]


def oxigraph_store(settings: Any) -> StoreBackend:
    """The embedded pyoxigraph store: on disk under `data_dir`, or in memory."""
    from urbis.twin.store.oxigraph import OxigraphBackend

    return OxigraphBackend(getattr(settings, "data_dir", None))


def sparql_store(settings: Any) -> StoreBackend:
    """A remote SPARQL 1.1 engine (docs/remote-store.md)."""
    from urbis.twin.store.sparql import SparqlBackend

    return SparqlBackend.from_settings(settings)


BUILTINS: Mapping[str, StoreFactory] = {"oxigraph": oxigraph_store, "sparql": sparql_store}


class UnknownStore(ConfigError, LookupError):
    """No backend registers this name; the detail lists the known ones."""

    error_type, status, title = "UnknownStore", 500, "Unknown store backend"


class StoreRegistry:
    """name -> backend factory. Listing names loads nothing; an entry point is loaded when its
    backend is chosen, so a broken plugin only stops a deployment that asks for it."""

    def __init__(
        self,
        *,
        builtins: Mapping[str, StoreFactory] = BUILTINS,
        plugins: Iterable[EntryPoint] | None = None,
    ) -> None:
        """`plugins` defaults to the installed `urbis.stores` entry points."""
        self._factories: dict[str, StoreFactory] = dict(builtins)
        self._origins = {name: "built-in" for name in builtins}
        self._points: dict[str, EntryPoint] = {}
        for point in plugins if plugins is not None else entry_points(group=GROUP):
            previous = self._points.get(point.name)
            if previous is not None and previous.value != point.value:
                log.warning(
                    "store backend %r is registered twice (%s, %s): using %s",
                    point.name,
                    previous.value,
                    point.value,
                    point.value,
                )
            self._points[point.name] = point
            self._origins[point.name] = f"entry point {point.value}"

    def register(self, name: str, factory: StoreFactory, origin: str = "code") -> None:
        """Add a backend directly (tests, embedding applications)."""
        self._points.pop(name, None)
        self._factories[name] = factory
        self._origins[name] = origin

    def names(self) -> dict[str, str]:
        """Known backends and where each comes from."""
        return {name: self._origins[name] for name in sorted(self._origins)}

    def factory(self, name: str) -> StoreFactory:
        point = self._points.get(name)
        if point is not None:
            return _factory_of(point)
        found = self._factories.get(name)
        if found is None:
            known = ", ".join(self.names()) or "none"
            raise UnknownStore(f"unknown store backend {name!r} (URBIS_STORE); known: {known}")
        return found

    def create(self, name: str, settings: Any) -> StoreBackend:
        backend = self.factory(name)(settings)
        if not isinstance(backend, StoreBackend):
            raise ConfigError(
                f"store backend {name!r} made a {type(backend).__name__}, not a StoreBackend"
            )
        return backend


def _factory_of(point: EntryPoint) -> StoreFactory:
    try:
        loaded: Any = point.load()
    except Exception as exc:  # ImportError and any error at import time
        raise ConfigError(
            f"store backend {point.name!r} ({point.value}) does not load: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if isinstance(loaded, type) and issubclass(loaded, StoreBackend):
        from_settings = getattr(loaded, "from_settings", None)
        if not callable(from_settings):
            raise ConfigError(
                f"store backend {point.name!r} ({point.value}) has no from_settings(settings)"
            )
        factory: StoreFactory = from_settings
        return factory
    if not callable(loaded):
        raise ConfigError(f"store backend {point.name!r} ({point.value}) is not a factory")
    return loaded  # type: ignore[no-any-return]


_default: StoreRegistry | None = None


def default_registry() -> StoreRegistry:
    """The process-wide registry (built-ins and installed entry points)."""
    global _default
    if _default is None:
        _default = StoreRegistry()
    return _default
