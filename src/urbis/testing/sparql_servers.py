"""Real SPARQL engines on free loopback ports: `oxigraph serve` and Virtuoso 7.

Each is started once per test session (Virtuoso takes seconds), in a temporary directory, and
stopped by terminating its process. A missing binary skips the tests that need it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
import secrets
import shutil
import signal
import subprocess
import sysconfig
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from urbis.testing.server import free_port

VIRTUOSO_INI = Path("/etc/virtuoso-opensource-7/virtuoso.ini")


@dataclass(frozen=True)
class Engine:
    """Where a running engine answers, as Urbis's settings name it."""

    name: str
    query_url: str
    update_url: str
    store_url: str
    user: str | None = None
    password: str | None = None

    def settings(self) -> dict[str, str]:
        """URBIS_STORE=sparql settings for this engine (as Settings keyword arguments)."""
        found = {
            "store": "sparql",
            "sparql_url": self.query_url,
            "sparql_update_url": self.update_url,
            "sparql_store_url": self.store_url,
        }
        if self.user:
            found["sparql_user"] = self.user
            found["sparql_password"] = self.password or ""
        return found


def oxigraph_binary() -> str | None:
    """The `oxigraph` console script of this Python's PyPI package, else one on PATH."""
    beside = Path(sysconfig.get_path("scripts")) / "oxigraph"
    return str(beside) if beside.exists() else shutil.which("oxigraph")


def _die_with_parent() -> None:
    """Linux: the engine gets SIGTERM when the test process dies, even killed mid-run."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _wait(url: str, proc: subprocess.Popen[bytes], log: Path, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            if httpx.post(url, data={"query": "ASK {}"}, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.args!r} did not answer: {log.read_text()[-2000:]}")
        time.sleep(0.2)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def oxigraph_server(directory: Path) -> Iterator[Engine]:
    binary = oxigraph_binary()
    if binary is None:
        pytest.skip("the `oxigraph` binary (PyPI package oxigraph) is not installed")
    port = free_port()
    log = directory / "oxigraph.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, "serve", "--location", str(directory / "data"), "--bind", f"127.0.0.1:{port}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(base + "/query", proc, log)
        yield Engine("oxigraph-server", base + "/query", base + "/update", base + "/store")
    finally:
        _stop(proc)


def virtuoso_ini(directory: Path, sql_port: int, http_port: int) -> Path:
    """The packaged virtuoso.ini with its files in `directory`, bound to loopback ports, and
    results not cut at 10,000 rows (the packaged ResultSetMaxRows)."""
    text = VIRTUOSO_INI.read_text()
    text = text.replace("/var/lib/virtuoso-opensource-7/db/", f"{directory}/")
    text = re.sub(r"(?m)^ServerPort\s*=\s*1111\b.*$", f"ServerPort = 127.0.0.1:{sql_port}", text)
    text = re.sub(r"(?m)^ServerPort\s*=\s*8890\b.*$", f"ServerPort = 127.0.0.1:{http_port}", text)
    text = re.sub(r"(?m)^ResultSetMaxRows\s*=.*$", "ResultSetMaxRows = 100000000", text)
    text = re.sub(r"(?m)^DefaultHost\s*=.*$", f"DefaultHost = 127.0.0.1:{http_port}", text)
    path = directory / "virtuoso.ini"
    path.write_text(text)
    return path


@contextmanager
def virtuoso_server(directory: Path) -> Iterator[Engine]:
    binary = shutil.which("virtuoso-t")
    if binary is None or not VIRTUOSO_INI.exists():
        pytest.skip("virtuoso-t (Debian package virtuoso-opensource) is not installed")
    sql_port, http_port = free_port(), free_port()
    ini = virtuoso_ini(directory, sql_port, http_port)
    log = directory / "virtuoso.out"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, "+configfile", str(ini), "+foreground"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=directory,
            preexec_fn=_die_with_parent,
        )
    base = f"http://127.0.0.1:{http_port}"
    try:
        _wait(base + "/sparql", proc, log)
        password = _new_dba_password(sql_port)
        yield Engine(
            "virtuoso",
            base + "/sparql",
            base + "/sparql-auth",
            base + "/sparql-graph-crud-auth",
            "dba",
            password,
        )
    finally:
        _stop(proc)


def _new_dba_password(sql_port: int) -> str:
    """A random dba password, so the fixture's engine does not accept the packaged default."""
    isql = shutil.which("isql-vt")
    if isql is None:
        return "dba"
    password = secrets.token_hex(12)
    subprocess.run(
        [
            isql,
            f"127.0.0.1:{sql_port}",
            "dba",
            "dba",
            f"exec=user_set_password('dba', '{password}');",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return password


@pytest.fixture(scope="session")
def oxigraph_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    with oxigraph_server(tmp_path_factory.mktemp("oxigraph")) as engine:
        yield engine


@pytest.fixture(scope="session")
def virtuoso_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    with virtuoso_server(tmp_path_factory.mktemp("virtuoso")) as engine:
        yield engine
