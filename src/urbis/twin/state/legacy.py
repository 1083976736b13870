"""Importing the files older Urbis versions kept state in, once, on the first start.

Each feature knows its old format and writes it into a transaction (`write`); this module
makes that happen once per data directory: the import and a marker document commit together,
then the old directory is renamed `<name>.imported`, so nobody edits a file that no longer
counts and a downgrade can rename it back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from urbis.twin.state.port import StateStore, StateTransaction

log = logging.getLogger("urbis.state")
IMPORTS: Final = "legacy-imports"  # collection of markers: one document per imported directory
IMPORTED_SUFFIX: Final = ".imported"


def imported_marker(store: StateStore, name: str) -> Path | None:
    """The directory an earlier start imported under `name`, if any."""
    marker = store.get(IMPORTS, "", name)
    return Path(marker["from"]) if marker is not None else None


def import_once(
    store: StateStore,
    name: str,
    directory: Path | None,
    write: Callable[[StateTransaction, Path], int],
) -> int | None:
    """Imports `directory` with `write` (which returns how many items it wrote) unless a
    start did already; None when there was nothing to import. A file `write` cannot read
    raises (ValueError naming it) and nothing is imported."""
    if directory is None or not directory.is_dir():
        return None
    with store.transaction() as tx:
        if tx.get(IMPORTS, "", name) is not None:
            count = None  # imported by an earlier start that stopped before the rename
        else:
            count = write(tx, directory)
            stamp = datetime.now(UTC).isoformat(timespec="seconds")
            tx.put(IMPORTS, "", name, {"from": str(directory), "at": stamp, "items": count})
    target = directory.with_name(directory.name + IMPORTED_SUFFIX)
    if target.exists():
        log.warning("%s was imported into %s earlier; it is not read", directory, store.location)
        return count
    try:
        directory.rename(target)
    except OSError as error:  # another process renamed it first, or a read-only mount
        log.warning("cannot rename %s after importing it: %s", directory, error)
    if count is not None:
        log.info("imported %d %s from %s into %s", count, name, directory, store.location)
    return count
