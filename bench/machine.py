"""What the benchmark ran on, and what a process costs (read from /proc, Linux only)."""

from __future__ import annotations

import hashlib
import os
import platform
import resource
import shutil
import subprocess
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

_TICKS = os.sysconf("SC_CLK_TCK")


def _first(path: str, key: str) -> str:
    for line in Path(path).read_text().splitlines():
        if line.startswith(key):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _package(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def wrk_version() -> str | None:
    if shutil.which("wrk") is None:
        return None
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=10)
    return (out.stdout or out.stderr).split(" [")[0].strip() or "unknown"


def machine_facts() -> dict[str, Any]:
    """The facts BENCHMARKS.md reports with every figure."""
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": _first("/proc/cpuinfo", "model name"),
        "mem_total": _first("/proc/meminfo", "MemTotal"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pyoxigraph": _package("pyoxigraph"),
        "uvicorn": _package("uvicorn"),
        "uvloop": _package("uvloop"),
        "httptools": _package("httptools"),
        "fastapi": _package("fastapi"),
        "wrk": wrk_version(),
    }


def memory(pid: int) -> dict[str, int]:
    """Resident set size now (VmRSS) and at its peak (VmHWM), in bytes."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(rest.split()[0]) * 1024
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _machine_busy_seconds() -> float:
    """CPU time all processes of the machine have used (every core, since boot)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / _TICKS


class CpuMeter:
    """Who used the CPU during a phase: the server, this benchmark (and its children), others.

    The cores are shared; CPU the others used was not available to the server.
    """

    def __init__(self, server_pid: int) -> None:
        self.pid = server_pid
        self.start = self._snapshot()

    def _snapshot(self) -> tuple[float, float, float, float]:
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        bench = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
        return time.monotonic(), cpu_seconds(self.pid), bench, _machine_busy_seconds()

    def stop(self) -> dict[str, float]:
        """Average cores used since construction, per party."""
        end = self._snapshot()
        wall, server, bench, busy = (e - s for e, s in zip(end, self.start, strict=True))
        wall = max(wall, 1e-9)
        return {
            "wall_s": round(wall, 3),
            "server_cores": round(server / wall, 2),
            "bench_cores": round(bench / wall, 2),
            "other_cores": round(max(0.0, busy - server - bench) / wall, 2),
        }


def source_digest(root: Path) -> str:
    """A fingerprint of the code under test, since a run may not match any commit (`src/` or,
    before the src layout, the top-level packages)."""
    digest = hashlib.sha256()
    tops = ("src",) if (root / "src").is_dir() else ("api", "twin", "ontology", "connectors")
    for package in tops:
        for path in sorted((root / package).rglob("*")):
            if path.is_file() and path.suffix in (".py", ".jsonld"):
                digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
