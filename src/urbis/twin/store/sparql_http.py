"""The SPARQL 1.1 Protocol over HTTP: one pooled client, retries that never duplicate a write.

Retrying is safe because every write Urbis sends is DELETE DATA / INSERT DATA of ground quads
(or their one-operation DELETE/INSERT form): an RDF dataset is a set, so running the same
request twice leaves the same dataset as running it once. A request whose answer was lost (the
connection dropped after the engine committed) is simply sent again; one that never arrived is
sent again too. Nothing is retried once a result stream has started to be read.
"""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from typing import Any

import httpx

from urbis.twin.errors import InvalidRequest, NgsiLdError, QueryTimeout, TooManyResults

log = logging.getLogger("urbis.store")

TRANSIENT_STATUS = frozenset({502, 503, 504})
# Virtuoso reports deadlocks and serialisation failures as 500 with SQL state 40001: retry.
_VIRTUOSO_RETRY = re.compile(rb"\b40001\b|SR172|SR325")
# Virtuoso's "anytime" queries answer partial results at their timeout and say so here.
PARTIAL_STATES = frozenset({"S1TAT"})


class StoreUnavailable(NgsiLdError):
    """The remote engine could not be reached or failed: the request may be retried later."""

    error_type, status, title = "InternalError", 503, "Store unavailable"


class EngineRefused(InvalidRequest):
    """The engine refused a query or update as malformed or impossible: the caller's mistake."""


class ChallengeAuth(httpx.Auth):
    """Digest or Basic, whichever the engine's 401 asks for (Virtuoso's /sparql-auth: Digest;
    a reverse proxy in front of Oxigraph: usually Basic). The choice is remembered."""

    requires_request_body = True

    def __init__(self, user: str, password: str) -> None:
        self._digest = httpx.DigestAuth(user, password)
        self._basic = httpx.BasicAuth(user, password)
        self._chosen: httpx.Auth | None = None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self._chosen is not None:
            yield from self._chosen.auth_flow(request)
            return
        response = yield request
        if response.status_code != 401:
            return
        scheme = response.headers.get("www-authenticate", "").split(" ", 1)[0].lower()
        self._chosen = self._digest if scheme == "digest" else self._basic
        yield from self._chosen.auth_flow(request)


class SparqlClient:
    """Query, update and Graph Store endpoints of one engine, behind one connection pool."""

    def __init__(
        self,
        query_url: str,
        update_url: str | None = None,
        store_url: str | None = None,
        *,
        user: str | None = None,
        password: str | None = None,
        timeout: float = 120.0,
        retries: int = 5,
        backoff: float = 0.1,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.query_url = query_url
        self.update_url = update_url or query_url
        self.store_url = store_url
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        auth = ChallengeAuth(user, password or "") if user else None
        # Not through the outbound guard (twin/outbound.py), on purpose: the store's URL is
        # the operator's infrastructure (URBIS_SPARQL_URL), usually on a private network, and
        # no request can change it.
        self.http = httpx.Client(
            auth=auth,
            timeout=httpx.Timeout(timeout, connect=10.0),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
            transport=transport,
        )
        self.server = ""  # the engine's Server header, read by `probe`

    def probe(self) -> str:
        """Ask the engine a trivial question: fails fast on a wrong URL, names the engine."""
        self._send(self.query_url, {"query": "ASK {}"}, "application/sparql-results+json")
        return self.server

    # -- requests ---------------------------------------------------------------------------

    def query(
        self,
        text: str,
        *,
        accept: str,
        dataset: Mapping[str, Sequence[str]] | None = None,
        extra: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> tuple[httpx.Response, ResponseReader]:
        """POST a query; the answer's body is read lazily through the returned reader."""
        form: dict[str, Any] = {"query": text, **(dataset or {}), **(extra or {})}
        response = self._open(self.query_url, form, accept, timeout)
        state = response.headers.get("x-sql-state", "")
        if state in PARTIAL_STATES:
            response.close()
            raise QueryTimeout("the SPARQL engine stopped the query at its timeout")
        return response, ResponseReader(response, timeout is not None)

    def update(
        self,
        text: str,
        *,
        dataset: Mapping[str, Sequence[str]] | None = None,
        timeout: float | None = None,
    ) -> None:
        form: dict[str, Any] = {"update": text, **(dataset or {})}
        self._send(self.update_url, form, "*/*", timeout)

    def _send(
        self, url: str, form: Mapping[str, Any], accept: str, timeout: float | None = None
    ) -> httpx.Response:
        response = self._open(url, form, accept, timeout)
        response.read()
        response.close()
        return response

    def _open(
        self, url: str, form: Mapping[str, Any], accept: str, timeout: float | None
    ) -> httpx.Response:
        """Send with retries on transient failures; the body is left unread on success."""
        read = self.timeout if timeout is None else timeout + 5.0  # the engine's own stops first
        attempt = 0
        while True:
            attempt += 1
            try:
                request = self.http.build_request(
                    "POST",
                    url,
                    data=dict(form),
                    headers={"Accept": accept},
                    timeout=httpx.Timeout(read, connect=10.0),
                )
                response = self.http.send(request, stream=True)
            except httpx.TimeoutException as error:
                if isinstance(error, httpx.ReadTimeout) and "update" not in form:
                    raise QueryTimeout(
                        f"no answer from the SPARQL engine within {read:.0f} s"
                    ) from None
                if attempt > self.retries:
                    raise StoreUnavailable(f"the SPARQL engine timed out: {error}") from None
            except httpx.TransportError as error:
                if attempt > self.retries:
                    raise StoreUnavailable(
                        f"the SPARQL engine at {url} cannot be reached: {error}"
                    ) from None
            else:
                self.server = response.headers.get("server", self.server)
                if response.status_code < 300:
                    return response
                body = response.read()
                response.close()
                if response.headers.get("x-sql-state", "") in PARTIAL_STATES:
                    # Virtuoso's anytime answer at its `timeout`: partial rows, never handed out
                    raise QueryTimeout("the SPARQL engine stopped the query at its timeout")
                if not self._transient(response.status_code, body) or attempt > self.retries:
                    raise self._error(response.status_code, body)
            delay = self.backoff * 2 ** (attempt - 1)
            log.warning("SPARQL engine: transient failure, retry %d in %.1f s", attempt, delay)
            time.sleep(delay)

    @staticmethod
    def _transient(status: int, body: bytes) -> bool:
        return status in TRANSIENT_STATUS or (status == 500 and bool(_VIRTUOSO_RETRY.search(body)))

    @staticmethod
    def _error(status: int, body: bytes) -> NgsiLdError:
        message = body.decode("utf-8", "replace").strip()
        # Virtuoso echoes the whole query after its message: keep the message.
        message = message.split("\n\nSPARQL query:", 1)[0].split("\nSPARQL query:", 1)[0]
        message = message[:1000]
        if status in (401, 403):
            return StoreUnavailable(
                f"the SPARQL engine refused Urbis's credentials ({status}): check "
                "URBIS_SPARQL_USER / URBIS_SPARQL_PASSWORD and the update URL"
            )
        if status in TRANSIENT_STATUS:
            return StoreUnavailable(f"the SPARQL engine is unavailable ({status}): {message}")
        return EngineRefused(f"the SPARQL engine refused the request ({status}): {message}")

    def close(self) -> None:
        self.http.close()


class ResponseReader(io.RawIOBase):
    """A response body as a file, for pyoxigraph's streaming parsers; closes the response at
    its end, so a result left half-read still gives its connection back when collected."""

    def __init__(self, response: httpx.Response, timed: bool = False) -> None:
        self.response = response
        self.timed = timed
        self._chunks: Iterator[bytes] = response.iter_bytes()
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                self.close()
                return 0
            except httpx.ReadTimeout:
                self.close()
                raise QueryTimeout("the SPARQL engine stopped answering") from None
            except httpx.TransportError as error:
                self.close()
                raise StoreUnavailable(f"the SPARQL engine's answer broke off: {error}") from None
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size

    def close(self) -> None:
        if not self.closed:
            self.response.close()
        super().close()


class ReplacingReader(io.RawIOBase):
    """Exact byte strings replaced on the fly in a stream (stored graph names and datatypes
    back to the twin's), holding back only what could be the start of a match."""

    def __init__(self, source: io.RawIOBase, replacements: Mapping[bytes, bytes]) -> None:
        self.source = source
        self.replacements = dict(replacements)
        self.pattern = re.compile(
            b"|".join(re.escape(k) for k in sorted(replacements, key=len)[::-1])
        )
        self.keep = max(len(k) for k in replacements) - 1
        self._raw = b""
        self._ready = b""
        self._eof = False

    def readable(self) -> bool:
        return True

    def _fill(self) -> None:
        while not self._ready and not self._eof:
            chunk = self.source.read(65536)
            if not chunk:
                self._eof = True
                cut = len(self._raw)
            else:
                self._raw += chunk
                cut = max(0, len(self._raw) - self.keep)
            for match in self.pattern.finditer(self._raw):
                if match.start() < cut < match.end():
                    cut = match.start()
            head, self._raw = self._raw[:cut], self._raw[cut:]
            self._ready = self.pattern.sub(lambda m: self.replacements[m.group()], head)

    def readinto(self, target: Any) -> int:
        self._fill()
        size = min(len(target), len(self._ready))
        target[:size] = self._ready[:size]
        self._ready = self._ready[size:]
        return size

    def close(self) -> None:
        self.source.close()
        super().close()


class CountingReader(io.RawIOBase):
    """Raises TooManyResults once a stream holds more than `limit` occurrences of `marker`
    (`<result>` of SPARQL XML results: escaped inside literals, so the count is exact)."""

    def __init__(self, source: io.RawIOBase, marker: bytes, limit: int) -> None:
        self.source = source
        self.marker = marker
        self.limit = limit
        self.seen = 0
        self._tail = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        size = self.source.readinto(target)
        if size:
            window = self._tail + bytes(target[:size])
            self.seen += window.count(self.marker) - self._tail.count(self.marker)
            self._tail = window[-(len(self.marker) - 1) :]
            if self.seen > self.limit:
                self.close()
                raise TooManyResults(
                    f"the answer has more than {self.limit} rows: narrow the query or add LIMIT"
                )
        return size or 0

    def close(self) -> None:
        self.source.close()
        super().close()
