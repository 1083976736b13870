"""Connector kinds: the built-in modules and plugins from the `urbis.connectors` entry points.

A city adds a kind without forking by publishing a package with, in its pyproject.toml,

    [project.entry-points."urbis.connectors"]
    parkings = "city_connectors.parkings:ParkingConnector"

Built-in kinds are found by module path and imported lazily, one module at a time: a missing
optional dependency of one connector (say, paho-mqtt) never breaks the others.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import threading
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any

from pydantic import BaseModel, ValidationError

from urbis.connectors.base import Connector
from urbis.connectors.definition import SourceDefinition, field_path
from urbis.connectors.errors import ConnectorError
from urbis.twin.outbound import OutboundGuard

log = logging.getLogger("urbis.connectors")
GROUP = "urbis.connectors"
BUILTIN_MODULES = (
    "urbis.connectors.files",
    "urbis.connectors.wfs",
    "urbis.connectors.ogcapi",
    "urbis.connectors.ngsild",
    "urbis.connectors.mqtt",
    "urbis.connectors.ngsild_live",
)


class UnknownKind(ConnectorError, LookupError):
    """No connector registers this kind."""

    error_type, status, title = "UnknownKind", 400, "Unknown connector kind"


def _connectors_in(module: ModuleType) -> dict[str, type[Connector]]:
    """The concrete Connector classes a module defines, by kind."""
    found: dict[str, type[Connector]] = {}
    for value in vars(module).values():
        if (
            isinstance(value, type)
            and issubclass(value, Connector)
            and value.__module__ == module.__name__
            and isinstance(getattr(value, "kind", None), str)
            and not getattr(value, "__abstractmethods__", None)
        ):
            found[value.kind] = value
    return found


class ConnectorRegistry:
    """kind -> Connector class, resolved on first use."""

    def __init__(
        self,
        *,
        modules: Iterable[str] = BUILTIN_MODULES,
        plugins: Iterable[EntryPoint] | None = None,
    ) -> None:
        """`plugins` defaults to the installed `urbis.connectors` entry points."""
        self.modules = tuple(modules)
        self._plugins = list(plugins) if plugins is not None else None
        self._kinds: dict[str, type[Connector]] | None = None
        self._origins: dict[str, str] = {}
        self.failures: dict[str, str] = {}  # module or entry point -> why it did not load
        self._lock = threading.Lock()

    def register(self, cls: type[Connector], origin: str = "code") -> None:
        """Add a kind directly (tests, embedding applications)."""
        kinds = self._load()
        kinds[cls.kind] = cls
        self._origins[cls.kind] = origin

    def _load(self) -> dict[str, type[Connector]]:
        if self._kinds is not None:
            return self._kinds
        with self._lock:
            if self._kinds is not None:
                return self._kinds
            kinds: dict[str, type[Connector]] = {}
            for name in self.modules:
                try:
                    module = importlib.import_module(name)
                except Exception as exc:  # ImportError and any error at import time
                    self.failures[name] = f"{type(exc).__name__}: {exc}"
                    log.debug("connector module %s not available: %s", name, exc)
                    continue
                for kind, cls in _connectors_in(module).items():
                    kinds[kind] = cls
                    self._origins[kind] = name
            plugins = self._plugins
            if plugins is None:
                plugins = list(entry_points(group=GROUP))
            for point in plugins:
                try:
                    loaded: Any = point.load()
                except Exception as exc:
                    self.failures[f"{point.name} = {point.value}"] = f"{type(exc).__name__}: {exc}"
                    log.warning(
                        "connector plugin %s (%s) failed to load: %s", point.name, point.value, exc
                    )
                    continue
                if not (isinstance(loaded, type) and issubclass(loaded, Connector)):
                    self.failures[f"{point.name} = {point.value}"] = "not a Connector subclass"
                    continue
                # The entry point's name is the kind a definition uses; a plugin may replace a
                # built-in kind on purpose (an installed package is an explicit choice).
                kinds[point.name] = loaded
                self._origins[point.name] = f"entry point {point.value}"
            self._kinds = kinds
            return kinds

    def kinds(self) -> dict[str, str]:
        """Known kinds and where each comes from."""
        return {k: self._origins[k] for k in sorted(self._load())}

    def get(self, kind: str) -> type[Connector]:
        kinds = self._load()
        if kind not in kinds:
            known = ", ".join(sorted(kinds)) or "none"
            raise UnknownKind(f"unknown kind {kind!r}; known kinds: {known}")
        return kinds[kind]

    def create(
        self,
        source: SourceDefinition,
        secret: str | None = None,
        guard: OutboundGuard | None = None,
    ) -> Connector:
        return construct(self.get(source.kind), source, secret, guard)

    def check(self, source: SourceDefinition) -> list[tuple[str, str]]:
        """Definition problems only the registry can see: the kind, and the kind's options."""
        try:
            cls = self.get(source.kind)
        except UnknownKind as exc:
            return [("kind", str(exc))]
        model = getattr(cls, "options_model", None)
        if model is None or not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
        try:
            model.model_validate(source.options)
        except ValidationError as error:
            return [
                (field_path(("options", *item["loc"])), item["msg"].removeprefix("Value error, "))
                for item in error.errors()
            ]
        return []


def construct(
    cls: type[Connector], source: SourceDefinition, secret: str | None, guard: OutboundGuard | None
) -> Connector:
    """A connector with the deployment's outbound guard, for the kinds that take one (a
    plugin written before guards existed takes (source, secret) only)."""
    if guard is not None and "guard" in inspect.signature(cls).parameters:
        return cls(source, secret, guard=guard)
    return cls(source, secret)


_default: ConnectorRegistry | None = None


def default_registry() -> ConnectorRegistry:
    """The process-wide registry (built-in modules and installed entry points)."""
    global _default
    if _default is None:
        _default = ConnectorRegistry()
    return _default
