"""kill -9 right after acknowledged creations loses none of them.

A real `urbis serve` on an on-disk data directory gets a stream of subscription, registration
and @context creations; it is killed with SIGKILL while the stream goes on (no shutdown, no
flush). A fresh server on the same directory must hold every creation it acknowledged.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx

from urbis.testing.server import running_server, start_server

TOKEN = "state-crash-token"
ENV = {"URBIS_ADMIN_TOKEN": TOKEN, "URBIS_OUTBOUND_ALLOW": "127.0.0.1"}
NGSI = "/ngsi-ld/v1"


def start(data: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    server = start_server("--data-dir", str(data), log=log, env=ENV)
    return server.process, server.base


def creations(i: int) -> list[tuple[str, str, dict[str, object]]]:
    """(kind, path, body) of the i-th round: one of each kind."""
    return [
        (
            "subscriptions",
            f"{NGSI}/subscriptions",
            {
                "id": f"urn:ngsi-ld:Subscription:crash-{i}",
                "type": "Subscription",
                "entities": [{"type": "Probe"}],
                "notification": {"endpoint": {"uri": f"http://127.0.0.1:9/notify/{i}"}},
            },
        ),
        (
            "registrations",
            f"{NGSI}/csourceRegistrations",
            {
                "id": f"urn:ngsi-ld:ContextSourceRegistration:crash-{i}",
                "type": "ContextSourceRegistration",
                "information": [{"entities": [{"type": f"Remote{i}"}]}],
                "endpoint": "http://127.0.0.1:9",
            },
        ),
        ("contexts", f"{NGSI}/jsonldContexts", {"@context": {f"term{i}": f"https://ex.org/{i}"}}),
    ]


def listed(url: str, **params: str) -> list[dict[str, str]]:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    answer = httpx.get(url, params={"limit": "1000", **params}, headers=auth, timeout=30)
    assert answer.status_code == 200, answer.text
    rows: list[dict[str, str]] = answer.json()
    return rows


def test_kill_after_acknowledged_creations_keeps_every_one(tmp_path: Path) -> None:
    data = tmp_path / "twin"
    proc, base = start(data, tmp_path / "first.log")
    acknowledged: dict[str, list[str]] = {"subscriptions": [], "registrations": [], "contexts": []}
    stop = threading.Event()

    def writer() -> None:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
            i = 0
            while not stop.is_set():
                for kind, path, body in creations(i):
                    try:
                        answer = http.post(path, json=body)
                    except httpx.TransportError:
                        return  # killed under us: this one was never acknowledged
                    assert answer.status_code == 201, answer.text
                    location = answer.headers["location"]
                    acknowledged[kind].append(location.rsplit("/", 1)[1])
                i += 1

    thread = threading.Thread(target=writer)
    try:
        thread.start()
        while len(acknowledged["contexts"]) < 25 and thread.is_alive():
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: the next creation is in flight
        proc.wait(timeout=10)
    finally:
        stop.set()
        thread.join(timeout=60)
        if proc.poll() is None:
            proc.kill()
    assert all(len(ids) >= 25 for ids in acknowledged.values()), acknowledged

    with running_server("--data-dir", str(data), env=ENV, log=tmp_path / "second.log") as again:
        found = {
            "subscriptions": {s["id"] for s in listed(f"{again}{NGSI}/subscriptions")},
            "registrations": {r["id"] for r in listed(f"{again}{NGSI}/csourceRegistrations")},
            "contexts": {
                c["localId"] for c in listed(f"{again}{NGSI}/jsonldContexts", details="true")
            },
        }
    for kind, ids in acknowledged.items():
        lost = set(ids) - found[kind]
        assert not lost, f"acknowledged {kind} lost after kill -9: {sorted(lost)}"
