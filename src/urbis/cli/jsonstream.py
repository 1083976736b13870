"""Stream the items of a large JSON array file without holding the whole document."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_DECODER = json.JSONDecoder()
_CHUNK = 1 << 20


def iter_json_items(path: Path) -> Iterator[Any]:
    """Yield each item of a top-level JSON array (or the single top-level object).

    Reads 1 MiB at a time and decodes one item at a time, so a file of 30,000 entities never
    sits in memory twice.
    """
    with path.open(encoding="utf-8") as f:
        buffer = f.read(_CHUNK).lstrip()
        if not buffer.startswith("["):
            rest = f.read()
            yield json.loads(buffer + rest)
            return
        buffer = buffer[1:]
        eof = False
        while True:
            buffer = buffer.lstrip().lstrip(",").lstrip()
            if buffer.startswith("]"):
                return
            try:
                item, end = _DECODER.raw_decode(buffer)
            except json.JSONDecodeError:
                if eof:
                    raise ValueError(f"{path}: the JSON array is truncated or malformed") from None
                more = f.read(_CHUNK)
                eof = not more
                buffer += more
                continue
            yield item
            buffer = buffer[end:]
            if len(buffer) < _CHUNK // 2 and not eof:
                more = f.read(_CHUNK)
                eof = not more
                buffer += more
