"""Sustained GET /entities/{id} throughput with random ids, by wrk or, without it, httpx workers.

The load generator runs on the same 2-core machine as the server, so what it burns is taken
from the server: its CPU time is reported next to the figure.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from bench.machine import CpuMeter
from bench.server import Server

ENTITIES = "/ngsi-ld/v1/entities/"

_LUA = """
local ids = {}
for line in io.lines(%(ids)s) do ids[#ids + 1] = line end
local headers = {["Accept"] = "application/json", ["Link"] = %(link)s}
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("seed", counter)
end
function init(args)
  math.randomseed(seed * 7919 + os.time())
end
function request()
  return wrk.format("GET", %(prefix)s .. ids[math.random(#ids)], headers)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %%d, "duration_us": %%d, "non_2xx": %%d, "connect": %%d, ' ..
    '"read": %%d, "write": %%d, "timeout": %%d, "p50_us": %%d, "p90_us": %%d, "p99_us": %%d}\\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
"""


def _lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Lua string literal here


def wrk_get(
    server: Server, ids: list[str], work_dir: Path, *, seconds: int, connections: int, threads: int
) -> dict[str, Any]:
    """Run wrk for a fixed duration; returns its summary with the CPU of both sides."""
    ids_file = work_dir / "ids.txt"
    ids_file.write_text("\n".join(ids) + "\n")
    script = work_dir / "random_get.lua"
    script.write_text(
        _LUA
        % {
            "ids": _lua_string(str(ids_file)),
            "link": _lua_string(server.link),
            "prefix": _lua_string(ENTITIES),
        }
    )
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
    command += ["-s", str(script), server.base]
    meter = CpuMeter(server.pid)
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    cpu = meter.stop()
    line = next((x for x in out.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if out.returncode != 0 or line is None:
        tail = f"{out.stdout[-2000:]} {out.stderr[-2000:]}"
        raise RuntimeError(f"wrk failed ({out.returncode}): {tail}")
    summary: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
    duration = summary["duration_us"] / 1e6
    ok = summary["requests"] - summary["non_2xx"]
    return {
        "tool": f"wrk -t{threads} -c{connections} -d{seconds}s (Lua: random id per request)",
        **summary,
        "requests_per_s": round(summary["requests"] / duration, 1),
        "ok_per_s": round(ok / duration, 1),
        "cpu": cpu,  # bench_cores is wrk's (and this process's) share
    }


def _worker(args: tuple[str, str, list[str], float, int]) -> tuple[int, int, float]:
    """Requests made, failed, and the seconds they took (process start-up excluded)."""
    base, link, ids, seconds, seed = args
    rng = random.Random(seed)
    done = failed = 0
    headers = {"Accept": "application/json", "Link": link}
    with httpx.Client(base_url=base, headers=headers, timeout=10) as client:
        start = time.monotonic()
        while time.monotonic() < start + seconds:
            response = client.get(ENTITIES + rng.choice(ids))
            done += 1
            failed += response.status_code != 200
        return done, failed, time.monotonic() - start


def httpx_get(server: Server, ids: list[str], *, seconds: int, workers: int) -> dict[str, Any]:
    """Fallback without wrk: `workers` processes, each one keep-alive client in a loop."""
    meter = CpuMeter(server.pid)
    jobs = [(server.base, server.link, ids, float(seconds), i) for i in range(workers)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        counts = pool.map(_worker, jobs)
    requests = sum(c for c, _, _ in counts)
    failed = sum(f for _, f, _ in counts)
    rate = sum(c / s for c, _, s in counts if s > 0)
    return {
        "tool": f"httpx, {workers} processes with one keep-alive connection each",
        "requests": requests,
        "non_2xx": failed,
        "requests_per_s": round(rate, 1),
        "ok_per_s": round(rate * (requests - failed) / requests, 1) if requests else 0.0,
        "cpu": meter.stop(),  # the workers are children: bench_cores
    }


def get_throughput(
    server: Server, ids: list[str], work_dir: Path, *, seconds: int, connections: int
) -> dict[str, Any]:
    if shutil.which("wrk") is not None:
        return wrk_get(server, ids, work_dir, seconds=seconds, connections=connections, threads=1)
    return httpx_get(server, ids, seconds=seconds, workers=2)
