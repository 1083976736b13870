"""Federated query cost: `python -m bench.federation_bench [--entities N] [--requests N]`.

Starts three Urbis instances (A, B, C) on loopback, each over its own temporary on-disk twin
holding `--entities` entities of one type (different ids). A registers B and C as inclusive
context sources. Then, one request at a time over a keep-alive connection:

- each instance answers the query from its own data (`local=true`): the slowest of the three
  is the reference;
- A answers the same query federated: its own data plus B's and C's, fetched in parallel.

The issue's target: the federated query costs at most the slowest source's time plus 20 %.
Prints a table and, with --out, writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from bench.latency import percentile
from bench.server import Server, running_server

TYPE = "https://example.org/bench/Bin"
LEVEL = "https://example.org/bench/level"
ENTITIES = "/ngsi-ld/v1/entities"


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.federation_bench", description=__doc__)
    p.add_argument("--entities", type=int, default=5000, help="entities per instance")
    p.add_argument("--requests", type=int, default=200, help="timed requests per case")
    p.add_argument("--warmup", type=int, default=20, help="untimed requests per case")
    p.add_argument("--limits", default="20,100", help="page sizes to measure")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    return p.parse_args(argv)


def _load(server: Server, name: str, count: int) -> None:
    with httpx.Client(base_url=server.base, timeout=120, trust_env=False) as client:
        for start in range(0, count, 1000):
            batch = [
                {
                    "id": f"urn:bench:{name}:{i}",
                    "type": TYPE,
                    LEVEL: {"type": "Property", "value": (i % 100) / 100},
                }
                for i in range(start, min(start + 1000, count))
            ]
            r = client.post("/ngsi-ld/v1/entityOperations/upsert", json=batch)
            r.raise_for_status()


def _register(broker: Server, source: Server) -> None:
    body = {
        "type": "ContextSourceRegistration",
        "information": [{"entities": [{"type": TYPE}]}],
        "endpoint": source.base,
    }
    httpx.post(broker.base + "/ngsi-ld/v1/csourceRegistrations", json=body).raise_for_status()


def _measure(
    server: Server, params: dict[str, Any], expected: int, args: argparse.Namespace
) -> dict[str, float]:
    with httpx.Client(base_url=server.base, timeout=60, trust_env=False) as client:
        times = []
        for n in range(args.warmup + args.requests):
            started = time.perf_counter()
            r = client.get(ENTITIES, params=params)
            elapsed = time.perf_counter() - started
            if r.status_code != 200 or len(r.json()) != expected:
                raise RuntimeError(f"unexpected answer {r.status_code}: {r.text[:300]}")
            if "NGSILD-Warning" in r.headers:
                raise RuntimeError(f"a source failed: {r.headers['NGSILD-Warning']}")
            if n >= args.warmup:
                times.append(elapsed * 1000)
    times.sort()
    return {
        "median_ms": round(statistics.median(times), 2),
        "p95_ms": round(percentile(times, 0.95), 2),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"entities_per_instance": args.entities, "cases": []}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        root = Path(tmp)
        servers = {
            name: stack.enter_context(running_server(root / name, root / f"{name}.log"))
            for name in ("A", "B", "C")
        }
        for name, server in servers.items():
            _load(server, name, args.entities)
        _register(servers["A"], servers["B"])
        _register(servers["A"], servers["C"])
        for limit in (int(x) for x in args.limits.split(",")):
            query = {"type": TYPE, "q": f"{LEVEL}>=0.5", "limit": str(limit)}
            single = {
                name: _measure(server, {**query, "local": "true"}, limit, args)
                for name, server in servers.items()
            }
            slowest = max(single.values(), key=lambda m: m["median_ms"])
            federated = _measure(servers["A"], query, limit, args)
            ratio = federated["median_ms"] / slowest["median_ms"]
            case = {
                "limit": limit,
                "single_source": single,
                "slowest_source": slowest,
                "federated": federated,
                "federated_over_slowest": round(ratio, 2),
                "target_met": ratio <= 1.2,
            }
            results["cases"].append(case)
            print(
                f"limit={limit:4d}  slowest source median {slowest['median_ms']:7.2f} ms "
                f"(p95 {slowest['p95_ms']:.2f})  federated median {federated['median_ms']:7.2f}"
                f" ms (p95 {federated['p95_ms']:.2f})  ratio {ratio:.2f}  "
                f"target <= 1.20: {'met' if ratio <= 1.2 else 'NOT met'}",
                flush=True,
            )
    return results


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    results = run(args)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    return 0 if all(c["target_met"] for c in results["cases"]) else 1


if __name__ == "__main__":
    sys.exit(main())
