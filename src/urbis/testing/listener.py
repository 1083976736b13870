"""A real loopback socket that counts the connections it gets: what must NOT be reached."""

from __future__ import annotations

import socket
import threading

CONTEXT = b'{"@context": {"speed": "https://example.org/speed"}}'


def http(status: str, body: bytes = b"", headers: str = "") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n{headers}"
    return head.encode() + b"\r\n" + body


class Listener:
    """A real socket on a free loopback port that counts the connections it gets, and
    answers each with `answer` (default: a JSON-LD context; b"": never, a filtered port)."""

    def __init__(self, answer: bytes | None = None) -> None:
        self.answer = answer if answer is not None else http("200 OK", CONTEXT)
        self.silent = answer == b""
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            if self.silent:
                self._held.append(conn)
                continue
            try:
                conn.settimeout(2)
                conn.recv(65536)
                conn.sendall(self.answer)
            except OSError:
                pass
            finally:
                conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()
        for conn in self._held:
            conn.close()
