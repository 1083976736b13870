"""A vendor's NGSI-LD broker, live: kind "ngsild-live" (a LiveConnector).

The connector runs a small HTTP receiver of its own (bind address and port from the options),
creates an NGSI-LD subscription on the vendor's broker (ETSI GS CIM 009 clause 5.8.1) whose
notifications go to it, and hands every notified entity to the sink as an `NgsiEntity` with the
@context it came in. The subscription is checked now and then and created again when the broker
lost it (a restarted in-memory broker), and deleted when the connector stops.

The receiver's path carries a random token, so only the broker that was told the URL can post
to it. Notifications are asked in `application/ld+json`, so each carries its @context.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Literal
from urllib.parse import quote

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from urbis.connectors.base import (
    Cursor,
    LiveConnector,
    NgsiEntity,
    Record,
    Sink,
    SourceUnavailable,
)
from urbis.connectors.definition import SourceDefinition
from urbis.twin.outbound import OutboundGuard, guarded_client

log = logging.getLogger("urbis.connectors.ngsild_live")
CONTEXT_REL = "http://www.w3.org/ns/json-ld#context"
MAX_NOTIFICATION_BYTES = 16 * 1024 * 1024


class LiveOptions(BaseModel):
    """`[options]` of an "ngsild-live" source; the endpoint is the broker's base URL."""

    model_config = ConfigDict(extra="forbid")

    type: str | None = Field(default=None, description="entity type (a term of `context`)")
    id_pattern: str | None = Field(default=None, description="only ids matching this regex")
    watched_attributes: list[str] | None = None
    q: str | None = None
    attrs: list[str] | None = Field(default=None, description="notify only these attributes")
    context: str | None = Field(default=None, description="the vendor's @context URL (Link)")
    tenant: str | None = Field(default=None, description="NGSILD-Tenant on the vendor")
    bind_host: str = Field(default="127.0.0.1", description="where the receiver listens")
    bind_port: int = Field(default=0, ge=0, le=65535, description="0: any free port")
    notify_host: str | None = Field(
        default=None, description="host the broker must call back; default: bind_host"
    )
    throttling: float | None = Field(default=None, gt=0)
    timeout: float = Field(default=10.0, gt=0, le=600, description="seconds per request")
    check_seconds: float = Field(
        default=30.0, gt=0, description="how often the subscription is checked on the broker"
    )
    batch_ms: float = Field(default=50.0, gt=0, le=10_000)
    batch_size: int = Field(default=500, ge=1, le=100_000)
    format: Literal["normalized", "concise"] = "normalized"

    @model_validator(mode="after")
    def _needs_a_selector(self) -> LiveOptions:
        if not (self.type or self.watched_attributes):
            raise ValueError("set type or watched_attributes (clause 5.8.1)")
        if self.id_pattern and not self.type:
            raise ValueError("id_pattern needs a type (an EntitySelector needs one)")
        return self


class NgsiLdLiveConnector(LiveConnector):
    """Subscribes on the vendor's broker and receives its notifications."""

    kind: ClassVar[str] = "ngsild-live"
    options_model: ClassVar[type[Any] | None] = LiveOptions

    def __init__(
        self,
        source: SourceDefinition,
        secret: str | None = None,
        *,
        guard: OutboundGuard | None = None,
    ) -> None:
        super().__init__(source, secret, guard=guard)
        self.options = LiveOptions.model_validate(source.options)
        if not source.endpoint:
            raise SourceUnavailable("an ngsild-live source needs the broker's base URL")
        self.base = source.endpoint.rstrip("/")
        self.subscription_id: str | None = None
        self.notify_url: str | None = None
        self.ready = threading.Event()  # set once the subscription exists on the broker
        self.received = 0
        self.rejected: list[tuple[str, str]] = []  # (reason, raw excerpt)
        self._token = secrets.token_urlsafe(18)
        self._inbox: queue.SimpleQueue[Record] = queue.SimpleQueue()

    def fetch(self, cursor: Cursor) -> Iterator[Record]:
        """Live only: the pull connector (kind "ngsild") does full syncs."""
        cursor.full = False
        return iter(())

    # -- run ------------------------------------------------------------------------------

    def run(self, sink: Sink, stop: threading.Event) -> None:
        server = self._receiver()
        thread = threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True)
        thread.start()
        host = self.options.notify_host or self.options.bind_host
        self.notify_url = f"http://{host}:{server.server_address[1]}/notify/{self._token}"
        client = guarded_client(self.guard, timeout=self.options.timeout, headers=self._headers())
        try:
            self._keep_subscribed(client, stop, sink)
        finally:
            if self.subscription_id is not None:
                self._unsubscribe(client)
            server.shutdown()
            server.server_close()
            client.close()
            self._deliver(sink, until=None)

    def _keep_subscribed(self, client: httpx.Client, stop: threading.Event, sink: Sink) -> None:
        delay = 0.5
        next_check = 0.0
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_check:
                try:
                    if self.subscription_id is None or not self._exists(client):
                        self._subscribe(client)
                    self.ready.set()
                    delay = 0.5
                    next_check = now + self.options.check_seconds
                except (httpx.HTTPError, SourceUnavailable) as exc:
                    self.ready.clear()
                    log.warning("ngsild-live %s: %s; retrying in %.1fs", self.source.id, exc, delay)
                    next_check = now + delay
                    delay = min(delay * 2, 30.0)
            self._deliver(sink, until=min(next_check, time.monotonic() + 0.2))

    # -- the broker's side ------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.options.context:
            headers["Link"] = f'<{self.options.context}>; rel="{CONTEXT_REL}"'
        if self.options.tenant:
            headers["NGSILD-Tenant"] = self.options.tenant
        if self.secret:
            headers["Authorization"] = f"Bearer {self.secret}"
        return headers

    def subscription(self) -> dict[str, Any]:
        """The Subscription this connector asks for."""
        options = self.options
        body: dict[str, Any] = {
            "type": "Subscription",
            "subscriptionName": f"urbis live sync of {self.source.id}",
            "notification": {
                "format": options.format,
                "endpoint": {"uri": self.notify_url, "accept": "application/ld+json"},
            },
        }
        if options.type:
            selector: dict[str, Any] = {"type": options.type}
            if options.id_pattern:
                selector["idPattern"] = options.id_pattern
            body["entities"] = [selector]
        if options.watched_attributes:
            body["watchedAttributes"] = options.watched_attributes
        if options.q:
            body["q"] = options.q
        if options.attrs:
            body["notification"]["attributes"] = options.attrs
        if options.throttling:
            body["throttling"] = options.throttling
        return body

    def _subscribe(self, client: httpx.Client) -> None:
        answer = client.post(
            f"{self.base}/ngsi-ld/v1/subscriptions",
            content=orjson.dumps(self.subscription()),
            headers={"Content-Type": "application/json"},
        )
        if answer.status_code != 201:
            raise SourceUnavailable(
                f"the broker refused the subscription: {answer.status_code} {answer.text[:300]}"
            )
        location = answer.headers.get("location", "")
        self.subscription_id = location.rsplit("/subscriptions/", 1)[-1] or None
        log.info("ngsild-live %s: subscribed as %s", self.source.id, self.subscription_id)

    def _exists(self, client: httpx.Client) -> bool:
        assert self.subscription_id is not None
        answer = client.get(self._subscription_url())
        if answer.status_code == 404:
            log.warning("ngsild-live %s: the broker lost the subscription", self.source.id)
            return False
        if answer.status_code >= 400:
            raise SourceUnavailable(f"checking the subscription: {answer.status_code}")
        return True

    def _unsubscribe(self, client: httpx.Client) -> None:
        try:
            answer = client.delete(self._subscription_url())
            if answer.status_code not in (204, 404):
                log.warning(
                    "ngsild-live %s: delete answered %d", self.source.id, answer.status_code
                )
        except httpx.HTTPError as exc:
            log.warning("ngsild-live %s: subscription not deleted: %s", self.source.id, exc)
        self.subscription_id = None

    def _subscription_url(self) -> str:
        assert self.subscription_id is not None
        return f"{self.base}/ngsi-ld/v1/subscriptions/{quote(self.subscription_id, safe=':')}"

    # -- receiving ----------------------------------------------------------------------------

    def _receiver(self) -> ThreadingHTTPServer:
        connector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                if self.path != f"/notify/{connector._token}":
                    self._answer(404)
                    return
                size = int(self.headers.get("content-length") or 0)
                if size > MAX_NOTIFICATION_BYTES:
                    self._answer(413)
                    return
                raw = self.rfile.read(size)
                reason = connector.accept(raw, self.headers.get("link"))
                self._answer(400 if reason else 204)

            def _answer(self, status: int) -> None:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer((self.options.bind_host, self.options.bind_port), Handler)
        server.daemon_threads = True
        return server

    def accept(self, raw: bytes, link: str | None = None) -> str | None:
        """Queue the entities of one Notification; the reason it is refused, or None."""
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return self._reject(f"notification is not JSON: {exc}", raw)
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            return self._reject("not a Notification (no data array)", raw)
        context = body.get("@context")
        if context is None and link:
            context = link.split(">", 1)[0].lstrip(" <")
        if context is None:
            context = self.options.context
        for entity in body["data"]:
            if not isinstance(entity, dict) or "id" not in entity:
                self._reject("a notified entity without id", orjson.dumps(entity))
                continue
            self.received += 1
            self._inbox.put(
                NgsiEntity({k: v for k, v in entity.items() if k != "@context"}, context)
            )
        return None

    def _reject(self, reason: str, raw: bytes) -> str:
        log.warning("ngsild-live %s: %s", self.source.id, reason)
        self.rejected.append((reason, raw[:2000].decode("utf-8", errors="replace")))
        return reason

    def _deliver(self, sink: Sink, until: float | None) -> None:
        """Pass queued entities to the sink in batches until `until` (None: what is queued)."""
        period = self.options.batch_ms / 1000
        while True:
            batch: list[Record] = []
            deadline: float | None = None
            while len(batch) < self.options.batch_size:
                limit = deadline if deadline is not None else until
                wait = 0.0 if limit is None else limit - time.monotonic()
                try:
                    record = self._inbox.get(timeout=wait) if wait > 0 else self._inbox.get_nowait()
                except queue.Empty:
                    break
                batch.append(record)
                if deadline is None:
                    deadline = time.monotonic() + period
            if batch:
                try:
                    sink(batch)
                except Exception:
                    log.exception(
                        "ngsild-live %s: the sink failed on %d entities", self.source.id, len(batch)
                    )
            if not batch or (until is not None and time.monotonic() >= until):
                return
