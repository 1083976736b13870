"""The benchmark's data: the demo city at the scale closest to the requested entity count.

The city is generated twice (HTTP load, raw store load) rather than kept in memory: it is
deterministic for a seed, and a million entities as Python objects would not fit comfortably.
While the HTTP load streams it, `Facts` keeps what the read phases need to choose and check
their requests (ids, fill levels, container positions).
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from urbis.demo import city as demo

SEED = 42
Entity = dict[str, Any]


def per_scale_unit() -> int:
    return sum(1 for _ in demo.generate(seed=SEED, scale=1))


def scale_for(entities: int) -> int:
    """The demo scale whose city is closest to `entities` (each unit adds every type)."""
    return max(1, round(entities / per_scale_unit()))


def batches(scale: int, size: int) -> Iterator[list[Entity]]:
    entities = demo.generate(seed=SEED, scale=scale)
    while batch := list(islice(entities, size)):
        yield batch


@dataclass
class Facts:
    """What the loaded city contains, to pick requests and to check the server's answers."""

    ids: list[str] = field(default_factory=list)
    types: Counter[str] = field(default_factory=Counter)
    attributes: int = 0
    filling_levels: list[float] = field(default_factory=list)
    container_points: list[tuple[float, float]] = field(default_factory=list)
    provided: int = 0  # entities whose dataProvider is the demo's

    def observe(self, batch: list[Entity]) -> None:
        for entity in batch:
            self.ids.append(entity["id"])
            self.types[entity["type"]] += 1
            self.attributes += sum(1 for v in entity.values() if isinstance(v, dict | list))
            provider = entity.get("dataProvider")
            if isinstance(provider, dict) and provider.get("value") == demo.PROVIDER:
                self.provided += 1
            if entity["type"] == "WasteContainer":
                self.filling_levels.append(float(entity["fillingLevel"]["value"]))
                lon, lat = entity["location"]["value"]["coordinates"]
                self.container_points.append((lon, lat))

    def sort(self) -> None:
        self.filling_levels.sort()

    def containers_fuller_than(self, threshold: float) -> int:
        """WasteContainers matching `fillingLevel>threshold` (needs `sort()` first)."""
        return len(self.filling_levels) - bisect.bisect_right(self.filling_levels, threshold)

    @property
    def total(self) -> int:
        return len(self.ids)
