"""NGSI-LD performance benchmark: `python -m bench.ngsi_bench [--entities N] [--million]`.

Starts its own server (`python -m urbis.cli serve --open`) on a free loopback port over a
temporary on-disk twin, loads the demo city with batch upserts, measures GET throughput with
wrk and query latencies one request at a time, then loads the same quads straight into a
pyoxigraph store for comparison. Prints a table and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench import latency, loading, machine, profiling, throughput
from bench.server import REPO, Server, running_server
from bench.workload import Facts, scale_for
from urbis.api.app import build_state
from urbis.api.settings import Settings

MILLION = 1_000_000
RSS_TARGET = 1.5e9  # the 1.5 GB, read strictly (decimal)
_START = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - _START:7.1f}s] {message}", file=sys.stderr, flush=True)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.ngsi_bench", description=__doc__)
    p.add_argument("--entities", type=int, default=100_000, help="about this many (default 100000)")
    p.add_argument("--million", action="store_true", help="load 1,000,000 entities instead")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--requests", type=int, default=200, help="timed requests per query kind")
    p.add_argument("--warmup", type=int, default=20, help="untimed requests per query kind")
    p.add_argument("--kind-budget", type=float, default=240.0, help="max seconds per query kind")
    p.add_argument("--get-seconds", type=int, default=20, help="wrk duration")
    p.add_argument("--connections", type=int, default=32, help="wrk connections")
    p.add_argument("--kinds", help="comma-separated latency kinds to run (default: all)")
    p.add_argument("--max-rss-gib", type=float, default=8.0, help="stop loading past this RSS")
    p.add_argument("--skip-raw", action="store_true", help="no raw pyoxigraph comparison")
    p.add_argument("--profile", type=Path, help="py-spy each phase into this directory")
    p.add_argument("--work-dir", type=Path, help="where the temporary twin goes (default /tmp)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument(
        "--code", type=Path, help="serve from this source tree instead (a before/after comparison)"
    )
    args = p.parse_args(argv)
    if args.million:
        args.entities = MILLION
    if args.entities < 1 or args.batch_size < 1 or args.requests < 1:
        p.error("--entities, --batch-size and --requests must be positive")
    return args


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def _profile_path(args: argparse.Namespace, phase: str) -> Path | None:
    if args.profile is None:
        return None
    args.profile.mkdir(parents=True, exist_ok=True)
    return Path(args.profile / f"{phase}.txt")


def _save(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Write what is known so far, so a run that dies late still leaves its figures."""
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))


def run(args: argparse.Namespace) -> dict[str, Any]:
    scale = scale_for(args.entities)
    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine.machine_facts(),
        "source_digest": machine.source_digest(args.code or REPO),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "demo_scale": scale,
        "load_average_at_start": os.getloadavg(),
    }
    facts = Facts()
    with tempfile.TemporaryDirectory(prefix="urbis-bench-", dir=args.work_dir) as tmp:
        work = Path(tmp)
        with running_server(work / "twin", work / "server.log", code=args.code) as server:
            results["rss_empty"] = machine.memory(server.pid)
            log(f"server pid {server.pid} at {server.base}; loading demo scale {scale}")
            with profiling.recording(server.pid, _profile_path(args, "upsert")):
                upsert = loading.http_upsert(
                    server, scale, args.batch_size, facts, max_rss=int(args.max_rss_gib * 2**30)
                )
            results["upsert"] = upsert.as_dict()
            results["rss_loaded"] = machine.memory(server.pid)
            results["disk_bytes"] = machine.disk_bytes(work / "twin")
            results["dataset"] = {
                "entities": facts.total,
                "attributes_per_entity": round(facts.attributes / facts.total, 1),
                "json_bytes_per_entity": round(upsert.body_bytes / facts.total),
                "types": dict(facts.types.most_common()),
                "waste_containers": len(facts.filling_levels),
            }
            log(f"upserted {facts.total} in {upsert.timed_s:.1f} s: {upsert.per_second:.0f}/s")
            if upsert.stopped:
                log(f"load stopped early: {upsert.stopped}")
            _save(args, results)
            results["get_throughput"] = _get_phase(args, server, facts, work)
            _save(args, results)
            results["latency"] = []
            chosen = set(args.kinds.split(",")) if args.kinds else None
            for kind in latency.kinds(facts):
                if chosen is not None and kind.name not in chosen:
                    continue
                with profiling.recording(server.pid, _profile_path(args, kind.name)):
                    row = latency.measure(
                        server,
                        kind,
                        requests=args.requests,
                        warmup=args.warmup,
                        budget_s=args.kind_budget,
                    )
                log(f"{kind.name}: p50 {row['p50_ms']} ms, p95 {row['p95_ms']} ms")
                results["latency"].append(row)
                _save(args, results)
            results["rss_end"] = machine.memory(server.pid)
            results["load_average_at_end"] = os.getloadavg()
        if not args.skip_raw:
            loaded = results["upsert"]["entities"]
            results["raw_oxigraph"] = _raw_phase(args, scale, server.context_url, work, loaded)
    digest = machine.source_digest(args.code or REPO)
    results["source_changed_during_run"] = digest != results["source_digest"]
    if args.profile is not None:
        results["profiles"] = {
            p.stem: profiling.summarise(p) for p in sorted(args.profile.glob("*.txt"))
        }
    return results


def _get_phase(
    args: argparse.Namespace, server: Server, facts: Facts, work: Path
) -> dict[str, Any]:
    log("GET /entities/{id}: 3 s warm-up, then the measured run")

    def run_get(seconds: int) -> dict[str, Any]:
        return throughput.get_throughput(
            server, facts.ids, work, seconds=seconds, connections=args.connections
        )

    run_get(3)
    # --gil: 32 requests in flight queue for the GIL, and waiting threads look busy to py-spy
    with profiling.recording(server.pid, _profile_path(args, "get_by_id_load"), gil=True):
        result = run_get(args.get_seconds)
    log(f"GET by id: {result['requests_per_s']} req/s ({result['non_2xx']} not 2xx)")
    return result


def _raw_phase(
    args: argparse.Namespace, scale: int, context_url: str, work: Path, loaded: int
) -> dict[str, Any]:
    state = build_state(Settings(open=True))
    try:
        terms = state.resolver.resolve(context_url)
    finally:
        state.resolver.close()
        state.twin.close()
    log("raw pyoxigraph: Store(path).extend(quads of 1 batch) per batch")
    raw = loading.raw_store_load(terms, scale, args.batch_size, work, limit=loaded)
    log(f"raw pyoxigraph: {raw.per_second:.0f} entities/s, {raw.quads} quads")
    return raw.as_dict()


def _verdict(value: float | None, target: float, higher_is_better: bool, ok: bool = True) -> str:
    if value is None or not ok:
        return "INVALID"
    passed = value >= target if higher_is_better else value < target
    return "pass" if passed else "FAIL"


def summary_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(measure, result, target, verdict) rows of the headline table."""
    rows: list[tuple[str, str, str, str]] = []
    up = results["upsert"]
    rows.append(
        (
            "batch upsert (1,000/batch)",
            f"{up['entities_per_s']:,.0f} entities/s",
            ">= 5,000/s",
            _verdict(up["entities_per_s"], 5000, True),
        )
    )
    raw = results.get("raw_oxigraph")
    if raw:
        ratio = up["entities_per_s"] / raw["entities_per_s"]
        results["upsert_to_raw_ratio"] = round(ratio, 3)
        rows.append(
            (
                "upsert / raw pyoxigraph extend",
                f"{ratio:.3f} (raw {raw['entities_per_s']:,.0f}/s)",
                ">= 0.25",
                _verdict(ratio, 0.25, True),
            )
        )
    get = results["get_throughput"]
    rows.append(
        (
            "GET /entities/{id}, random ids",
            f"{get['ok_per_s']:,.0f} req/s",
            ">= 2,000/s",
            _verdict(get["ok_per_s"], 2000, True, get["non_2xx"] == 0),
        )
    )
    for row in results["latency"]:
        target = row["target_p95_ms"]
        result = f"p50 {row['p50_ms']} / p95 {row['p95_ms']} ms"
        if target is None:
            rows.append((row["label"], result, "-", "INVALID" if row["errors"] else "info"))
        else:
            verdict = _verdict(row["p95_ms"], target, False, row["errors"] == 0)
            rows.append((row["label"], result, f"p95 < {target:g} ms", verdict))
    rss = results["rss_loaded"]["VmRSS"]
    million = results["dataset"]["entities"] >= 0.99 * MILLION
    rows.append(
        (
            "server RSS after load",
            _gb(rss),
            "< 1.5 GB at 1M" if million else "-",
            _verdict(rss, RSS_TARGET, False) if million else "info",
        )
    )
    rows.append(("server peak RSS (VmHWM)", _gb(results["rss_end"]["VmHWM"]), "-", "info"))
    return rows


def print_table(results: dict[str, Any]) -> None:
    rows = [("measure", "result", "target", "verdict"), *summary_rows(results)]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    data = results["dataset"]
    print(
        f"\n{data['entities']:,} entities, {data['attributes_per_entity']} attributes each "
        f"on average; {results['machine']['nproc']} cores ({results['machine']['cpu_model']}), "
        "server and load generator on the same machine\n"
    )
    for i, row in enumerate(rows):
        print(" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        if i == 0:
            print("-+-".join("-" * w for w in widths))
    print()


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    results = run(args)
    print_table(results)
    _save(args, results)
    if args.out is not None:
        log(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
