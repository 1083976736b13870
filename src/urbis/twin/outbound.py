"""One guard for every server-side fetch: remote @contexts, notifications, forwarded queries,
connectors. Without it, anyone who can name a URL (a Link header, a subscription endpoint) can
make the broker reach the city's internal network or a cloud metadata service.

The policy: only public (globally routable) addresses, unless `allow` names the destination
(a host, host:port, CIDR or http(s) URL prefix: the operator's internal WFS, say) or, for
`--open` conformance runs, loopback. It is enforced where the connection is made, not on the
URL's text: an httpcore network backend resolves the host (getaddrinfo, which also reads the
decimal, octal and hex spellings of IPv4), checks every address and connects to the address it
checked, so a name that resolves twice (DNS rebinding) cannot swap in another one. Every
request goes through the transport, so each redirect hop is checked too. TLS still verifies
the host name: httpcore starts TLS on top of the stream with the request's host.

A refusal is an `httpx.ConnectError` like any other, and every fetcher shows its clients the
same `FETCH_FAILED` detail for a refused address, a closed port, a timeout or a bad answer, so
the broker cannot be used as a port scanner; the precise reason goes to the log.

Relies on httpcore 1.x internals (the transport's `_pool._network_backend`); pinned in
pyproject.toml.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from collections.abc import Iterable
from typing import Any, Protocol
from urllib.parse import urlsplit

import anyio
import httpcore
import httpx

from urbis.twin.errors import BadRequestData, UrbisError
from urbis.twin.iri import redact_in, redact_url

log = logging.getLogger("urbis.outbound")

FETCH_FAILED = "the remote resource could not be fetched"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)  # httpx's defaults
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_HOST = re.compile(r"[A-Za-z0-9._:-]+")  # a name, an IPv4 or (unbracketed) IPv6 address
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class OutboundRefused(UrbisError, httpx.ConnectError):
    """The guard refused the destination. Its message is the generic FETCH_FAILED, which any
    fetcher may show; `reason` (which address, why) is logged, never shown. An httpx
    ConnectError, so that every client treats it as a connection that failed."""

    error_type, status, title = "OutboundRefused", 502, "Outbound fetch refused"

    def __init__(self, reason: str, *, request: httpx.Request | None = None) -> None:
        httpx.ConnectError.__init__(self, FETCH_FAILED, request=request)
        self.detail = FETCH_FAILED
        self.extra = {}
        self.reason = reason
        log.info("outbound connection refused: %s", reason)


class _Settings(Protocol):
    outbound_allow: list[str]
    open: bool
    demo_mqtt_url: str | None


def _embedded(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one stands for (::ffff:a.b.c.d, 6to4, NAT64), else itself."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def classify(address: str) -> str | None:
    """Why `address` is not public ("loopback", "private", ...), or None when it is."""
    ip = _embedded(ipaddress.ip_address(address.partition("%")[0]))  # drop an IPv6 zone
    if ip.is_loopback:
        return "loopback"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_link_local:
        return "link-local"  # 169.254.169.254 (cloud metadata) is one
    if ip.is_multicast:
        return "multicast"
    if not ip.is_global:  # private, CGNAT 100.64/10, unique local fc00::/7, reserved, ...
        return "private"
    return None


class OutboundGuard:
    """Which destinations the broker may connect to; built once from the settings."""

    def __init__(self, allow: Iterable[str] = (), *, allow_loopback: bool = False) -> None:
        self.allow_loopback = allow_loopback
        self.networks: list[IPNetwork] = []
        self.hosts: set[tuple[str, int | None]] = set()  # (host, port or None for any)
        self.prefixes: list[tuple[str, str, int, str]] = []  # scheme, host, port, path
        for entry in allow:
            if entry.strip():
                self._add(entry.strip())

    @classmethod
    def from_settings(cls, settings: _Settings) -> OutboundGuard:
        allow = list(settings.outbound_allow)
        if settings.demo_mqtt_url:  # the operator's own broker, named in the settings
            allow.append(urlsplit(settings.demo_mqtt_url).netloc)
        return cls(allow, allow_loopback=settings.open)

    def _add(self, entry: str) -> None:
        problem = (
            f"outbound allow-list entry {entry!r} is not a host, host:port, CIDR or "
            "http(s) URL prefix"
        )
        if "://" in entry:
            try:
                url = httpx.URL(entry)
            except httpx.InvalidURL:
                raise ValueError(problem) from None
            if url.scheme not in _DEFAULT_PORTS or not _HOST.fullmatch(url.host) or url.userinfo:
                raise ValueError(problem)
            port = url.port or _DEFAULT_PORTS[url.scheme]
            self.prefixes.append((url.scheme, url.host.lower(), port, url.path or "/"))
            return
        try:
            self.networks.append(ipaddress.ip_network(entry, strict=False))
            return
        except ValueError:
            pass
        try:
            url = httpx.URL("http://" + entry)
        except httpx.InvalidURL:
            raise ValueError(problem) from None
        if not _HOST.fullmatch(url.host) or url.userinfo or url.path not in ("", "/") or url.query:
            raise ValueError(problem)
        self.hosts.add((url.host.lower(), url.port))

    # -- the two checks: the request's URL, then each address it resolves to ------------------

    def names(self, host: str, port: int) -> bool:
        """Whether the allow-list names this host (on any port, or on this one)."""
        host = host.lower()
        return (host, None) in self.hosts or (host, port) in self.hosts

    def named(self, url: httpx.URL) -> bool:
        """Whether the allow-list names this URL's host (and port), or a prefix of the URL."""
        host = url.host.lower()
        port = url.port or _DEFAULT_PORTS.get(url.scheme, 0)
        if self.names(host, port):
            return True
        if any(segment in (".", "..") for segment in url.path.split("/")):
            return False  # an encoded dot segment (%2e%2e) a server may resolve past the prefix
        return any(
            (url.scheme, host, port) == (scheme, p_host, p_port) and url.path.startswith(path)
            for scheme, p_host, p_port, path in self.prefixes
        )

    def refusal(self, address: str) -> str | None:
        """Why the guard refuses to connect to `address` (an IP), or None when it may."""
        ip = ipaddress.ip_address(address.partition("%")[0])
        if any(ip in net or _embedded(ip) in net for net in self.networks):
            return None
        why = classify(address)
        if why == "loopback" and self.allow_loopback:
            return None
        return why

    def check(self, url: str) -> None:
        """Raise OutboundRefused if a fetch of `url` would be refused now (for creation-time
        checks; the fetch itself is checked again, since DNS answers change). A name that does
        not resolve passes here: the fetch will fail, uniformly, if it still does not."""
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as error:
            raise OutboundRefused(f"invalid URL: {error}") from None
        if parsed.scheme not in _DEFAULT_PORTS or not parsed.host:
            raise OutboundRefused(f"not an http(s) URL: {redact_url(url)}")
        if self.named(parsed):
            return
        port = parsed.port or _DEFAULT_PORTS[parsed.scheme]
        try:
            addresses = _resolve(parsed.host, port)
        except OSError:
            return
        for address in addresses:
            why = self.refusal(address)
            if why is not None:
                raise OutboundRefused(f"{redact_url(url)}: {address} is {why}")

    def addresses(self, host: str, port: int) -> list[str]:
        """The addresses of `host` the guard lets a connection go to; OutboundRefused if any
        is refused (a name that resolves to a private address is not a public host)."""
        try:
            found = _resolve(host, port)
        except OSError as error:
            raise OutboundRefused(f"cannot resolve {host}: {error}") from None
        return self._allowed(host, found)

    async def addresses_async(self, host: str, port: int) -> list[str]:
        try:
            infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as error:
            raise OutboundRefused(f"cannot resolve {host}: {error}") from None
        return self._allowed(host, _unique(str(info[4][0]) for info in infos))

    def _allowed(self, host: str, found: list[str]) -> list[str]:
        for address in found:
            why = self.refusal(address)
            if why is not None:
                raise OutboundRefused(f"{host} resolves to {address}, a {why} address")
        if not found:
            raise OutboundRefused(f"{host} has no address")
        return found


def _unique(addresses: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(addresses))


def _resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return _unique(str(info[4][0]) for info in infos)


# -- httpcore network backends: resolve, check, connect to the checked address ---------------


class _Backend(httpcore.NetworkBackend):
    def __init__(self, guard: OutboundGuard, inner: httpcore.NetworkBackend, named: bool) -> None:
        self.guard, self.inner, self.named = guard, inner, named

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        if self.named:  # the operator named this destination: any address it has
            return self.inner.connect_tcp(host, port, timeout, local_address, socket_options)
        error: Exception | None = None
        for address in self.guard.addresses(host, port):
            try:
                return self.inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        raise OutboundRefused("unix sockets are never fetched from")

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


class _AsyncBackend(httpcore.AsyncNetworkBackend):
    def __init__(
        self, guard: OutboundGuard, inner: httpcore.AsyncNetworkBackend, named: bool
    ) -> None:
        self.guard, self.inner, self.named = guard, inner, named

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        if self.named:
            return await self.inner.connect_tcp(host, port, timeout, local_address, socket_options)
        error: Exception | None = None
        for address in await self.guard.addresses_async(host, port):
            try:
                return await self.inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:
        raise OutboundRefused("unix sockets are never fetched from")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


# -- transports: two pools, so that a connection opened for a named destination is only ever
# -- reused by requests to that destination ----------------------------------------------------


def _check_scheme(request: httpx.Request) -> None:
    if request.url.scheme not in _DEFAULT_PORTS:
        raise OutboundRefused(f"scheme {request.url.scheme!r} is never fetched", request=request)


class GuardedTransport(httpx.BaseTransport):
    def __init__(self, guard: OutboundGuard, **options: Any) -> None:
        self.guard = guard
        self._checked = self._pool(False, options)
        self._named = self._pool(True, options) if guard.hosts or guard.prefixes else None

    def _pool(self, named: bool, options: Any) -> httpx.HTTPTransport:
        transport = httpx.HTTPTransport(**options)
        pool = transport._pool
        pool._network_backend = _Backend(self.guard, pool._network_backend, named)  # type: ignore[union-attr]
        return transport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        _check_scheme(request)
        named = self._named is not None and self.guard.named(request.url)
        return (self._named if named and self._named else self._checked).handle_request(request)

    def close(self) -> None:
        self._checked.close()
        if self._named is not None:
            self._named.close()


class AsyncGuardedTransport(httpx.AsyncBaseTransport):
    def __init__(self, guard: OutboundGuard, **options: Any) -> None:
        self.guard = guard
        self._checked = self._pool(False, options)
        self._named = self._pool(True, options) if guard.hosts or guard.prefixes else None

    def _pool(self, named: bool, options: Any) -> httpx.AsyncHTTPTransport:
        transport = httpx.AsyncHTTPTransport(**options)
        pool = transport._pool
        pool._network_backend = _AsyncBackend(self.guard, pool._network_backend, named)  # type: ignore[union-attr]
        return transport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        _check_scheme(request)
        named = self._named is not None and self.guard.named(request.url)
        pool = self._named if named and self._named else self._checked
        return await pool.handle_async_request(request)

    async def aclose(self) -> None:
        await self._checked.aclose()
        if self._named is not None:
            await self._named.aclose()


def guarded_client(
    guard: OutboundGuard,
    *,
    transport: httpx.BaseTransport | None = None,
    limits: httpx.Limits | None = None,
    **options: Any,
) -> httpx.Client:
    """An httpx.Client whose every connection (and redirect hop) the guard checks.

    `transport` is for tests only: a MockTransport, which does no network I/O at all."""
    if transport is not None and not isinstance(transport, httpx.MockTransport):
        raise TypeError("only an httpx.MockTransport may replace the guarded transport")
    chosen = transport or GuardedTransport(guard, limits=limits or _LIMITS)
    # trust_env=False: an environment's proxy would be connected to instead of the destination
    return httpx.Client(transport=chosen, trust_env=False, **options)


def guarded_async_client(
    guard: OutboundGuard,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    limits: httpx.Limits | None = None,
    **options: Any,
) -> httpx.AsyncClient:
    """The asyncio twin of `guarded_client`."""
    if transport is not None and not isinstance(transport, httpx.MockTransport):
        raise TypeError("only an httpx.MockTransport may replace the guarded transport")
    chosen = transport or AsyncGuardedTransport(guard, limits=limits or _LIMITS)
    return httpx.AsyncClient(transport=chosen, trust_env=False, **options)


def fetch_failed(what: str, url: str, reason: Exception | str) -> str:
    """Log why a fetch failed (URL without its secrets) and return the detail clients see."""
    why = reason if isinstance(reason, str) else f"{type(reason).__name__}: {reason}"
    why = getattr(reason, "reason", why)  # a refusal's own reason, not the generic text
    log.warning("%s %s failed: %s", what, redact_url(url), redact_in(why, url))
    return FETCH_FAILED


def check_endpoint(guard: OutboundGuard, url: str, what: str) -> None:
    """A user-named endpoint (subscription, registration) checked when it is stored: a 400
    with the generic detail now rather than silent failures later."""
    try:
        guard.check(url)
    except OutboundRefused as error:
        raise BadRequestData(f"{what} cannot be used: {fetch_failed(what, url, error)}") from None
