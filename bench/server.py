"""One `urbis serve` process on a free loopback port over a temporary on-disk twin."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
CONTEXT_PATH = "/ngsi-ld/v1/jsonldContexts/urbis-smart-city"
JSONLD_CONTEXT_REL = "http://www.w3.org/ns/json-ld#context"


@dataclass(frozen=True)
class Server:
    base: str
    pid: int
    log: Path

    @property
    def context_url(self) -> str:
        return self.base + CONTEXT_PATH

    @property
    def link(self) -> str:
        """The Link header that makes the demo's compact terms mean what they should."""
        return f'<{self.context_url}>; rel="{JSONLD_CONTEXT_REL}"; type="application/ld+json"'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def running_server(data_dir: Path, log: Path, *, start_timeout: float = 120.0) -> Iterator[Server]:
    """Start the server as users do (`python -m api.cli serve --open`), stop it on exit."""
    port = free_port()
    command = [sys.executable, "-m", "urbis.cli", "serve", "--data-dir", str(data_dir)]
    command += ["--open", "--host", "127.0.0.1", "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_healthy(proc, base, log, start_timeout)
            yield Server(base=base, pid=proc.pid, log=log)
        finally:
            code = proc.poll()
            if code is not None:  # died under us: say how, with its last words
                print(
                    f"server exited early with code {code}:\n{log.read_text()[-3000:]}",
                    file=sys.stderr,
                )
            proc.terminate()
            try:
                proc.wait(timeout=60)  # the store flushes on shutdown
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _wait_healthy(proc: subprocess.Popen[bytes], base: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited at start:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    tail = log.read_text()[-3000:]
    raise RuntimeError(f"the server did not answer /health in {timeout} s:\n{tail}")
