"""EntitySelector (clause 5.2.33): id, idPattern and type expression, with one meaning.

The same selector is evaluated on a document (`selects`), translated to SPARQL for the store
(`sparql`) and compared with another selector (`may_overlap`: could one entity be selected by
both?), which is how a query or retrieval finds the registrations of sources that may hold its
entities. idPattern is the search of `twin.query.idpattern` everywhere (RE2 here, the store's
REGEX in SPARQL, on the common syntax subset both read alike).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from urbis.twin.query.idpattern import IdPattern, compile_id_pattern
from urbis.twin.query.sparql import iri, string
from urbis.twin.query.typeexpr import TypeExpr, type_filter, type_iris, type_matches

Doc = dict[str, Any]


@dataclass(frozen=True)
class EntitySelector:
    """Conditions on an entity's id and types, names expanded; every member given must hold.

    `ids` are alternatives (an entity with any of them; none: any id); `id_pattern` is checked
    (400 BadRequestData) and compiled when the selector is made.
    """

    ids: tuple[str, ...] = ()
    id_pattern: str | None = None
    types: TypeExpr | None = None
    pattern: IdPattern | None = field(init=False, repr=False, compare=False)
    _id_set: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pattern = None if self.id_pattern is None else compile_id_pattern(self.id_pattern)
        object.__setattr__(self, "pattern", pattern)
        object.__setattr__(self, "_id_set", frozenset(self.ids))

    @classmethod
    def of(
        cls,
        ids: Sequence[str] | None = None,
        id_pattern: str | None = None,
        types: TypeExpr | None = None,
    ) -> EntitySelector:
        return cls(tuple(ids or ()), id_pattern, types)

    @property
    def empty(self) -> bool:
        """Selects every entity."""
        return not self.ids and self.id_pattern is None and self.types is None

    def selects(self, doc: Doc) -> bool:
        """Whether the canonical document is selected."""
        return self.selects_entity(doc["id"], doc.get("type", ()))

    def selects_entity(self, entity_id: str, types: Collection[str]) -> bool:
        if self._id_set and entity_id not in self._id_set:
            return False
        if self.pattern is not None and not self.pattern.search(entity_id):
            return False
        return self.types is None or type_matches(self.types, types)

    def may_overlap(self, other: EntitySelector) -> bool:
        """Whether some entity may be selected by both; True whenever it cannot be decided.

        Types: both name some type in common (`A;B` may meet `A`: such entities may also be
        B). Ids: when either side lists ids, some listed id passes both sides' ids and
        patterns; two patterns alone are undecidable here, so they may overlap.
        """
        if (
            self.types is not None
            and other.types is not None
            and not type_iris(self.types) & type_iris(other.types)
        ):
            return False
        if not self._id_set and not other._id_set:
            return True
        if self._id_set and other._id_set:
            candidates: Collection[str] = self._id_set & other._id_set
        else:
            candidates = self._id_set or other._id_set
        return any(self._id_passes(i) and other._id_passes(i) for i in candidates)

    def _id_passes(self, entity_id: str) -> bool:
        if self._id_set and entity_id not in self._id_set:
            return False
        return self.pattern is None or self.pattern.search(entity_id)

    def sparql(self, var: str = "e") -> str:
        """A SPARQL boolean expression true when `?var` is selected."""
        parts = []
        if self.ids:
            parts.append(f"?{var} IN ({', '.join(iri(i) for i in self.ids)})")
        if self.id_pattern is not None:
            parts.append(id_pattern_filter(self.id_pattern, var))
        if self.types is not None:
            parts.append(type_filter(self.types, var))
        return "(" + (" && ".join(parts) or "true") + ")"


def id_pattern_filter(pattern: str, var: str = "e") -> str:
    """The store's reading of an idPattern: SPARQL REGEX, a search like RE2's."""
    return f"REGEX(STR(?{var}), {string(pattern)})"
