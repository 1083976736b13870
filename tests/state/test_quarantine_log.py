"""The quarantine as an append log answers what the old whole-file rewrite answered, and the
log stays bounded however many incremental runs (or live flushes) append to it."""

from __future__ import annotations

import random

from urbis.connectors.quarantine import Quarantine, QuarantineEntry, quarantine_log
from urbis.twin.state import memory_state_store


def entry(key: str | None, reason: str, n: int) -> QuarantineEntry:
    return QuarantineEntry("lights", key, reason, {"n": n}, f"2026-01-01T00:00:{n % 60:02d}Z")


def old_replace(
    current: list[QuarantineEntry], new: list[QuarantineEntry], *, merge: bool
) -> list[QuarantineEntry]:
    """Quarantine.replace before the state store: read the file, filter, write it whole."""
    if merge:
        keys = {e.key for e in new}
        return [e for e in current if e.key not in keys] + new
    return new


def test_the_log_answers_as_the_file_did_and_stays_bounded() -> None:
    rng = random.Random(7)
    state = memory_state_store()
    quarantine = Quarantine(state)
    expected: list[QuarantineEntry] = []
    for step in range(400):
        keys = [rng.choice([None, *map(str, range(30))]) for _ in range(rng.randint(0, 6))]
        new = [entry(k, rng.choice(["bad unit", "no id"]), step) for k in keys]
        if step % 97 == 96:
            assert quarantine.clear("lights") == len(expected)
            expected = []
            continue
        merge = rng.random() < 0.85  # mostly incremental runs and live flushes
        quarantine.replace("lights", new, merge=merge)
        expected = old_replace(expected, new, merge=merge)
        assert quarantine.list("lights") == expected
        stored = len(state.read(quarantine_log("lights"), ""))
        assert stored <= 2 * len(expected) + 64 + len(new)  # compacted as it goes
    assert quarantine.count("lights") == len(expected)
    assert quarantine.list("lights", limit=3, offset=2) == expected[2:5]
    assert quarantine.list("other") == []
