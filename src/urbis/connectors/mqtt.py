"""MQTT IoT devices, FIWARE IoT Agent conventions: kind "mqtt" (a LiveConnector).

Topics (IoT Agent JSON and UltraLight 2.0 over MQTT):

* `/json/<apikey>/<device>/attrs` with `{"t": 15, "TimeInstant": "2026-01-15T09:00:00Z"}`
  (or an array of such objects, one observation each);
* `/ul/<apikey>/<device>/attrs` with `t|15|k|abc`, several groups separated by `#`, a group
  starting with a timestamp when it has an odd number of fields (`2026-...Z|t|15`);
* `/json|ul/<apikey>/<device>/attrs/<object_id>`: one measure, the payload is its value.

Devices are provisioned in the source definition (`options.devices`): device id -> entity id
and type, and object_id -> attribute name, value type and UN/CEFACT unit. Each message becomes
one partial entity per observation (id, type, the measured attributes with `observedAt` and
`unitCode`): a `MeasureUpdate`, which changes only those attributes (upsert options=update).
`TimeInstant` becomes `observedAt`; without it the time of arrival is used, as IoT Agents do.

A message from an unknown device, or one that cannot be read, goes to the quarantine with the
reason (`sink.quarantine(raw, reason)` when the sink offers it; else it is logged and kept in
`rejected`), and never stops the connector.

Delivery: QoS 1 subscriptions in a persistent session (fixed client id, clean_session False),
so the broker keeps what is published while the connector is away and delivers it after the
reconnect, which paho retries on its own with a growing delay. Messages are acknowledged by
paho when received; they are passed to the sink in batches (every `batch_ms` or `batch_size`
records), from the thread that called `run`. The sink is the framework's live sink
(`connectors.live.LiveSink`, run by `LiveManager`), which merges a batch's measures of one
entity and writes the batch with `EntityService.upsert_many(mode="update")`.
"""

from __future__ import annotations

import collections
import logging
import math
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import BaseModel, ConfigDict, Field, field_validator

from urbis.connectors.base import (
    BadRecord,
    Cursor,
    LiveConnector,
    NgsiEntity,
    Record,
    Sink,
    SourceUnavailable,
)
from urbis.connectors.definition import SourceDefinition
from urbis.twin.model import now_iso
from urbis.twin.outbound import OutboundGuard, OutboundRefused, fetch_failed

log = logging.getLogger("urbis.connectors.mqtt")
TIME_INSTANT = "TimeInstant"
_TOPIC = re.compile(r"^/(json|ul)/([^/]+)/([^/]+)/attrs(?:/([^/]+))?$")
_INTEGER = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?$")


# -- provisioning ------------------------------------------------------------------------------


class DeviceAttribute(BaseModel):
    """object_id -> NGSI-LD attribute (IoT Agent `attributes` provisioning)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="attribute name (a term of the context)")
    type: Literal["Number", "Integer", "Boolean", "Text", "auto"] = Field(
        default="auto", description="value type; auto: numbers where the text is one"
    )
    unit: str | None = Field(default=None, description="UN/CEFACT unit code, e.g. CEL")


class Device(BaseModel):
    model_config = ConfigDict(extra="forbid")

    entity_type: str = Field(description="NGSI-LD entity type (a term of the context)")
    entity_id: str | None = Field(
        default=None, description="default: urn:ngsi-ld:<entity_type>:<device id>"
    )
    apikey: str | None = Field(default=None, description="only accept this device under it")
    attributes: dict[str, DeviceAttribute | str] = Field(default_factory=dict)
    explicit_attrs: bool = Field(
        default=False, description="drop measures not in attributes (else named as object_id)"
    )

    def attribute(self, object_id: str) -> DeviceAttribute | None:
        found = self.attributes.get(object_id)
        if isinstance(found, str):
            return DeviceAttribute(name=found)
        if found is None and not self.explicit_attrs:
            return DeviceAttribute(name=object_id)
        return found


def _both_transports() -> list[Literal["json", "ul"]]:
    return ["json", "ul"]


class MqttOptions(BaseModel):
    """`[options]` of an "mqtt" source; the endpoint is `mqtt://host:port`."""

    model_config = ConfigDict(extra="forbid")

    devices: dict[str, Device] = Field(default_factory=dict)
    apikeys: list[str] = Field(default_factory=list, description="subscribe to these; [] = any")
    transports: list[Literal["json", "ul"]] = Field(default_factory=_both_transports)
    client_id: str | None = Field(default=None, description="default: urbis-<source id>")
    username: str | None = Field(default=None, description="the password is the credential")
    qos: Literal[0, 1, 2] = 1
    keepalive: int = Field(default=30, ge=5, le=3600)
    batch_ms: float = Field(default=50.0, gt=0, le=10_000, description="flush period")
    batch_size: int = Field(default=500, ge=1, le=100_000)
    reconnect_min: float = Field(default=0.5, gt=0, le=60, description="first retry delay, s")
    reconnect_max: float = Field(default=30.0, gt=0, le=3600, description="longest delay, s")
    context: Any = Field(default=None, description="@context of types and names; None: core")

    @field_validator("apikeys")
    @classmethod
    def _safe_apikeys(cls, value: list[str]) -> list[str]:
        for key in value:
            if not key or any(c in key for c in "/+#"):
                raise ValueError(f"apikey {key!r} must be non-empty without '/', '+' or '#'")
        return value


@dataclass(frozen=True)
class MeasureUpdate(NgsiEntity):
    """A partial entity: only the attributes it carries change (upsert with options=update)."""

    partial: ClassVar[bool] = True


# -- payloads ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    measures: dict[str, Any]  # object_id -> raw value
    time_instant: str | None


def parse_json(payload: bytes) -> list[Observation]:
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise BadRecord(f"payload is not valid JSON: {exc}") from None
    items = body if isinstance(body, list) else [body]
    if not items or not all(isinstance(i, dict) and i for i in items):
        raise BadRecord("a JSON payload must be an object of measures (or an array of them)")
    return [_observation(dict(i)) for i in items]


def parse_ul(payload: bytes) -> list[Observation]:
    """UltraLight 2.0: `k|v|k|v`, groups joined by '#', an optional leading timestamp."""
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise BadRecord("UltraLight payload is not UTF-8 text") from None
    if not text:
        raise BadRecord("empty UltraLight payload")
    observations = []
    for group in text.split("#"):
        fields = [f.strip() for f in group.strip().split("|")]
        measures: dict[str, Any] = {}
        if len(fields) % 2 == 1:
            if not _ISO.match(fields[0]):
                raise BadRecord(
                    f"UltraLight group {group!r} has an odd number of fields and does not "
                    "start with a timestamp"
                )
            measures[TIME_INSTANT] = fields[0]
            fields = fields[1:]
        for key, value in zip(fields[::2], fields[1::2], strict=True):
            if not key:
                raise BadRecord(f"UltraLight group {group!r} has an empty measure name")
            measures[key] = value
        if not measures:
            raise BadRecord(f"UltraLight group {group!r} has no measure")
        observations.append(_observation(measures))
    return observations


def _observation(measures: dict[str, Any]) -> Observation:
    stamp = measures.pop(TIME_INSTANT, None)
    if stamp is not None and not isinstance(stamp, str):
        raise BadRecord(f"TimeInstant must be an ISO 8601 string, got {stamp!r}")
    if not measures:
        raise BadRecord("the payload has a TimeInstant but no measure")
    return Observation(measures, utc(stamp) if stamp is not None else None)


def utc(stamp: str) -> str:
    """An ISO 8601 date-time in UTC with a Z (a time without zone is taken as UTC)."""
    if not _ISO.match(stamp):
        raise BadRecord(f"TimeInstant {stamp!r} is not an ISO 8601 date-time")
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        raise BadRecord(f"TimeInstant {stamp!r} is not a valid date-time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def convert(value: Any, kind: str, *, text: bool) -> Any:
    """A measure's value in the provisioned type; UL values are text, JSON ones typed."""
    if kind == "auto":
        if text and isinstance(value, str):
            if _INTEGER.match(value):
                return int(value)
            if _FLOAT.match(value):
                return float(value)
        return value
    if kind == "Text":
        return value if isinstance(value, str) else orjson.dumps(value).decode()
    if kind == "Boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        raise BadRecord(f"{value!r} is not a Boolean")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise BadRecord(f"{value!r} is not a {kind}")
    try:
        number = int(value) if kind == "Integer" else float(value)
    except ValueError:
        raise BadRecord(f"{value!r} is not a {kind}") from None
    if isinstance(number, float) and not math.isfinite(number):
        raise BadRecord(f"{value!r} is not a finite number")
    return number


# -- the connector ----------------------------------------------------------------------------


@dataclass
class _Bad:
    raw: dict[str, Any]
    reason: str


Quarantine = Callable[[Mapping[str, Any], str], None]


class MqttConnector(LiveConnector):
    """Subscribes to the IoT Agent topics and turns measures into partial entities."""

    kind: ClassVar[str] = "mqtt"
    options_model: ClassVar[type[Any] | None] = MqttOptions

    def __init__(
        self,
        source: SourceDefinition,
        secret: str | None = None,
        *,
        guard: OutboundGuard | None = None,
    ) -> None:
        super().__init__(source, secret, guard=guard)
        self.options = MqttOptions.model_validate(source.options)
        self.host, self.port = broker_address(source.endpoint)
        self.client_id = self.options.client_id or f"urbis-{source.id}"
        self.stats: collections.Counter[str] = collections.Counter()
        self.rejected: collections.deque[tuple[str, dict[str, Any]]] = collections.deque(
            maxlen=1000
        )
        self.connected = threading.Event()
        self._inbox: queue.SimpleQueue[Record | _Bad] = queue.SimpleQueue()

    def fetch(self, cursor: Cursor) -> Iterator[Record]:
        """Devices push; there is nothing to pull. A live run is `run`."""
        cursor.full = False
        return iter(())

    def topics(self) -> list[str]:
        keys = self.options.apikeys or ["+"]
        return [
            f"/{t}/{k}/+/attrs{s}"
            for t in self.options.transports
            for k in keys
            for s in ("", "/+")
        ]

    # -- run ------------------------------------------------------------------------------

    def run(self, sink: Sink, stop: threading.Event) -> None:
        client = self._client()
        address = self._checked_address()
        client.connect_async(address, self.port, keepalive=self.options.keepalive)
        client.loop_start()  # paho's thread: network I/O, reconnects with backoff
        try:
            self._deliver(sink, stop)
        finally:
            client.disconnect()
            client.loop_stop()
            self._drain(sink)

    def _checked_address(self) -> str:
        """The broker's address, checked by the outbound guard; paho is given the address, not
        the name, so that it connects where the guard looked (and not where DNS says later)."""
        if self.guard.names(self.host, self.port):
            return self.host
        try:
            return self.guard.addresses(self.host, self.port)[0]
        except OutboundRefused as error:
            endpoint = self.source.endpoint or self.host
            raise SourceUnavailable(
                f"mqtt broker {endpoint}: {fetch_failed('mqtt broker', endpoint, error)}"
            ) from None

    def _client(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        if self.options.username is not None:
            client.username_pw_set(self.options.username, self.secret)
        client.reconnect_delay_set(
            min_delay=max(1, round(self.options.reconnect_min)),
            max_delay=max(1, round(self.options.reconnect_max)),
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            log.warning("mqtt %s: broker refused the connection: %s", self.source.id, reason)
            return
        # Subscribing again in a kept session is harmless and covers a broker that lost it.
        qos: int = self.options.qos
        client.subscribe([(t, qos) for t in self.topics()])
        self.stats["connects"] += 1
        self.connected.set()
        log.info(
            "mqtt %s: connected to %s:%d (session kept: %s)",
            self.source.id,
            self.host,
            self.port,
            getattr(flags, "session_present", None),
        )

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self.connected.clear()
        self.stats["disconnects"] += 1
        log.info("mqtt %s: disconnected (%s); paho reconnects", self.source.id, reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        """paho's thread: parse and queue, never raise (a raise would stop paho's loop)."""
        self.stats["messages"] += 1
        payload = bytes(message.payload)
        try:
            for record in self.records(message.topic, payload):
                self._inbox.put(record)
        except BadRecord as exc:
            self._inbox.put(_Bad(_raw(message.topic, payload), str(exc)))
        except Exception as exc:
            log.exception("mqtt %s: unexpected error on %s", self.source.id, message.topic)
            self._inbox.put(_Bad(_raw(message.topic, payload), f"internal error: {exc}"))

    def records(self, topic: str, payload: bytes, *, now: str | None = None) -> list[Record]:
        """The partial entities of one message; raises BadRecord with the quarantine reason."""
        match = _TOPIC.match(topic)
        if match is None:
            raise BadRecord(f"topic {topic!r} is not /json|ul/<apikey>/<device>/attrs[/<attr>]")
        transport, apikey, device_id, single = match.groups()
        device = self.options.devices.get(device_id)
        if device is None or (device.apikey is not None and device.apikey != apikey):
            raise BadRecord(
                f"unknown device {device_id!r} (apikey {apikey!r}): provision it in the "
                "source's options.devices"
            )
        if single is not None:
            text = payload.decode("utf-8", errors="replace").strip()
            value: Any = text
            if transport == "json":
                try:
                    value = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    value = text
            observations = [Observation({single: value}, None)]
        else:
            observations = parse_json(payload) if transport == "json" else parse_ul(payload)
        arrived = now or now_iso()
        entity_id = device.entity_id or f"urn:ngsi-ld:{device.entity_type}:{device_id}"
        out: list[Record] = []
        for obs in observations:
            entity: dict[str, Any] = {"id": entity_id, "type": device.entity_type}
            for object_id, raw in obs.measures.items():
                attribute = device.attribute(object_id)
                if attribute is None:
                    self.stats["dropped_measures"] += 1
                    continue
                try:
                    value = convert(raw, attribute.type, text=transport == "ul")
                except BadRecord as exc:
                    raise BadRecord(f"device {device_id!r}, measure {object_id!r}: {exc}") from None
                inst: dict[str, Any] = {
                    "type": "Property",
                    "value": value,
                    "observedAt": obs.time_instant or arrived,
                }
                if attribute.unit:
                    inst["unitCode"] = attribute.unit
                entity[attribute.name] = inst
            if len(entity) > 2:
                self.stats["measures"] += len(entity) - 2
                out.append(MeasureUpdate(entity, self.options.context))
        return out

    # -- delivery to the sink (the run thread) ----------------------------------------------

    def _deliver(self, sink: Sink, stop: threading.Event) -> None:
        period = self.options.batch_ms / 1000
        while not stop.is_set():
            batch: list[Record] = []
            deadline = None
            while len(batch) < self.options.batch_size:
                timeout = 0.2 if deadline is None else deadline - time.monotonic()
                if timeout <= 0:
                    break
                try:
                    item = self._inbox.get(timeout=timeout)
                except queue.Empty:
                    if deadline is None and stop.is_set():
                        break
                    continue
                if isinstance(item, _Bad):
                    self._quarantine(sink, item)
                    continue
                batch.append(item)
                if deadline is None:
                    deadline = time.monotonic() + period
            if batch:
                self._flush(sink, batch)

    def _drain(self, sink: Sink) -> None:
        """Deliver what arrived before the disconnect: it was acknowledged already."""
        batch: list[Record] = []
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Bad):
                self._quarantine(sink, item)
            else:
                batch.append(item)
        if batch:
            self._flush(sink, batch)

    def _flush(self, sink: Sink, batch: Sequence[Record]) -> None:
        try:
            sink(batch)
            self.stats["delivered"] += len(batch)
            return
        except Exception as exc:
            log.warning(
                "mqtt %s: sink refused a batch (%s); retrying one by one", self.source.id, exc
            )
        for record in batch:  # isolate what the sink cannot take; the rest goes through
            try:
                sink([record])
                self.stats["delivered"] += 1
            except Exception as exc:
                raw = dict(record.entity) if isinstance(record, NgsiEntity) else {"record": record}
                self._quarantine(sink, _Bad(raw, f"the twin refused it: {exc}"))

    def _quarantine(self, sink: Sink, bad: _Bad) -> None:
        self.stats["quarantined"] += 1
        self.rejected.append((bad.reason, bad.raw))
        handler: Quarantine | None = getattr(sink, "quarantine", None)
        if handler is None:
            log.warning("mqtt %s: quarantined: %s", self.source.id, bad.reason)
            return
        try:
            handler(bad.raw, bad.reason)
        except Exception:
            log.exception("mqtt %s: the quarantine refused a record", self.source.id)


def _raw(topic: str, payload: bytes) -> dict[str, Any]:
    return {"topic": topic, "payload": payload[:4096].decode("utf-8", errors="replace")}


def broker_address(endpoint: str | None) -> tuple[str, int]:
    """`mqtt://host:port` (or `tcp://`, or `host:port`) -> (host, port); 1883 by default."""
    if not endpoint:
        raise SourceUnavailable("an mqtt source needs an endpoint: mqtt://host:port")
    parts = urlsplit(endpoint if "://" in endpoint else f"mqtt://{endpoint}")
    if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
        raise SourceUnavailable(f"mqtt endpoint {endpoint!r} must look like mqtt://host:port")
    return parts.hostname, parts.port or 1883
