"""One `urbis serve` process on a free loopback port over a temporary on-disk twin
(started by the launcher tests use, `urbis.testing.server`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from urbis.testing.server import Server, free_port, serving

REPO = Path(__file__).resolve().parent.parent
__all__ = ["REPO", "Server", "cli_module", "free_port", "running_server"]


def cli_module(code: Path) -> str:
    """The command-line module of a source tree: `urbis.cli`, or `api.cli` before src/urbis."""
    return "api.cli" if (code / "api" / "cli.py").exists() else "urbis.cli"


@contextmanager
def running_server(
    data_dir: Path, log: Path, *, start_timeout: float = 120.0, code: Path | None = None
) -> Iterator[Server]:
    """Start the server as users do (`python -m urbis.cli serve --open`), stop it on exit;
    `code` runs another source tree (a before/after comparison)."""
    module = cli_module(code) if code is not None else "urbis.cli"
    with serving(
        "--data-dir",
        str(data_dir),
        "--open",
        log=log,
        code=code,
        module=module,
        timeout=start_timeout,
    ) as server:
        yield server
