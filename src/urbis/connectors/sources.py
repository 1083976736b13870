"""The catalogue of source definitions: each one's TOML text, in the state store.

Definitions added with `urbis sources add` or `POST /sources` are kept in the state store
(collection `sources`, one document per source holding its TOML text, comments included), so
they are crash-safe, shared by the processes of one data directory and part of `urbis export`.
An operator who keeps definitions as files (under version control) sets URBIS_SOURCES_DIR:
the catalogue is then that directory's `<id>.toml` files, read on every use, as before.

A definition that does not validate (a stored one whose plugin kind was uninstalled, or a
broken file) is reported with its errors by `problems()` and left out, so one broken
definition never hides the others. Before the state store, definitions were files in
`<data dir>/sources`; the first start imports them (api/durable_state.py), and files that
reappear there later are reported by `problems()` as not read.
"""

from __future__ import annotations

import builtins
import threading
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Final, Protocol

from urbis.connectors.definition import (
    DefinitionError,
    SourceDefinition,
    parse_definition,
    read_definition,
    to_toml,
)
from urbis.twin.errors import ResourceNotFound
from urbis.twin.state import StateStore, StateTransaction, memory_state_store

KindCheck = Callable[[SourceDefinition], list[tuple[str, str]]]
SOURCES: Final = "sources"  # the state store's collection: {"toml": text} per source id


class UnknownSource(ResourceNotFound):
    """No definition with this id."""


def parse_text(text: str, where: str) -> SourceDefinition:
    """Validate one definition given as TOML text; DefinitionError names `where`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DefinitionError(where, [("", f"not valid TOML: {exc}")]) from None
    return parse_definition(data, where)


class _Home(Protocol):
    """Where definitions' texts live: the state store, or a directory of TOML files."""

    location: str

    def texts(self) -> builtins.list[tuple[str, str, str | None]]:
        """(id, where, text) of each definition by id; text None: it cannot be read."""
        ...

    def text(self, source_id: str) -> tuple[str, str] | None: ...

    def write(self, source_id: str, text: str) -> Path | None: ...

    def remove(self, source_id: str) -> bool: ...


class _StoreHome:
    def __init__(self, state: StateStore) -> None:
        self.state = state
        self.location = state.location

    def _where(self, source_id: str) -> str:
        return f"{self.location} (source {source_id})"

    def texts(self) -> builtins.list[tuple[str, str, str | None]]:
        stored = sorted(self.state.list(SOURCES, ""))
        return [(key, self._where(key), _toml_of(doc)) for key, doc in stored]

    def text(self, source_id: str) -> tuple[str, str] | None:
        doc = self.state.get(SOURCES, "", source_id)
        text = _toml_of(doc) if doc is not None else None
        return None if text is None else (self._where(source_id), text)

    def write(self, source_id: str, text: str) -> Path | None:
        self.state.put(SOURCES, "", source_id, {"toml": text})
        return None

    def remove(self, source_id: str) -> bool:
        return self.state.delete(SOURCES, "", source_id)


def _toml_of(doc: dict[str, object]) -> str | None:
    text = doc.get("toml")
    return text if isinstance(text, str) else None


class _FileHome:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.location = str(directory)

    def texts(self) -> builtins.list[tuple[str, str, str | None]]:
        if not self.directory.is_dir():
            return []
        return [(p.stem, str(p), _read(p)) for p in sorted(self.directory.glob("*.toml"))]

    def text(self, source_id: str) -> tuple[str, str] | None:
        path = self.directory / f"{source_id}.toml"
        text = _read(path) if path.is_file() else None
        return None if text is None else (str(path), text)

    def write(self, source_id: str, text: str) -> Path | None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{source_id}.toml"
        tmp = path.with_suffix(".toml.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)  # atomic: a reader never sees half a definition
        return path

    def remove(self, source_id: str) -> bool:
        path = self.directory / f"{source_id}.toml"
        if not path.is_file():
            return False
        path.unlink()
        return True


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def import_legacy_sources(tx: StateTransaction, directory: Path) -> int:
    """Definitions before the state store: `<data dir>/sources/<id>.toml`, kept as written
    (a broken one too: `problems()` reports it, as it did for the file)."""
    count = 0
    for path in sorted(directory.glob("*.toml")):
        tx.put(SOURCES, "", path.stem, {"toml": path.read_text(encoding="utf-8")})
        count += 1
    return count


class SourceCatalog:
    """Loads, validates, lists and saves source definitions."""

    def __init__(
        self,
        state: StateStore | None = None,
        *,
        directory: Path | None = None,
        check: KindCheck | None = None,
        legacy_dir: Path | None = None,
    ) -> None:
        """Definitions in `state` (memory when None), or the TOML files of `directory`.
        `check` adds the registry's checks (known kind, valid options) to pydantic's.
        `legacy_dir`: where definitions were files before the state store."""
        self.home: _Home = (
            _FileHome(directory)
            if directory is not None
            else _StoreHome(state if state is not None else memory_state_store())
        )
        self.location = self.home.location
        self.check = check
        self.legacy_dir = legacy_dir if directory is None else None
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

    def _parsed(self, where: str, text: str | None) -> SourceDefinition:
        if text is None:
            raise DefinitionError(where, [("", "cannot read the definition")])
        return self._validate(parse_text(text, where), where)

    def _scan(self) -> tuple[dict[str, SourceDefinition], builtins.list[DefinitionError]]:
        found: dict[str, SourceDefinition] = dict(self._memory)
        errors: builtins.list[DefinitionError] = []
        for source_id, where, text in self.home.texts():
            try:
                source = self._parsed(where, text)
            except DefinitionError as error:
                errors.append(error)
                continue
            if source.id != source_id:
                errors.append(
                    DefinitionError(where, [("id", f"must match the file name {source_id!r}")])
                )
                continue
            found[source_id] = source
        errors.extend(self._stray_files())
        return found, errors

    def _stray_files(self) -> builtins.list[DefinitionError]:
        """Files in the old sources directory: not read since the state store holds them."""
        if self.legacy_dir is None or not self.legacy_dir.is_dir():
            return []
        hint = (
            f"not read: definitions are kept in {self.location} now; add it with "
            "`urbis sources add FILE` or POST /sources (or set URBIS_SOURCES_DIR to keep "
            "definitions as files)"
        )
        return [
            DefinitionError(str(p), [("", hint)]) for p in sorted(self.legacy_dir.glob("*.toml"))
        ]

    def list(self) -> builtins.list[SourceDefinition]:
        return sorted(self._scan()[0].values(), key=lambda s: s.id)

    def problems(self) -> builtins.list[DefinitionError]:
        """Definitions that do not validate (left out of `list`)."""
        return self._scan()[1]

    def get(self, source_id: str) -> SourceDefinition:
        if source_id in self._memory:
            return self._memory[source_id]
        stored = self.home.text(source_id)
        if stored is not None:
            return self._parsed(*stored)
        raise UnknownSource(f"no source {source_id!r}; see `urbis sources list`")

    def save(self, source: SourceDefinition, *, text: str | None = None) -> Path | None:
        """Store a validated definition (replacing one with the same id).

        `text` keeps the user's own TOML (comments included) when it is given; otherwise the
        definition is written out. The file's path when the catalogue is a directory.
        """
        self._validate(source, f"<{source.id}>")
        with self._lock:
            return self.home.write(source.id, text if text is not None else to_toml(source))

    def remember(self, source: SourceDefinition) -> None:
        """Keep a definition in memory only (the demo's generated sources)."""
        self._validate(source, f"<{source.id}>")
        with self._lock:
            self._memory[source.id] = source

    def remove(self, source_id: str) -> None:
        with self._lock:
            if self._memory.pop(source_id, None) is not None:
                return
            if not self.home.remove(source_id):
                raise UnknownSource(f"no source {source_id!r}")
