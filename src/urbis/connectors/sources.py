"""The catalogue of source definitions: one TOML file per source in the sources directory.

Without a directory (an in-memory twin) definitions live in memory only. A file that does not
validate is reported with its errors by `problems()` and left out, so one broken definition
never hides the others.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Callable
from pathlib import Path

from urbis.connectors.definition import (
    DefinitionError,
    SourceDefinition,
    parse_definition,
    read_definition,
    to_toml,
)
from urbis.twin.errors import ResourceNotFound

KindCheck = Callable[[SourceDefinition], list[tuple[str, str]]]


class UnknownSource(ResourceNotFound):
    """No definition with this id."""


class SourceCatalog:
    """Loads, validates, lists and saves source definitions."""

    def __init__(self, directory: Path | None, *, check: KindCheck | None = None) -> None:
        """`check` adds the registry's checks (known kind, valid options) to pydantic's."""
        self.directory = directory
        self.check = check
        self._memory: dict[str, SourceDefinition] = {}
        self._lock = threading.Lock()

    def _validate(self, source: SourceDefinition, where: str) -> SourceDefinition:
        problems = self.check(source) if self.check else []
        if problems:
            raise DefinitionError(where, problems)
        return source

    def parse(self, data: object, where: str = "<request>") -> SourceDefinition:
        """Validate a definition given as data (API body); DefinitionError on mistakes."""
        return self._validate(parse_definition(data, where), where)

    def read(self, path: Path) -> SourceDefinition:
        """Validate a definition file; DefinitionError names the file and each field."""
        return self._validate(read_definition(path), str(path))

    def _files(self) -> builtins.list[Path]:
        if self.directory is None or not self.directory.is_dir():
            return []
        return sorted(self.directory.glob("*.toml"))

    def _scan(self) -> tuple[dict[str, SourceDefinition], builtins.list[DefinitionError]]:
        found: dict[str, SourceDefinition] = dict(self._memory)
        errors: builtins.list[DefinitionError] = []
        for path in self._files():
            try:
                source = self.read(path)
            except DefinitionError as error:
                errors.append(error)
                continue
            if path.stem != source.id:
                errors.append(
                    DefinitionError(str(path), [("id", f"must match the file name {path.stem!r}")])
                )
                continue
            found[source.id] = source
        return found, errors

    def list(self) -> builtins.list[SourceDefinition]:
        return sorted(self._scan()[0].values(), key=lambda s: s.id)

    def problems(self) -> builtins.list[DefinitionError]:
        """Definition files that do not validate (left out of `list`)."""
        return self._scan()[1]

    def get(self, source_id: str) -> SourceDefinition:
        if source_id in self._memory:
            return self._memory[source_id]
        if self.directory is not None:
            path = self.directory / f"{source_id}.toml"
            if path.is_file():
                return self.read(path)
        raise UnknownSource(f"no source {source_id!r}; see `urbis sources list`")

    def save(self, source: SourceDefinition, *, text: str | None = None) -> Path | None:
        """Store a validated definition (replacing one with the same id).

        `text` keeps the user's own TOML (comments included) when it is given; otherwise the
        definition is written out. Memory-only catalogues return None.
        """
        self._validate(source, f"<{source.id}>")
        with self._lock:
            if self.directory is None:
                self._memory[source.id] = source
                return None
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"{source.id}.toml"
            tmp = path.with_suffix(".toml.tmp")
            tmp.write_text(text if text is not None else to_toml(source), encoding="utf-8")
            tmp.replace(path)  # atomic: a reader never sees half a definition
            return path

    def remember(self, source: SourceDefinition) -> None:
        """Keep a definition in memory only (the demo's generated sources)."""
        self._validate(source, f"<{source.id}>")
        with self._lock:
            self._memory[source.id] = source

    def remove(self, source_id: str) -> None:
        with self._lock:
            if self._memory.pop(source_id, None) is not None:
                return
            path = self.directory / f"{source_id}.toml" if self.directory else None
            if path is None or not path.is_file():
                raise UnknownSource(f"no source {source_id!r}")
            path.unlink()
