"""Optional py-spy sampling of the server during a phase, summarised per file and function.

py-spy samples the server from outside; without `--native` a call into pyoxigraph, orjson or
any extension shows as time spent in the Python line that made it.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.server import REPO


@contextmanager
def recording(pid: int, out: Path | None, *, rate: int = 100, gil: bool = False) -> Iterator[None]:
    """Sample `pid` into `out` (py-spy's collapsed-stack format) while the block runs.

    With `gil` only the thread holding the GIL is sampled: the Python work of a busy server
    whose threads queue for the GIL, but not what extensions do after releasing it.
    """
    if out is None:
        yield
        return
    if shutil.which("py-spy") is None:
        raise RuntimeError("--profile needs py-spy (pip install py-spy)")
    command = ["py-spy", "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw"]
    if gil:
        command.append("--gil")
    proc = subprocess.Popen(
        [*command, "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    time.sleep(1.0)  # let it attach before the phase starts
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _place(frame: str) -> tuple[str, str]:
    """(file, function) of a py-spy frame `function (path:line)`."""
    function, _, rest = frame.partition(" (")
    path = rest.rsplit(":", 1)[0]
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif path.startswith(str(REPO)):
        path = path[len(str(REPO)) + 1 :]
    return path.removeprefix("src/urbis/"), function


# Leaf frames of a thread that waits: py-spy's idle detection misses them in this sandbox.
_WAITS = frozenset({"Condition.wait", "EpollSelector.select", "Event.wait", "Thread.join"})


def summarise(collapsed: Path, top: int = 15) -> dict[str, Any]:
    """Self time per file and inclusive time per project function, as shares of busy samples."""
    self_by_file: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = idle = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        places = [_place(f) for f in stack.split(";") if " (" in f]
        if not places or places[-1][1] in _WAITS:
            idle += count
            continue
        total += count
        self_by_file[places[-1][0]] += count
        seen = {f"{path}:{fn}" for path, fn in places if path.startswith(("twin/", "api/"))}
        for key in seen:
            inclusive[key] += count
    if not total:
        return {"samples": 0}

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in counter.most_common(top)]

    return {
        "samples": total,
        "idle_samples": idle,
        "self_percent_by_file": share(self_by_file),
        "inclusive_percent_by_project_function": share(inclusive),
    }
