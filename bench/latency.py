"""Latency of single requests, one at a time over one keep-alive connection.

Each kind makes a fresh request from a seeded RNG (a random id, threshold or point) and knows
what the server must answer, so a fast wrong answer cannot pass for a fast right one.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from bench.machine import CpuMeter
from bench.server import Server
from bench.workload import Facts
from urbis.demo import city as demo

ENTITIES = "/ngsi-ld/v1/entities"
Check = Callable[[httpx.Response], str | None]
Request = tuple[str, dict[str, str], Check]


@dataclass(frozen=True)
class Kind:
    name: str
    label: str
    target_p95_ms: float | None
    make: Callable[[random.Random], Request]


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def _count(response: httpx.Response) -> int | None:
    raw = response.headers.get("NGSILD-Results-Count")
    return int(raw) if raw is not None and raw.isdigit() else None


def _page(expected_total: int, limit: int, *, count: bool) -> Check:
    def check(response: httpx.Response) -> str | None:
        if response.status_code != 200:
            return f"HTTP {response.status_code}: {response.text[:300]}"
        got = len(response.json())
        if got != min(limit, expected_total):
            return f"{got} entities in the page, expected {min(limit, expected_total)}"
        if count and _count(response) != expected_total:
            return f"NGSILD-Results-Count {_count(response)}, expected {expected_total}"
        return None

    return check


def distance_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Haversine distance between two (lon, lat) points."""
    lon1, lat1, lon2, lat2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2
    h += math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6_371_008.8 * math.asin(math.sqrt(h))


def _near(point: tuple[float, float], radius: float, expected: int | None) -> Check:
    """Every entity returned lies within the radius; the page is as full as it should be."""

    def check(response: httpx.Response) -> str | None:
        if response.status_code != 200:
            return f"HTTP {response.status_code}: {response.text[:300]}"
        body = response.json()
        for entity in body:
            geometry = entity.get("location", {}).get("value", {})
            if geometry.get("type") != "Point":  # areas: checked by the API's own tests
                continue
            lon, lat = geometry["coordinates"]
            if distance_m(point, (lon, lat)) > radius * 1.01:
                return f"{entity.get('id')} at {(lon, lat)} is not within {radius} m of {point}"
        if expected is not None:
            want = min(100, expected)
            if abs(len(body) - want) > 2 + 0.01 * want:  # geodesic vs haversine at the edge
                return f"{len(body)} entities near {point}, expected about {want}"
        return None

    return check


def kinds(facts: Facts) -> list[Kind]:
    """The request kinds of the latency phase."""
    all_types = ",".join(sorted(facts.types))
    provider = f'dataProvider=="{demo.PROVIDER}"'

    def get_by_id(rng: random.Random) -> Request:
        entity_id = rng.choice(facts.ids)

        def check(response: httpx.Response) -> str | None:
            if response.status_code != 200:
                return f"HTTP {response.status_code}: {response.text[:300]}"
            got = response.json().get("id")
            return None if got == entity_id else f"asked {entity_id}, got {got}"

        return f"{ENTITIES}/{quote(entity_id, safe=':')}", {}, check

    def filling(count: bool) -> Callable[[random.Random], Request]:
        def make(rng: random.Random) -> Request:
            threshold = round(rng.uniform(0.4, 0.6), 3)
            params = {"type": "WasteContainer", "q": f"fillingLevel>{threshold}", "limit": "100"}
            if count:
                params["count"] = "true"
            expected = facts.containers_fuller_than(threshold)
            return ENTITIES, params, _page(expected, 100, count=count)

        return make

    def count_provider(rng: random.Random) -> Request:
        params = {"q": provider, "count": "true", "limit": "100"}
        return ENTITIES, params, _page(facts.provided, 100, count=True)

    def count_types(rng: random.Random) -> Request:
        params = {"type": all_types, "count": "true", "limit": "100"}
        return ENTITIES, params, _page(facts.total, 100, count=True)

    def near(typed: bool) -> Callable[[random.Random], Request]:
        def make(rng: random.Random) -> Request:
            centre = rng.choice(facts.container_points)
            point = (
                round(centre[0] + rng.uniform(-0.003, 0.003), 6),
                round(centre[1] + rng.uniform(-0.003, 0.003), 6),
            )
            params = {
                "georel": "near;maxDistance==500",
                "geometry": "Point",
                "coordinates": f"[{point[0]},{point[1]}]",
                "limit": "100",
            }
            expected = None
            if typed:
                params["type"] = "WasteContainer"
                expected = sum(1 for p in facts.container_points if distance_m(point, p) <= 500)
            return ENTITIES, params, _near(point, 500, expected)

        return make

    return [
        Kind("get_by_id", "GET /entities/{random id}, one at a time", None, get_by_id),
        Kind("q_limit100", "type=WasteContainer&q=fillingLevel>t&limit=100", 50, filling(False)),
        Kind("q_count", "same, count=true", None, filling(True)),
        Kind(
            "count_q_all", f"q={provider}&count=true&limit=100 (every entity)", 100, count_provider
        ),
        Kind("count_types_all", "type=<all 13 types>&count=true&limit=100", 100, count_types),
        Kind(
            "geo_near500_type", "type=WasteContainer&georel=near;maxDistance==500", 100, near(True)
        ),
        Kind("geo_near500_any", "georel=near;maxDistance==500 (any type)", 100, near(False)),
    ]


def measure(
    server: Server, kind: Kind, *, requests: int, warmup: int, budget_s: float, seed: int = 7
) -> dict[str, Any]:
    """Warm up, then time `requests` requests (fewer if `budget_s` runs out).

    The warm-up may use a tenth of the budget; the timed requests get the rest.
    """
    rng = random.Random(seed)
    headers = {"Link": server.link, "Accept": "application/json"}
    times: list[float] = []
    results: list[int] = []
    errors: list[str] = []
    with httpx.Client(base_url=server.base, headers=headers, timeout=120) as client:
        warm_until = time.monotonic() + budget_s / 10
        for _ in range(warmup):
            if time.monotonic() > warm_until:
                break
            path, params, _check = kind.make(rng)
            client.get(path, params=params)
        meter = CpuMeter(server.pid)
        deadline = time.monotonic() + budget_s
        for _ in range(requests):
            if time.monotonic() > deadline:
                break
            path, params, check = kind.make(rng)
            start = time.perf_counter()
            response = client.get(path, params=params)
            times.append(time.perf_counter() - start)
            problem = check(response)
            if problem is not None:
                errors.append(problem)
            elif response.status_code == 200:
                body = response.json()
                results.append(len(body) if isinstance(body, list) else 1)
        cpu = meter.stop()
    ordered = sorted(times)
    n = len(ordered)
    return {
        "kind": kind.name,
        "label": kind.label,
        "requests": n,
        "errors": len(errors),
        "first_errors": errors[:3],
        "p50_ms": round(percentile(ordered, 0.50) * 1000, 2) if n else None,
        "p95_ms": round(percentile(ordered, 0.95) * 1000, 2) if n else None,
        "p99_ms": round(percentile(ordered, 0.99) * 1000, 2) if n else None,
        "max_ms": round(ordered[-1] * 1000, 2) if n else None,
        "mean_results": round(sum(results) / len(results), 1) if results else 0,
        "server_cpu_ms_per_request": round(cpu["server_cores"] * cpu["wall_s"] / n * 1000, 2)
        if n
        else None,
        "cpu": cpu,
        "target_p95_ms": kind.target_p95_ms,
    }
