"""Child processes of this process (the SPARQL query workers), for tests and benchmarks."""

from __future__ import annotations

import os
from pathlib import Path


def children(of: int | None = None) -> set[int]:
    """Live children of `of` (default: this process).

    Read from every process's own `stat` (its parent pid), not from the per-thread `children`
    lists: a child of a thread that ends moves to another thread's list, and a scan of those
    lists can miss it in between.
    """
    parent, found = of if of is not None else os.getpid(), set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):  # ended meanwhile
            continue
        if int(fields[1]) == parent:
            found.add(int(entry.name))
    return found
