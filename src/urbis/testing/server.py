"""The one launcher of real `urbis serve` processes on free loopback ports (tests, benchmarks).

`start_server` starts one and waits until /health answers; `running_server` is the context
manager tests use (it yields the base URL); `serving` yields the `Server` itself (pid, log,
kill) for benchmarks and crash tests. `code` runs another source tree (a benchmark comparing
versions): its `src/` (or the tree itself, for the layout before `src/urbis`) goes first on
PYTHONPATH and `module` names its command line.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

CONTEXT_PATH = "/ngsi-ld/v1/jsonldContexts/urbis-smart-city"
JSONLD_CONTEXT_REL = "http://www.w3.org/ns/json-ld#context"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    base: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def context_url(self) -> str:
        return self.base + CONTEXT_PATH

    @property
    def link(self) -> str:
        """The Link header that makes the demo's compact terms mean what they should."""
        return f'<{self.context_url}>; rel="{JSONLD_CONTEXT_REL}"; type="application/ld+json"'

    def kill(self) -> None:
        """SIGKILL, as a crash would: nothing is flushed or closed."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM and wait (the store flushes on shutdown), then SIGKILL."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def start_server(
    *args: str,
    log: Path,
    env: dict[str, str] | None = None,
    code: Path | None = None,
    module: str = "urbis.cli",
    timeout: float = 60,
) -> Server:
    """`python -m MODULE serve --port <free> ARGS`, returned once /health answers."""
    port = free_port()
    command = [sys.executable, "-m", module, "serve", "--host", "127.0.0.1", "--port", str(port)]
    environment = {**os.environ, **(env or {})}
    if code is not None:
        tree = code / "src" if (code / "src").is_dir() else code
        environment["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(tree), environment.get("PYTHONPATH", "")) if p
        )
    with log.open("w") as out:
        process = subprocess.Popen(
            [*command, *args], cwd=code, env=environment, stdout=out, stderr=subprocess.STDOUT
        )
    server = Server(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"urbis serve exited at start:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(server.base + "/health", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            server.stop(timeout=10)
            raise RuntimeError(
                f"urbis serve did not answer /health in {timeout} s:\n{log.read_text()[-3000:]}"
            )
        time.sleep(0.2)


@contextmanager
def serving(
    *args: str,
    log: Path,
    env: dict[str, str] | None = None,
    code: Path | None = None,
    module: str = "urbis.cli",
    timeout: float = 60,
    stop_timeout: float = 60,
) -> Iterator[Server]:
    """A started server, stopped on exit (a benchmark reports one that died under it)."""
    server = start_server(*args, log=log, env=env, code=code, module=module, timeout=timeout)
    try:
        yield server
    finally:
        code_at_exit = server.process.poll()
        if code_at_exit is not None and code_at_exit != -signal.SIGKILL:
            print(
                f"server exited early with code {code_at_exit}:\n{log.read_text()[-3000:]}",
                file=sys.stderr,
            )
        server.stop(timeout=stop_timeout)


@contextmanager
def running_server(*args: str, env: dict[str, str] | None = None, log: Path) -> Iterator[str]:
    """Start `urbis serve ARGS` and yield its base URL once /health answers."""
    with serving(*args, log=log, env=env, stop_timeout=10) as server:
        yield server.base
