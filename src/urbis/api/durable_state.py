"""Opening the deployment's durable state (twin/state): the store, and the one-time import of
the files older versions kept beside the twin, so a city upgrading keeps its subscriptions,
registrations, contexts, sources and their sync state."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from urbis.api.settings import Settings
from urbis.connectors.legacy import import_legacy_connector_state
from urbis.connectors.sources import import_legacy_sources
from urbis.ngsild.contexts import import_legacy_contexts
from urbis.ngsild.registrations import import_legacy_registrations
from urbis.ngsild.subscriptions import import_legacy_subscriptions
from urbis.twin.state import StateStore, StateTransaction, import_once, open_state_store

# (marker name, folder under the data directory, the feature's reader of its old files)
LEGACY: tuple[tuple[str, str, Callable[[StateTransaction, Path], int]], ...] = (
    ("contexts", "contexts", import_legacy_contexts),
    ("subscriptions", "subscriptions", import_legacy_subscriptions),
    ("registrations", "registrations", import_legacy_registrations),
    ("connector-state", "connectors", import_legacy_connector_state),
    ("sources", "sources", import_legacy_sources),
)


def open_durable_state(settings: Settings) -> StateStore:
    """`<data dir>/state.sqlite3` (memory without a data directory), old files imported."""
    store = open_state_store(settings.data_dir)
    if settings.data_dir is not None:
        import_legacy_state(store, Path(settings.data_dir), sources=settings.sources_dir is None)
    return store


def import_legacy_state(store: StateStore, data_dir: Path, *, sources: bool = True) -> None:
    """Each old folder once; `sources=False` when URBIS_SOURCES_DIR keeps definitions as
    files (then `<data dir>/sources` may be that very directory: it stays as it is)."""
    for name, folder, write in LEGACY:
        if name != "sources" or sources:
            import_once(store, name, data_dir / folder, write)
