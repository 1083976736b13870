"""The term-mapping contract the model needs from a resolved @context (see twin.context)."""

from __future__ import annotations

from typing import Protocol


class Terms(Protocol):
    """Expansion and compaction of names with one resolved @context (core context last)."""

    def expand(self, term: str) -> str: ...

    def compact(self, iri: str) -> str: ...

    def expand_vocab(self, value: str) -> str: ...

    def compact_vocab(self, value: str) -> str: ...
