"""GET /entities/{id} of two source trees, side by side, with a raw keep-alive socket client.

`python -m bench.get_compare --code OTHER_TREE [--rounds 6] [--requests 3000]`: starts one
server from OTHER_TREE and one from this tree (each `--open` over its own on-disk twin), writes
the same 500 small entities into both, then times sequential GETs in interleaved rounds and
prints each round's rate, the medians and their ratio. A raw socket client (send the request,
read the headers and Content-Length bytes) costs the client little, so the ratio shows the
servers' difference (../shared/docs/benchmarking.md); the absolute figures are this machine's.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.server import cli_module
from urbis.testing.server import Server, start_server

ENTITIES = [f"urn:ngsi-ld:Thing:{i}" for i in range(500)]


def rate(server: Server, requests: int) -> float:
    """Sequential GETs by id per second over one keep-alive connection."""
    host, port = server.base.removeprefix("http://").split(":")
    paths = [f"/ngsi-ld/v1/entities/{entity}" for entity in ENTITIES]
    with socket.create_connection((host, int(port))) as conn, conn.makefile("rb") as reader:
        started = time.perf_counter()
        for i in range(requests):
            request = f"GET {paths[i % len(paths)]} HTTP/1.1\r\nHost: bench\r\n\r\n"
            conn.sendall(request.encode())
            length = 0
            while (line := reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            reader.read(length)
        return requests / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.get_compare", description=__doc__)
    parser.add_argument("--code", type=Path, required=True, help="the other source tree")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=3000, help="GETs per round and server")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="urbis-get-compare-"))
    servers = {
        "other": start_server(
            "--data-dir",
            str(work / "other"),
            "--open",
            log=work / "other.log",
            code=args.code,
            module=cli_module(args.code),
        ),
        "this": start_server("--data-dir", str(work / "this"), "--open", log=work / "this.log"),
    }
    try:
        body = [{"id": e, "type": "Thing", "v": {"type": "Property", "value": 1}} for e in ENTITIES]
        for server in servers.values():
            answer = httpx.post(
                server.base + "/ngsi-ld/v1/entityOperations/upsert", json=body, timeout=60
            )
            assert answer.status_code in (201, 204), answer.text
            rate(server, 1000)  # warm: caches, first-request paths
        rates: dict[str, list[float]] = {name: [] for name in servers}
        for _ in range(args.rounds):
            for name, server in servers.items():
                rates[name].append(rate(server, args.requests))
        for name, values in rates.items():
            median = statistics.median(values)
            print(f"{name}: {[round(v) for v in values]} req/s, median {median:.0f}")
        ratio = statistics.median(rates["this"]) / statistics.median(rates["other"])
        print(f"this / other: {ratio:.3f}")
    finally:
        for server in servers.values():
            server.stop()


if __name__ == "__main__":
    main()
