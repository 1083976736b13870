"""Soak: the server's memory under a steady mixed load of updates and reads.

`python -m bench.soak_bench [--minutes 10] [--rate 150] [--entities 5000] [--out FILE]`

Starts its own server (`python -m urbis.cli serve --open`) on a free loopback port over a
temporary on-disk twin, loads the demo city with batch upserts, then sends a steady mix of
PATCH attrs, merge-patches, PUT replaces, batch upserts, GETs by id and queries with q from a
bounded pool of keep-alive clients for `--minutes`, sampling the server's resident memory
every `--sample-seconds`. Prints the RSS curve (one row a minute) and the slope over the last
half in KB per request, writes every sample as JSON with `--out`, and stops by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from bench import loading, machine
from bench.server import REPO, Server, running_server
from bench.workload import Facts, batches, scale_for

ENTITIES = "/ngsi-ld/v1/entities"
UPSERT = "/ngsi-ld/v1/entityOperations/upsert"
_START = time.monotonic()

# (kind, weight, expected status): writes are ~60 % of the load, as in a city of sensors.
MIX: tuple[tuple[str, int, int], ...] = (
    ("patch_attrs", 35, 204),
    ("merge_patch", 12, 204),
    ("replace", 5, 204),
    ("batch_upsert", 8, 204),
    ("get_by_id", 25, 200),
    ("query_q", 15, 200),
)
BATCH = 20  # entities per batch upsert of the mix


def log(message: str) -> None:
    print(f"[{time.monotonic() - _START:7.1f}s] {message}", file=sys.stderr, flush=True)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.soak_bench", description=__doc__)
    p.add_argument("--minutes", type=float, default=10.0, help="mixed load duration (10)")
    p.add_argument("--rate", type=float, default=150.0, help="requests per second (150)")
    p.add_argument("--entities", type=int, default=5000, help="about this many (5000)")
    p.add_argument("--workers", type=int, default=4, help="concurrent clients (4)")
    p.add_argument("--sample-seconds", type=float, default=5.0, help="RSS sampling period")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--work-dir", type=Path, help="where the temporary twin goes (default /tmp)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0 or args.workers < 1 or args.entities < 1:
        p.error("--minutes, --rate, --workers and --entities must be positive")
    return args


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Mix:
    """Makes each request of the mix from a seeded RNG over the loaded city."""

    def __init__(self, facts: Facts, containers: dict[str, dict[str, Any]], seed: int) -> None:
        self.ids = facts.ids
        self.containers = containers  # WasteContainers as loaded: the writes' targets
        self.container_ids = sorted(containers)
        self.kinds = [k for k, _, _ in MIX]
        self.weights = [w for _, w, _ in MIX]
        self.expected = {k: s for k, _, s in MIX}
        self.seed = seed

    def request(self, rng: random.Random) -> tuple[str, str, str, bytes | None]:
        """(kind, method, path, JSON body) of one request."""
        kind = rng.choices(self.kinds, self.weights)[0]
        target = rng.choice(self.container_ids)
        level = {"type": "Property", "value": round(rng.random(), 3), "observedAt": _now()}
        if kind == "patch_attrs":
            return (
                kind,
                "PATCH",
                f"{ENTITIES}/{target}/attrs",
                orjson.dumps({"fillingLevel": level}),
            )
        if kind == "merge_patch":
            status = {"type": "Property", "value": rng.choice(["ok", "full", "damaged"])}
            body = {"fillingLevel": level, "status": status}
            return kind, "PATCH", f"{ENTITIES}/{target}", orjson.dumps(body)
        if kind == "replace":
            entity = {k: v for k, v in self.containers[target].items() if k != "id"}
            entity["fillingLevel"] = level
            return kind, "PUT", f"{ENTITIES}/{target}", orjson.dumps(entity)
        if kind == "batch_upsert":
            chosen = rng.sample(self.container_ids, BATCH)
            items = [
                {
                    "id": i,
                    "type": "WasteContainer",
                    "fillingLevel": {**level, "value": rng.random()},
                }
                for i in chosen
            ]
            return kind, "POST", f"{UPSERT}?options=update", orjson.dumps(items)
        if kind == "get_by_id":
            return kind, "GET", f"{ENTITIES}/{rng.choice(self.ids)}", None
        threshold = round(rng.uniform(0.5, 0.95), 2)
        q = quote(f'fillingLevel>{threshold};status=="ok"', safe="")
        return kind, "GET", f"{ENTITIES}?type=WasteContainer&q={q}&limit=20", None


@dataclass
class Tally:
    done: int = 0
    errors: int = 0
    behind: int = 0  # slots missed because the server was slower than the rate
    first_errors: list[str] | None = None


class Load:
    """`workers` keep-alive clients sharing one schedule of `rate` requests per second.

    Each worker takes the next slot of the schedule and sleeps until it is due; a slot already
    past by more than a second is skipped (counted as `behind`), so a slow server is never
    answered with a burst.
    """

    def __init__(self, server: Server, mix: Mix, rate: float, workers: int) -> None:
        self.server = server
        self.mix = mix
        self.interval = 1.0 / rate
        self.workers = workers
        self.tally = Tally(first_errors=[])
        self.kinds: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._next = time.monotonic()
        self._stop = threading.Event()

    def _slot(self) -> float:
        with self._lock:
            now = time.monotonic()
            if self._next < now - 1.0:
                missed = int((now - self._next) / self.interval)
                self.tally.behind += missed
                self._next += missed * self.interval
            due = self._next
            self._next += self.interval
            return due

    def _worker(self, index: int) -> None:
        rng = random.Random(self.mix.seed * 1000 + index)
        headers = {"Content-Type": "application/json", "Link": self.server.link}
        with httpx.Client(base_url=self.server.base, timeout=60, headers=headers) as client:
            while not self._stop.is_set():
                delay = self._slot() - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
                kind, method, path, body = self.mix.request(rng)
                try:
                    response = client.request(method, path, content=body)
                    error = None
                    if response.status_code != self.mix.expected[kind]:
                        error = f"{kind}: HTTP {response.status_code}: {response.text[:300]}"
                except httpx.HTTPError as exc:
                    error = f"{kind}: {type(exc).__name__}: {exc}"
                with self._lock:
                    self.tally.done += 1
                    self.kinds[kind] += 1
                    if error is not None:
                        self.tally.errors += 1
                        assert self.tally.first_errors is not None
                        if len(self.tally.first_errors) < 10:
                            self.tally.first_errors.append(error)

    def run(
        self, seconds: float, sample_every: float, sample: Callable[[float, int], None]
    ) -> None:
        threads = [
            threading.Thread(target=self._worker, args=(i,), daemon=True)
            for i in range(self.workers)
        ]
        start = time.monotonic()
        self._next = start
        for thread in threads:
            thread.start()
        try:
            while (elapsed := time.monotonic() - start) < seconds:
                sample(elapsed, self.tally.done)
                time.sleep(min(sample_every, max(0.0, seconds - elapsed)))
        finally:
            self._stop.set()
            for thread in threads:
                thread.join(timeout=70)
        sample(time.monotonic() - start, self.tally.done)


def _tree_rss(pid: int) -> int:
    """VmRSS of the server's child processes (query workers), in bytes."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # exited
                total += machine.memory(int(child)).get("VmRSS", 0)
    return total


def _status(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon and VmHWM of the server, in bytes."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon", "VmHWM"):
            out[key] = int(rest.split()[0]) * 1024
    return out


def slope_kb_per_request(samples: list[dict[str, Any]]) -> float | None:
    """Least-squares slope of RSS (KB) against requests done, over the last half of the run."""
    if not samples:
        return None
    half = samples[-1]["t_s"] / 2
    tail = [(float(s["requests"]), float(s["rss"]) / 1024) for s in samples if s["t_s"] >= half]
    if len(tail) < 3:
        return None
    n = len(tail)
    mx = sum(x for x, _ in tail) / n
    my = sum(y for _, y in tail) / n
    sxx = sum((x - mx) ** 2 for x, _ in tail)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in tail) / sxx


def _load_city(server: Server, scale: int) -> tuple[Facts, dict[str, dict[str, Any]], Any]:
    facts = Facts()
    upsert = loading.http_upsert(server, scale, 1000, facts, max_rss=8 * 2**30)
    containers = {
        e["id"]: e for batch in batches(scale, 1000) for e in batch if e["type"] == "WasteContainer"
    }
    return facts, containers, upsert


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine.machine_facts(),
        "source_digest": machine.source_digest(REPO),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "mix": {k: w for k, w, _ in MIX},
        "load_average_at_start": os.getloadavg(),
    }
    samples: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="urbis-soak-", dir=args.work_dir) as tmp:
        work = Path(tmp)
        with running_server(work / "twin", work / "server.log") as server:
            results["rss_empty"] = _status(server.pid)
            facts, containers, upsert = _load_city(server, scale_for(args.entities))
            results["entities"] = facts.total
            results["waste_containers"] = len(containers)
            results["rss_loaded"] = _status(server.pid)
            log(
                f"server pid {server.pid}: {facts.total} entities loaded, {upsert.per_second:.0f}/s"
            )
            load = Load(server, Mix(facts, containers, args.seed), args.rate, args.workers)
            meter = machine.CpuMeter(server.pid)
            last_log = [0.0]

            def sample(t: float, requests: int) -> None:
                status = _status(server.pid)
                row = {
                    "t_s": round(t, 1),
                    "requests": requests,
                    "rss": status["VmRSS"],
                    "rss_anon": status["RssAnon"],
                    "children_rss": _tree_rss(server.pid),
                }
                samples.append(row)
                if t - last_log[0] >= 60 or t == 0:
                    last_log[0] = t
                    log(f"{t:6.0f} s  {requests:8d} requests  RSS {row['rss'] / 2**20:7.1f} MB")

            load.run(args.minutes * 60, args.sample_seconds, sample)
            results["cpu"] = meter.stop()
            results["rss_end"] = _status(server.pid)
            results["disk_bytes"] = machine.disk_bytes(work / "twin")
            results["load_average_at_end"] = os.getloadavg()
    tally = load.tally
    wall = samples[-1]["t_s"] if samples else 0.0
    results.update(
        requests=tally.done,
        errors=tally.errors,
        first_errors=tally.first_errors,
        behind=tally.behind,
        per_kind=dict(load.kinds),
        achieved_rate=round(tally.done / wall, 1) if wall else 0.0,
        samples=samples,
        slope_last_half_kb_per_request=_round(slope_kb_per_request(samples)),
        source_changed_during_run=machine.source_digest(REPO) != results["source_digest"],
    )
    return results


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def per_minute(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first sample of each minute, and the last one."""
    rows: list[dict[str, Any]] = []
    for s in samples:
        if not rows or s["t_s"] >= 60 * len(rows):
            rows.append(s)
    if samples and rows[-1] is not samples[-1]:
        rows.append(samples[-1])
    return rows


def print_table(results: dict[str, Any]) -> None:
    print(
        f"\n{results['entities']:,} entities; {results['requests']:,} requests at "
        f"{results['achieved_rate']}/s ({results['errors']} errors, {results['behind']} slots "
        f"missed); server used {results['cpu']['server_cores']} cores, others "
        f"{results['cpu']['other_cores']}\n"
    )
    print(" min | requests | RSS MB | anon MB | workers MB")
    print("-----+----------+--------+---------+-----------")
    for s in per_minute(results["samples"]):
        print(
            f"{s['t_s'] / 60:4.1f} | {s['requests']:8d} | {s['rss'] / 2**20:6.1f} | "
            f"{s['rss_anon'] / 2**20:7.1f} | {s['children_rss'] / 2**20:9.1f}"
        )
    print(f"\nslope over the last half: {results['slope_last_half_kb_per_request']} KB/request\n")


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    results = run(args)
    print_table(results)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
        log(f"results written to {args.out}")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
