"""A real HTTP receiver of notifications on a loopback port (subscriptions' endpoints)."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    """One POST the receiver answered 204: its path, headers (lower-case names) and JSON body."""

    path: str
    headers: dict[str, str]
    body: Any


def body_of(received: Received) -> Any:
    return received.body


@contextmanager
def receiving(
    keep: Callable[[Received], Any] = body_of,
) -> Iterator[tuple[str, queue.Queue[Any]]]:
    """`(url of /notify, queue)`; each POST's `keep(Received)` goes on the queue (its body by
    default), so a test can wait on what arrives."""
    inbox: queue.Queue[Any] = queue.Queue()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length", 0)))
            headers = {k.lower(): v for k, v in self.headers.items()}
            inbox.put(keep(Received(self.path, headers, json.loads(raw))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/notify", inbox
    finally:
        server.shutdown()
        server.server_close()
