"""Loads the generated demo city and keeps it alive with periodic sensor updates."""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import UTC, datetime
from typing import Any

from api.deps import AppState
from twin import demo
from twin.entities import append_attributes
from twin.model import EntityReader, now_iso
from twin.store.base import DEFAULT_TENANT
from twin.terms import Terms

log = logging.getLogger("urbis")
DEMO_DATASET = "urn:urbis:dataset:demo"


def demo_terms(state: AppState) -> Terms:
    """The packaged smart-city context, resolved from the registry (never fetched)."""
    return state.resolver.resolve(state.registry.get(demo.CONTEXT_ID)["@context"])


def load_demo(state: AppState, *, seed: int = 42) -> int:
    terms = demo_terms(state)
    service = state.twin.tenant(DEFAULT_TENANT, create=True)
    reader = EntityReader(terms)
    docs = [reader.entity(e) for e in demo.generate(seed=seed)]

    def upsert(new: dict[str, Any], existing: dict[str, Any] | None) -> dict[str, Any]:
        return new

    result = service.batch([(d["id"], d) for d in docs], upsert, graph=DEMO_DATASET)
    log.info("demo city loaded: %d entities", len(result.success))
    return len(result.success)


def apply_updates(state: AppState, rng: random.Random) -> int:
    terms = demo_terms(state)
    service = state.twin.tenant(DEFAULT_TENANT, create=True)
    now = now_iso()
    reader = EntityReader(terms, now=now)
    items = []
    for entity_id, fragment in demo.updates(rng, datetime.now(UTC)):
        items.append((entity_id, reader.attributes(fragment, allow_null=False)))

    def update(attrs: dict[str, Any], existing: dict[str, Any] | None) -> dict[str, Any] | None:
        if existing is None:
            return None
        doc = dict(existing)
        append_attributes(doc, attrs, overwrite=True, now=now)
        return doc

    return len(service.batch(items, update, graph=DEMO_DATASET).success)


async def run_live_demo(state: AppState, period: float) -> None:
    rng = random.Random(7)
    while True:
        await asyncio.sleep(period)
        try:
            await asyncio.to_thread(apply_updates, state, rng)
        except Exception:  # the demo must never take the server down
            log.exception("demo update failed")
