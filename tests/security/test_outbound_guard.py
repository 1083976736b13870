"""Issue 8, item 3: one outbound guard for every server-side fetch (twin/outbound.py).

Each fetch path (remote @context by Link header or in a body, subscription endpoints at
creation and at notification time, registration endpoints and forwarded queries, every
connector kind, the MQTT broker) is aimed at a real loopback listener that counts the
connections it gets: with the guard's default policy it must get none. The details an API
client sees must be the same for a refused address, a closed port, a silent (filtered) port
and a bad answer, or the broker is a port scanner.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

import urbis.twin.outbound
from tests.conftest import TOKEN
from urbis.api.app import build_state, create_app
from urbis.api.settings import Settings
from urbis.connectors.base import Cursor, SourceUnavailable
from urbis.connectors.definition import SourceDefinition
from urbis.connectors.mqtt import MqttConnector
from urbis.connectors.ngsild import NgsiLdConnector
from urbis.connectors.ngsild_live import NgsiLdLiveConnector
from urbis.connectors.ogcapi import OgcApiConnector
from urbis.connectors.wfs import WfsConnector
from urbis.testing.listener import Listener, http
from urbis.testing.server import free_port
from urbis.twin.outbound import (
    FETCH_FAILED,
    OutboundGuard,
    OutboundRefused,
    classify,
    guarded_async_client,
    guarded_client,
)

ADMIN = {"Authorization": f"Bearer {TOKEN}"}
V1 = "/ngsi-ld/v1"
REL = 'rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"'
ROOT = Path(__file__).resolve().parents[2]
PUBLIC = "93.184.216.34"  # what a rebinding name answers while it is being checked


@contextmanager
def app(**settings: Any) -> Iterator[TestClient]:
    built = Settings(admin_token=TOKEN, demo=False, sources_scheduler=False, **settings)
    with TestClient(create_app(built), headers=ADMIN) as client:
        yield client


@contextmanager
def rebinding(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """While inside: every name resolves to a public address (what a rebinding DNS server
    answers to the creation-time check); afterwards the real answer (loopback) is back."""
    with monkeypatch.context() as patch:
        patch.setattr(urbis.twin.outbound, "_resolve", lambda host, port: [PUBLIC])
        yield


def link(url: str) -> dict[str, str]:
    return {"Link": f"<{url}>; {REL}"}


# -- the address classification ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped IPv6
        ("64:ff9b::7f00:1", "loopback"),  # NAT64
        ("2002:7f00:1::", "loopback"),  # 6to4
        ("169.254.169.254", "link-local"),  # the cloud metadata service
        ("fd00:ec2::254", "private"),  # AWS's IPv6 metadata service
        ("fe80::1%eth0", "link-local"),
        ("::ffff:169.254.169.254", "link-local"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("::ffff:10.0.0.1", "private"),
        ("100.64.0.1", "private"),  # CGNAT
        ("fd00::1", "private"),
        ("fc00::1", "private"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
    ],
)
def test_internal_addresses_are_classified(address: str, kind: str) -> None:
    assert classify(address) == kind
    assert OutboundGuard().refusal(address) == kind


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2001:4860:4860::8888"])
def test_public_addresses_pass(address: str) -> None:
    assert classify(address) is None
    assert OutboundGuard().refusal(address) is None


def test_open_allows_loopback_only() -> None:
    guard = OutboundGuard(allow_loopback=True)
    assert guard.refusal("127.0.0.1") is None and guard.refusal("::ffff:127.0.0.1") is None
    assert guard.refusal("169.254.169.254") == "link-local"
    assert guard.refusal("10.0.0.1") == "private" and guard.refusal("0.0.0.0") == "unspecified"


def test_allow_list_entries() -> None:
    guard = OutboundGuard(
        ["10.1.0.0/16", "wfs.city.internal", "broker.internal:8443", "http://127.0.0.1:9/ctx/"]
    )
    assert guard.refusal("10.1.2.3") is None and guard.refusal("::ffff:10.1.2.3") is None
    assert guard.refusal("10.2.0.1") == "private"
    assert guard.named(httpx.URL("https://wfs.city.internal/wfs"))
    assert guard.named(httpx.URL("https://broker.internal:8443/x"))
    assert not guard.named(httpx.URL("https://broker.internal/x"))  # another port
    assert guard.named(httpx.URL("http://127.0.0.1:9/ctx/a.jsonld"))
    assert not guard.named(httpx.URL("http://127.0.0.1:9/admin"))
    assert not guard.named(httpx.URL("http://127.0.0.1:9/ctx/%2e%2e/admin"))
    assert not guard.named(httpx.URL("http://127.0.0.1:10/ctx/a.jsonld"))


@pytest.mark.parametrize("entry", ["ftp://x/", "http://u:p@h/", "h:port", "a b", "h/path"])
def test_malformed_allow_list_entries_stop_the_start(entry: str) -> None:
    with pytest.raises(ValueError, match="allow-list entry"):
        Settings(outbound_allow=[entry])


def test_allow_list_setting_is_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("URBIS_OUTBOUND_ALLOW", "10.0.0.0/8, wfs.internal:8080")
    assert Settings().outbound_allow == ["10.0.0.0/8", "wfs.internal:8080"]


# -- the client: every spelling of loopback is refused after resolution, with no connection --


@pytest.mark.parametrize(
    "spelling",
    [
        "127.0.0.1",
        "localhost",  # a name that resolves to loopback
        "2130706433",  # decimal
        "0x7f000001",  # hex
        "0177.0.0.1",  # octal
        "127.1",
        "[::ffff:127.0.0.1]",
        "[::1]",
        "user:password@127.0.0.1",
        "evil.example@127.0.0.1",
    ],
)
def test_every_spelling_of_loopback_is_refused(listener: Listener, spelling: str) -> None:
    with (
        guarded_client(OutboundGuard(), timeout=2) as client,
        pytest.raises((OutboundRefused, httpx.InvalidURL)) as error,
    ):
        client.get(f"http://{spelling}:{listener.port}/ctx")
    assert str(error.value) == FETCH_FAILED or isinstance(error.value, httpx.InvalidURL)
    assert listener.connections == 0


def test_non_http_schemes_are_refused(listener: Listener) -> None:
    with guarded_client(OutboundGuard(allow_loopback=True)) as client:
        for url in ("file:///etc/passwd", f"ftp://127.0.0.1:{listener.port}/"):
            with pytest.raises((OutboundRefused, httpx.UnsupportedProtocol)):
                client.get(url)
    assert listener.connections == 0


def test_async_client_is_guarded_too(listener: Listener) -> None:
    import asyncio

    async def fetch(guard: OutboundGuard) -> int:
        async with guarded_async_client(guard, timeout=2) as client:
            return (await client.get(f"http://localhost:{listener.port}/ctx")).status_code

    with pytest.raises(OutboundRefused):
        asyncio.run(fetch(OutboundGuard()))
    assert listener.connections == 0
    assert asyncio.run(fetch(OutboundGuard(allow_loopback=True))) == 200  # --open
    assert listener.connections == 1


def test_a_connection_goes_to_the_address_that_was_checked(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the backend resolves once and connects to what it checked; a second
    lookup (by the connect call) could answer otherwise."""
    looked_up: list[str] = []
    real = urbis.twin.outbound._resolve

    def once(host: str, port: int) -> list[str]:
        looked_up.append(host)
        return real(host, port)

    monkeypatch.setattr(urbis.twin.outbound, "_resolve", once)
    connected: list[str] = []
    original = socket.create_connection

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        connected.append(address[0])
        return original(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    with guarded_client(OutboundGuard(allow_loopback=True)) as client:
        assert client.get(f"http://localhost:{listener.port}/ctx").status_code == 200
    assert looked_up == ["localhost"] and connected == ["127.0.0.1"]


# -- remote @context ----------------------------------------------------------------------------


def test_link_header_context_to_loopback_is_not_fetched(listener: Listener) -> None:
    with app() as client:
        for host in ("127.0.0.1", "localhost", "2130706433", "[::ffff:127.0.0.1]"):
            url = f"http://{host}:{listener.port}/ctx.jsonld"
            answer = client.get(f"{V1}/entities", params={"type": "T"}, headers=link(url))
            assert answer.status_code == 503, answer.text
            assert answer.json()["detail"] == f"cannot load @context {url}: {FETCH_FAILED}"
    assert listener.connections == 0


def test_inline_context_url_in_a_body_is_not_fetched(listener: Listener) -> None:
    entity = {"id": "urn:ngsi-ld:T:1", "type": "T", "@context": f"{listener.url}/ctx.jsonld"}
    with app() as client:
        answer = client.post(
            f"{V1}/entities", json=entity, headers={"Content-Type": "application/ld+json"}
        )
        assert answer.status_code == 503, answer.text
        assert FETCH_FAILED in answer.json()["detail"]
    assert listener.connections == 0


def test_open_lets_a_context_be_fetched_from_loopback(listener: Listener) -> None:
    """The contrast: --open (conformance runs) allows loopback, so the listener is reached."""
    with app(open=True) as client:
        url = f"{listener.url}/ctx.jsonld"
        answer = client.get(f"{V1}/entities", params={"type": "T"}, headers=link(url))
        assert answer.status_code == 200, answer.text
    assert listener.connections == 1


def test_context_errors_do_not_tell_refused_closed_filtered_or_bad_apart() -> None:
    """With loopback allowed, a closed port, a port that never answers and one that answers
    404 read exactly like an address the guard refuses (the metadata service)."""
    not_found = Listener(http("404 Not Found"))
    silent = Listener(b"")
    urls = [
        "http://169.254.169.254/latest/meta-data/",
        f"http://127.0.0.1:{free_port()}/ctx.jsonld",
        f"{silent.url}/ctx.jsonld",
        f"{not_found.url}/ctx.jsonld",
    ]
    try:
        with app(outbound_allow=["127.0.0.1"], context_fetch_timeout=0.5) as client:
            details = set()
            for url in urls:
                answer = client.get(f"{V1}/entities", params={"type": "T"}, headers=link(url))
                assert answer.status_code == 503, answer.text
                details.add(answer.json()["detail"].replace(url, "URL"))
    finally:
        not_found.close()
        silent.close()
    assert details == {f"cannot load @context URL: {FETCH_FAILED}"}
    assert not_found.connections == 1 and silent.connections == 1  # they were really tried


def test_a_redirect_to_a_refused_address_is_not_followed() -> None:
    """The first server is allowed (host:port); it redirects to another loopback port, which
    is not: the second hop goes through the guard and is refused."""
    target = Listener()
    redirector = Listener(http("302 Found", headers=f"Location: {target.url}/ctx.jsonld\r\n"))
    try:
        with app(outbound_allow=[f"127.0.0.1:{redirector.port}"]) as client:
            url = f"{redirector.url}/ctx.jsonld"
            answer = client.get(f"{V1}/entities", params={"type": "T"}, headers=link(url))
            assert answer.status_code == 503, answer.text
            assert answer.json()["detail"] == f"cannot load @context {url}: {FETCH_FAILED}"
    finally:
        target.close()
        redirector.close()
    assert redirector.connections == 1
    assert target.connections == 0


def test_a_url_prefix_allows_that_prefix_only(listener: Listener) -> None:
    with app(outbound_allow=[f"{listener.url}/contexts/"]) as client:
        allowed = f"{listener.url}/contexts/ctx.jsonld"
        answer = client.get(f"{V1}/entities", params={"type": "T"}, headers=link(allowed))
        assert answer.status_code == 200, answer.text
        assert listener.connections == 1
        for other in (f"{listener.url}/admin.jsonld", f"http://localhost:{listener.port}/c"):
            answer = client.get(f"{V1}/entities", params={"type": "T"}, headers=link(other))
            assert answer.status_code == 503, answer.text
    assert listener.connections == 1


# -- subscriptions ------------------------------------------------------------------------------


def subscription(uri: str) -> dict[str, Any]:
    return {
        "type": "Subscription",
        "entities": [{"type": "Sensor"}],
        "notification": {"endpoint": {"uri": uri}},
    }


def sensor(n: int) -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:Sensor:{n}",
        "type": "Sensor",
        "t": {"type": "Property", "value": n},
    }


def test_subscription_endpoints_are_refused_at_creation(listener: Listener) -> None:
    closed = free_port()
    with app() as client:
        details = set()
        for uri in (
            f"{listener.url}/notify",
            f"http://127.0.0.1:{closed}/notify",
            f"http://localhost:{listener.port}/notify",
            f"http://[::1]:{listener.port}/notify",
            "http://169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/latest/meta-data/",
        ):
            answer = client.post(f"{V1}/subscriptions", json=subscription(uri))
            assert answer.status_code == 400, answer.text
            assert answer.json()["type"].endswith("/BadRequestData")
            details.add(answer.json()["detail"])
        assert client.get(f"{V1}/subscriptions").json() == []
    assert details == {f"notification.endpoint.uri cannot be used: {FETCH_FAILED}"}
    assert listener.connections == 0


def test_a_subscription_endpoint_is_checked_again_at_notification_time(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name that resolved to a public address when the subscription was made, and to
    loopback when the notification goes (DNS rebinding): nothing is sent."""
    with app() as client:
        with rebinding(monkeypatch):
            created = client.post(
                f"{V1}/subscriptions",
                json=subscription(f"http://localhost:{listener.port}/notify"),
            )
        assert created.status_code == 201, created.text
        assert client.post(f"{V1}/entities", json=sensor(1)).status_code == 201
        notifier = client.app.state.urbis.notifier  # type: ignore[attr-defined]
        assert notifier.wait_idle(10)
        status = client.get(created.headers["location"]).json()["notification"]
        assert status["status"] == "failed" and status["timesFailed"] == 1
        patched = client.patch(  # and a PATCH is checked like a creation
            created.headers["location"],
            json={"notification": {"endpoint": {"uri": f"{listener.url}/x"}}},
        )
        assert patched.status_code == 400, patched.text
    assert listener.connections == 0


# -- context source registrations and forwarded queries ------------------------------------------


def registration(endpoint: str, type_: str = "Bin") -> dict[str, Any]:
    return {
        "type": "ContextSourceRegistration",
        "information": [{"entities": [{"type": type_}]}],
        "endpoint": endpoint,
    }


def test_registration_endpoints_are_refused_at_creation(listener: Listener) -> None:
    with app() as client:
        for endpoint in (listener.url, f"http://localhost:{listener.port}", "http://10.0.0.1"):
            answer = client.post(f"{V1}/csourceRegistrations", json=registration(endpoint))
            assert answer.status_code == 400, answer.text
            assert answer.json()["detail"] == f"endpoint cannot be used: {FETCH_FAILED}"
        assert client.get(f"{V1}/csourceRegistrations").json() == []
    assert listener.connections == 0


def test_forwarded_queries_are_checked_at_query_time(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    with app() as client:
        with rebinding(monkeypatch):
            created = client.post(
                f"{V1}/csourceRegistrations",
                json=registration(f"http://localhost:{listener.port}"),
            )
        assert created.status_code == 201, created.text
        answer = TestClient(client.app).get(f"{V1}/entities", params={"type": "Bin"})
        assert answer.status_code == 200, answer.text
        warning = answer.headers["NGSILD-Warning"]
        assert warning.startswith("199 ") and FETCH_FAILED in warning
    assert listener.connections == 0


def test_forwarding_warnings_do_not_tell_refused_closed_or_filtered_apart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    silent = Listener(b"")
    endpoints = {
        "A": "http://169.254.169.254",
        "B": f"http://127.0.0.1:{free_port()}",
        "C": silent.url,
    }
    try:
        with app(outbound_allow=["127.0.0.1"], federation_timeout=0.5) as client:
            for type_, endpoint in endpoints.items():
                with rebinding(monkeypatch):  # past the creation check, to the query's
                    created = client.post(
                        f"{V1}/csourceRegistrations", json=registration(endpoint, type_)
                    )
                assert created.status_code == 201, created.text
            texts = set()
            for type_, endpoint in endpoints.items():
                warning = client.get(f"{V1}/entities", params={"type": type_}).headers[
                    "NGSILD-Warning"
                ]
                texts.add(re.sub(r"^199 \S+ ", "199 REG ", warning.replace(endpoint, "URL")))
    finally:
        silent.close()
    assert texts == {f'199 REG "URL/ngsi-ld/v1/entities: {FETCH_FAILED}"'}
    assert silent.connections == 1


# -- connectors ---------------------------------------------------------------------------------


def test_every_http_connector_is_guarded(listener: Listener) -> None:
    connectors = [
        WfsConnector(
            SourceDefinition(
                id="w", kind="wfs", endpoint=f"{listener.url}/wfs", options={"typename": "x"}
            )
        ),
        OgcApiConnector(
            SourceDefinition(
                id="o", kind="ogcapi", endpoint=listener.url, options={"collection": "x"}
            )
        ),
        NgsiLdConnector(
            SourceDefinition(id="n", kind="ngsild", endpoint=listener.url, options={"type": "T"})
        ),
    ]
    for connector in connectors:
        with pytest.raises(SourceUnavailable, match=re.escape(FETCH_FAILED)):
            list(connector.fetch(Cursor()))
        connector.close()
    assert listener.connections == 0


def run_briefly(
    run: Callable[[Any, threading.Event], None], seconds: float
) -> BaseException | None:
    """Run a live connector for `seconds`; the exception it ended with, if any."""
    stop = threading.Event()
    failure: list[BaseException] = []

    def target() -> None:
        try:
            run(lambda records: None, stop)
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    stop.set()
    thread.join(10)
    return failure[0] if failure else None


def test_ngsild_live_connector_is_guarded(listener: Listener) -> None:
    connector = NgsiLdLiveConnector(
        SourceDefinition(id="l", kind="ngsild-live", endpoint=listener.url, options={"type": "T"})
    )
    run_briefly(connector.run, 1.5)  # it retries the subscription until stopped
    assert not connector.ready.is_set()
    assert listener.connections == 0


def test_mqtt_broker_is_checked_before_connecting(listener: Listener) -> None:
    for host in ("127.0.0.1", "localhost", "[::ffff:127.0.0.1]"):
        connector = MqttConnector(
            SourceDefinition(id="m", kind="mqtt", endpoint=f"mqtt://{host}:{listener.port}")
        )
        error = run_briefly(connector.run, 2)
        assert isinstance(error, SourceUnavailable) and FETCH_FAILED in str(error)
        assert not connector.connected.is_set()
    assert listener.connections == 0


def test_sources_run_by_the_server_use_its_guard(listener: Listener) -> None:
    """Through the deployment's manager (the admin API's), not a hand-made connector."""
    state = build_state(Settings(admin_token=TOKEN, demo=False))
    try:
        manager = state.sources
        assert manager is not None and manager.guard is state.outbound
        manager.catalog.remember(
            SourceDefinition(
                id="gis",
                kind="wfs",
                endpoint=f"{listener.url}/wfs",
                entity_type="Streetlight",
                id_template="urn:ngsi-ld:Streetlight:{key}",
                options={"typename": "lights"},
                retries=0,
            )
        )
        report = manager.sync("gis", sleep=lambda seconds: None)
        assert report.status == "failed"
        assert any(FETCH_FAILED in error for error in report.errors)
    finally:
        state.twin.close()
    assert listener.connections == 0


# -- the guard is the one every fetcher uses -------------------------------------------------


def test_every_fetcher_of_the_server_holds_its_one_guard() -> None:
    state = build_state(Settings(admin_token=TOKEN, demo=False, outbound_allow=["10.0.0.0/8"]))
    try:
        guard = state.outbound
        assert guard.networks and not guard.allow_loopback
        assert state.resolver._client._transport.guard is guard  # type: ignore[attr-defined]
        assert state.notifier is not None
        assert state.notifier._client._transport.guard is guard  # type: ignore[attr-defined]
        assert state.sources is not None and state.sources.guard is guard
        assert state.federation.client._transport.guard is guard  # type: ignore[attr-defined]
    finally:
        state.twin.close()


# Where an HTTP client or a raw connection may be made: the guard itself, the operator's own
# store (twin/store/sparql_http.py) and the demo's device simulator (the operator's broker).
_CLIENTS = re.compile(
    r"httpx\.(Client|AsyncClient|HTTPTransport|AsyncHTTPTransport)\(|httpx\.(get|post|put|"
    r"patch|delete|request|stream)\(|urlopen\(|import requests|from requests|"
    r"socket\.create_connection\(|\.connect(_async)?\(|get_schema\(|Features\("
)
# twin/state/sqlite.py: sqlite3.connect opens the local state file, never a network address.
_ALLOWED = {
    "twin/outbound.py",
    "twin/store/sparql_http.py",
    "demo/devices.py",
    "twin/state/sqlite.py",
}
PACKAGE = ROOT / "src" / "urbis"


def test_no_fetch_bypasses_the_guard() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        if not name.startswith("testing/"):  # the test harness: never imported by the product
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if _CLIENTS.search(line.split("#")[0]) and name not in _ALLOWED:
                    found.append(f"{name}:{number}: {line.strip()}")
    # MQTT's connect_async is given the address the guard checked (connectors/mqtt.py).
    assert found == [
        f"connectors/mqtt.py:{_line('connectors/mqtt.py', 'client.connect_async(address')}: "
        "client.connect_async(address, self.port, keepalive=self.options.keepalive)"
    ]
    wfs = (PACKAGE / "connectors/wfs.py").read_text()
    assert 'WebFeatureService(self.endpoint, version="2.0.0", xml=xml)' in wfs


def _line(name: str, needle: str) -> int:
    lines = (PACKAGE / name).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if needle in line)


def test_guarded_client_refuses_a_real_transport() -> None:
    """Only a MockTransport (no network at all) may stand in for the guarded one."""
    with pytest.raises(TypeError):
        guarded_client(OutboundGuard(), transport=httpx.HTTPTransport())
    started = time.monotonic()
    with guarded_client(
        OutboundGuard(), transport=httpx.MockTransport(lambda r: httpx.Response(204))
    ) as client:
        assert client.get("http://127.0.0.1:9/").status_code == 204
    assert time.monotonic() - started < 5
