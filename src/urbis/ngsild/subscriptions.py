"""NGSI-LD subscriptions and their notifications (ETSI GS CIM 009 v1.8 clauses 5.8, 5.11).

Three parts, each with one job:

* the model: `parse_subscription` validates a Subscription (clause 5.2.12) into the stored body
  (the caller's own terms, kept as given) and `compile_filter` turns it into expanded IRIs for
  matching, with the subscription's @context;
* `SubscriptionStore`: subscriptions per tenant, kept in the state store (twin/state), so they
  survive a restart and a crash, and served from memory;
* `Notifier`: a `Twin` change listener only queues the committed change (bounded queue, never
  blocking a write); one background thread shows each changed entity to each subscription as
  its owner (who created it) may see it (the access port, twin/access.py), matches that
  against the subscription and POSTs Notification bodies (clause 5.3.1) with httpx, recording
  timesSent, lastNotification, lastSuccess and lastFailure. Changes that arrive together go
  out as one notification per subscription, the latest state of each entity only; throttled
  ones wait, they are not dropped.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

from urbis.twin.access import ALLOW_ALL, AccessPolicy, Caller, ReadScope
from urbis.twin.changes import ChangeEvent
from urbis.twin.errors import BadRequestData, NgsiLdError, ResourceNotFound
from urbis.twin.geo import parse_geoq
from urbis.twin.iri import redact_in, redact_url
from urbis.twin.model import EntityWriter, check_datetime, check_name, is_uri, now_iso
from urbis.twin.outbound import OutboundGuard, guarded_client
from urbis.twin.query.idpattern import compile_id_pattern
from urbis.twin.query.matcher import EntityMatcher
from urbis.twin.query.qlang import expand_q, parse_q
from urbis.twin.query.selector import EntitySelector
from urbis.twin.query.typeexpr import parse_types
from urbis.twin.state import StateStore, StateTransaction, memory_state_store
from urbis.twin.terms import Terms

log = logging.getLogger("urbis")
Doc = dict[str, Any]
Change = tuple[Doc | None, Doc | None, str]  # old, new (None: absent), dataset graph

JSON = "application/json"
JSONLD = "application/ld+json"
CORE_CONTEXT = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"
CONTEXT_REL = "http://www.w3.org/ns/json-ld#context"
FORMATS = ("normalized", "concise", "keyValues")
TRIGGERS = frozenset(
    {
        "entityCreated",
        "entityUpdated",
        "entityDeleted",
        "attributeCreated",
        "attributeUpdated",
        "attributeDeleted",
    }
)
DEFAULT_TRIGGERS = frozenset(
    {"entityCreated", "entityUpdated", "attributeCreated", "attributeUpdated"}
)
# Members the broker keeps itself: given in a request they are ignored (read-only, 5.2.12).
READ_ONLY = frozenset({"status", "createdAt", "modifiedAt"})
NOTIFICATION_STATUS = frozenset(
    {"status", "timesSent", "timesFailed", "lastNotification", "lastSuccess", "lastFailure"}
)
KNOWN_MEMBERS = frozenset(
    {
        "id",
        "type",
        "subscriptionName",
        "description",
        "entities",
        "watchedAttributes",
        "notificationTrigger",
        "timeInterval",
        "q",
        "geoQ",
        "scopeQ",
        "csf",
        "isActive",
        "notification",
        "expiresAt",
        "throttling",
        "lang",
        "jsonldContext",
        "temporalQ",
        "@context",
    }
    | READ_ONLY
)
NOTIFICATION_MEMBERS = frozenset(
    {"attributes", "sysAttrs", "format", "endpoint", "showChanges"} | NOTIFICATION_STATUS
)
ENDPOINT_MEMBERS = frozenset({"uri", "accept", "receiverInfo", "notifierInfo", "timeout"})
SUBSCRIPTION_ADMIN = Caller(admin=True, anonymous=False)


# -- the model ------------------------------------------------------------------------------


def new_subscription_id() -> str:
    return f"urn:ngsi-ld:Subscription:{uuid.uuid4()}"


def parse_subscription(
    body: object,
    terms: Terms,
    *,
    max_q_length: int = 4096,
    creating: bool = True,
    now: datetime | None = None,
) -> Doc:
    """A validated Subscription body, in the caller's terms, without @context and status.

    Raises BadRequestData naming the member that is wrong; `compile_filter` is run too, so a
    body that passes can always be matched.
    """
    if not isinstance(body, dict):
        raise BadRequestData("a subscription must be a JSON object")
    unknown = sorted(set(body) - KNOWN_MEMBERS)
    if unknown:
        raise BadRequestData(f"unknown subscription member(s): {', '.join(unknown)}")
    if body.get("type") != "Subscription":
        raise BadRequestData('a subscription needs "type": "Subscription"')
    out: Doc = {k: v for k, v in body.items() if k not in READ_ONLY and k != "@context"}
    if "id" in out and not is_uri(out["id"]):
        raise BadRequestData(f"subscription id must be a URI, got {out['id']!r}")
    for member in ("subscriptionName", "description"):
        if member in out and not isinstance(out[member], str):
            raise BadRequestData(f"{member} must be a string")
    if "timeInterval" in out:
        raise BadRequestData(
            "periodic subscriptions (timeInterval) are not supported; omit timeInterval to be "
            "notified on change"
        )
    for member in ("csf", "temporalQ"):
        if member in out:
            raise BadRequestData(f"{member} is not supported in subscriptions")
    if "entities" not in out and "watchedAttributes" not in out:
        raise BadRequestData("a subscription needs entities or watchedAttributes (clause 5.8.1)")
    if "entities" in out:
        _check_entities(out["entities"])
    if "watchedAttributes" in out:
        _check_names(out["watchedAttributes"], "watchedAttributes")
    if "notificationTrigger" in out:
        triggers = out["notificationTrigger"]
        if not isinstance(triggers, list) or not triggers:
            raise BadRequestData("notificationTrigger must be a non-empty array")
        bad = [t for t in triggers if t not in TRIGGERS]
        if bad:
            raise BadRequestData(
                f"unknown notificationTrigger {bad[0]!r}; use: {', '.join(sorted(TRIGGERS))}"
            )
    if "q" in out and (not isinstance(out["q"], str) or not out["q"].strip()):
        raise BadRequestData("q must be a non-empty string")
    if "scopeQ" in out:
        raise BadRequestData("scopeQ is not supported in subscriptions")
    if "isActive" in out and not isinstance(out["isActive"], bool):
        raise BadRequestData("isActive must be true or false")
    if "throttling" in out:
        throttling = out["throttling"]
        if isinstance(throttling, bool) or not isinstance(throttling, int | float):
            raise BadRequestData("throttling must be a number of seconds")
        if throttling <= 0:
            raise BadRequestData("throttling must be greater than 0")
    if "expiresAt" in out:
        check_datetime(out["expiresAt"], "expiresAt")
        if creating and _instant(out["expiresAt"]) <= (now or datetime.now(UTC)):
            raise BadRequestData(f"expiresAt {out['expiresAt']!r} is in the past")
    if "lang" in out and not isinstance(out["lang"], str):
        raise BadRequestData("lang must be a string")
    if "jsonldContext" in out and not is_uri(out["jsonldContext"]):
        raise BadRequestData("jsonldContext must be the URI of an @context")
    if "notification" not in out:
        raise BadRequestData("a subscription needs a notification member with an endpoint")
    out["notification"] = _check_notification(out["notification"])
    compile_filter(out, terms, max_q_length=max_q_length)
    return out


def _check_entities(entities: object) -> None:
    if not isinstance(entities, list) or not entities:
        raise BadRequestData("entities must be a non-empty array of EntitySelector objects")
    for selector in entities:
        if not isinstance(selector, dict):
            raise BadRequestData("each EntitySelector must be an object")
        extra = sorted(set(selector) - {"id", "idPattern", "type"})
        if extra:
            raise BadRequestData(f"unknown EntitySelector member(s): {', '.join(extra)}")
        if not isinstance(selector.get("type"), str) or not selector["type"]:
            raise BadRequestData("each EntitySelector of a subscription needs a type")
        if "id" in selector and not is_uri(selector["id"]):
            raise BadRequestData(f"EntitySelector id must be a URI, got {selector['id']!r}")
        if "idPattern" in selector:
            compile_id_pattern(selector["idPattern"])  # RE2, the subset queries share


def _check_names(names: object, what: str) -> None:
    if not isinstance(names, list) or not names:
        raise BadRequestData(f"{what} must be a non-empty array of attribute names")
    for name in names:
        check_name(name, f"attribute name in {what}")


def _check_notification(raw: object) -> Doc:
    if not isinstance(raw, dict):
        raise BadRequestData("notification must be an object")
    unknown = sorted(set(raw) - NOTIFICATION_MEMBERS)
    if unknown:
        raise BadRequestData(f"unknown notification member(s): {', '.join(unknown)}")
    out = {k: v for k, v in raw.items() if k not in NOTIFICATION_STATUS}
    if "attributes" in out:
        _check_names(out["attributes"], "notification.attributes")
    if "format" in out and out["format"] not in FORMATS:
        raise BadRequestData(f"notification.format must be one of {', '.join(FORMATS)}")
    if "sysAttrs" in out and not isinstance(out["sysAttrs"], bool):
        raise BadRequestData("notification.sysAttrs must be true or false")
    if "showChanges" in out and not isinstance(out["showChanges"], bool):
        raise BadRequestData("notification.showChanges must be true or false")
    endpoint = out.get("endpoint")
    if not isinstance(endpoint, dict):
        raise BadRequestData("notification.endpoint must be an object with a uri")
    unknown = sorted(set(endpoint) - ENDPOINT_MEMBERS)
    if unknown:
        raise BadRequestData(f"unknown notification.endpoint member(s): {', '.join(unknown)}")
    uri = endpoint.get("uri")
    if not isinstance(uri, str) or not re.match(r"^https?://[^\s/]+", uri) or not is_uri(uri):
        raise BadRequestData(
            f"notification.endpoint.uri must be an http(s) URL, got {uri!r} "
            "(MQTT endpoints are not supported)"
        )
    if endpoint.get("accept", JSON) not in (JSON, JSONLD):
        raise BadRequestData(f"notification.endpoint.accept must be {JSON} or {JSONLD}")
    for member in ("receiverInfo", "notifierInfo"):
        if member in endpoint:
            items = endpoint[member]
            if not isinstance(items, list) or not all(
                isinstance(i, dict)
                and set(i) == {"key", "value"}
                and isinstance(i["key"], str)
                and re.match(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$", i["key"])
                and isinstance(i["value"], str)
                and "\n" not in i["value"]
                for i in items
            ):
                raise BadRequestData(
                    f"notification.endpoint.{member} must be an array of "
                    '{"key": <header name>, "value": <string>}'
                )
    return out


def merge_patch(current: Doc, fragment: object) -> Doc:
    """PATCH /subscriptions/{id} (clause 5.8.2): given members replace, notification merges."""
    if not isinstance(fragment, dict) or not fragment:
        raise BadRequestData("a subscription update must be a non-empty JSON object")
    if "id" in fragment and fragment["id"] != current["id"]:
        raise BadRequestData("the id of a subscription cannot be changed")
    merged = dict(current)
    for key, value in fragment.items():
        if key in ("@context", *READ_ONLY):
            continue
        if key == "notification" and isinstance(value, dict):
            merged["notification"] = {**current.get("notification", {}), **value}
        elif value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    merged["type"] = "Subscription"
    return merged


@dataclass(frozen=True)
class Filter:
    """A subscription with every name expanded: what decides whether a change notifies."""

    matcher: EntityMatcher  # entities, q and geoQ: the matcher queries use
    watched: frozenset[str] | None
    triggers: frozenset[str]
    attributes: frozenset[str] | None

    def wants(self, old: Doc | None, new: Doc | None) -> bool:
        """Whether this committed change of one entity is notified (clauses 5.8.1, 5.11)."""
        doc = new if new is not None else old
        if doc is None or not self.matcher.selects(doc):
            return False
        if new is None:  # a deletion: q and geoQ cannot be evaluated on what is gone
            return "entityDeleted" in self.triggers
        return self._changed(old, new) and self.matcher.matches(new)

    def _changed(self, old: Doc | None, new: Doc) -> bool:
        if old is None:
            watched_present = self.watched is None or any(a in new for a in self.watched)
            return watched_present and bool({"entityCreated", "attributeCreated"} & self.triggers)
        names = set(_attribute_names(old)) | set(_attribute_names(new))
        if self.watched is not None:
            names &= self.watched
        for name in names:
            before, after = old.get(name), new.get(name)
            if before == after:
                continue
            if before is None:
                kind = "attributeCreated"
            elif after is None:
                kind = "attributeDeleted"
            else:
                kind = "attributeUpdated"
            if kind in self.triggers or "entityUpdated" in self.triggers:
                return True
        return False


def _attribute_names(doc: Doc) -> Iterable[str]:
    return (k for k, v in doc.items() if isinstance(v, list) and k not in ("type", "scope"))


def compile_filter(sub: Mapping[str, Any], terms: Terms, *, max_q_length: int = 4096) -> Filter:
    """Expand the subscription's names with its @context; raises BadRequestData if invalid."""
    selectors = tuple(
        EntitySelector(
            ids=(s["id"],) if "id" in s else (),
            id_pattern=s.get("idPattern"),  # checked and compiled by the selector
            types=parse_types(s["type"], terms.expand),
        )
        for s in sub.get("entities", [])
    )
    watched = sub.get("watchedAttributes")
    q = None
    if sub.get("q") is not None:
        q = expand_q(parse_q(sub["q"], max_length=max_q_length), terms.expand, terms.expand_vocab)
    geo = None
    raw_geo = sub.get("geoQ")
    if raw_geo is not None:
        if not isinstance(raw_geo, dict):
            raise BadRequestData("geoQ must be an object with georel, geometry and coordinates")
        try:
            parsed = parse_geoq(
                raw_geo.get("georel"),
                raw_geo.get("geometry"),
                raw_geo.get("coordinates"),
                raw_geo.get("geoproperty"),
            )
        except BadRequestData as exc:
            raise BadRequestData(f"invalid geoQ: {exc.detail}") from None
        except ValueError as exc:
            raise BadRequestData(f"invalid geoQ: {exc}") from None
        if parsed is not None:
            from dataclasses import replace

            geo = replace(parsed, geoproperty=terms.expand(parsed.geoproperty))
    attributes = sub.get("notification", {}).get("attributes")
    return Filter(
        matcher=EntityMatcher(selectors=selectors, q=q, geo=geo),
        watched=frozenset(terms.expand(a) for a in watched) if watched else None,
        triggers=frozenset(sub.get("notificationTrigger") or DEFAULT_TRIGGERS),
        attributes=frozenset(terms.expand(a) for a in attributes) if attributes else None,
    )


def _instant(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# -- a subscription and its delivery record -------------------------------------------------


@dataclass
class Delivery:
    """The notification members the broker maintains (clause 5.2.15, NotificationParams)."""

    times_sent: int = 0
    times_failed: int = 0
    last_notification: str | None = None
    last_success: str | None = None
    last_failure: str | None = None
    status: str | None = None  # "ok" or "failed" once something was sent

    def members(self) -> Doc:
        out: Doc = {"timesSent": self.times_sent}
        if self.times_failed:
            out["timesFailed"] = self.times_failed
        for key, value in (
            ("lastNotification", self.last_notification),
            ("lastSuccess", self.last_success),
            ("lastFailure", self.last_failure),
            ("status", self.status),
        ):
            if value is not None:
                out[key] = value
        return out

    @classmethod
    def from_members(cls, raw: Mapping[str, Any]) -> Delivery:
        return cls(
            times_sent=int(raw.get("timesSent", 0)),
            times_failed=int(raw.get("timesFailed", 0)),
            last_notification=raw.get("lastNotification"),
            last_success=raw.get("lastSuccess"),
            last_failure=raw.get("lastFailure"),
            status=raw.get("status"),
        )


@dataclass
class Subscription:
    body: Doc  # validated, in the creator's terms, with its id
    context: Any  # the @context value the terms are in; None: the core context
    created_at: str
    modified_at: str
    delivery: Delivery = field(default_factory=Delivery)
    # Who created it: notifications show entities as this caller may read them. Subscriptions
    # stored before owners were kept were all made with the admin token.
    owner: Caller = field(default_factory=lambda: SUBSCRIPTION_ADMIN)

    @property
    def id(self) -> str:
        subscription_id: str = self.body["id"]
        return subscription_id

    def status(self, now: datetime | None = None) -> str:
        """active, paused (isActive false) or expired (expiresAt passed) — clause 5.2.12."""
        expires = self.body.get("expiresAt")
        if expires is not None and _instant(expires) <= (now or datetime.now(UTC)):
            return "expired"
        return "active" if self.body.get("isActive", True) else "paused"

    def render(self, *, sys_attrs: bool = False) -> Doc:
        """The subscription as GET returns it: the body, its status and delivery record."""
        out = dict(self.body)
        out["notification"] = {**self.body["notification"], **self.delivery.members()}
        out["isActive"] = self.body.get("isActive", True)
        out["status"] = self.status()
        if sys_attrs:
            out["createdAt"] = self.created_at
            out["modifiedAt"] = self.modified_at
        return out

    def to_json(self) -> Doc:
        return {
            "body": self.body,
            "context": self.context,
            "createdAt": self.created_at,
            "modifiedAt": self.modified_at,
            "delivery": self.delivery.members(),
            "owner": self.owner.to_json(),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Subscription:
        return cls(
            body=raw["body"],
            context=raw.get("context"),
            created_at=raw["createdAt"],
            modified_at=raw["modifiedAt"],
            delivery=Delivery.from_members(raw.get("delivery", {})),
            owner=Caller.from_json(raw["owner"]) if "owner" in raw else SUBSCRIPTION_ADMIN,
        )


# -- persistence ----------------------------------------------------------------------------


SUBSCRIPTIONS = "subscriptions"  # the state store's collection, per tenant, keyed by id


class SubscriptionStore:
    """Subscriptions per tenant, in the state store (collection `subscriptions`).

    Kept apart from the RDF store on purpose: subscriptions are configuration, not city data,
    and must not show up in SPARQL or dumps of the twin. Each tenant's subscriptions are read
    once and then served from memory (the notifier asks on every write); every change is
    written to the store before the copy in memory, so an acknowledged change survives a crash.
    """

    def __init__(self, state: StateStore | None = None) -> None:
        self.state = state if state is not None else memory_state_store()
        self._tenants: dict[str, dict[str, Subscription]] = {}
        self._lock = threading.RLock()

    def tenants(self) -> list[str]:
        """Tenants that have subscriptions (stored or in memory)."""
        with self._lock:
            names = {t for t, subs in self._tenants.items() if subs}
            names.update(self.state.tenants(SUBSCRIPTIONS))
            return sorted(names)

    def all(self, tenant: str) -> list[Subscription]:
        with self._lock:
            return list(self._load(tenant).values())

    def get(self, tenant: str, subscription_id: str) -> Subscription:
        with self._lock:
            found = self._load(tenant).get(subscription_id)
        if found is None:
            raise ResourceNotFound(f"subscription {subscription_id!r} not found")
        return found

    def add(self, tenant: str, sub: Subscription) -> None:
        from urbis.twin.errors import AlreadyExists

        with self._lock:
            subs = self._load(tenant)
            if sub.id in subs:
                raise AlreadyExists(f"subscription {sub.id!r} already exists")
            self.state.put(SUBSCRIPTIONS, tenant, sub.id, sub.to_json())
            subs[sub.id] = sub

    def replace(self, tenant: str, sub: Subscription) -> None:
        with self._lock:
            subs = self._load(tenant)
            self.state.put(SUBSCRIPTIONS, tenant, sub.id, sub.to_json())
            subs[sub.id] = sub

    def delete(self, tenant: str, subscription_id: str) -> None:
        with self._lock:
            subs = self._load(tenant)
            if subscription_id not in subs:
                raise ResourceNotFound(f"subscription {subscription_id!r} not found")
            self.state.delete(SUBSCRIPTIONS, tenant, subscription_id)
            del subs[subscription_id]

    def flush(self) -> None:
        """Write every loaded subscription (delivery counters change without a CRUD call)."""
        with self._lock, self.state.transaction() as tx:
            for tenant, subs in self._tenants.items():
                for sub in subs.values():
                    tx.put(SUBSCRIPTIONS, tenant, sub.id, sub.to_json())

    def _load(self, tenant: str) -> dict[str, Subscription]:
        subs = self._tenants.get(tenant)
        if subs is None:
            subs = {}
            for _, raw in self.state.list(SUBSCRIPTIONS, tenant):
                sub = Subscription.from_json(raw)
                subs[sub.id] = sub
            self._tenants[tenant] = subs
        return subs


def import_legacy_subscriptions(tx: StateTransaction, directory: Path) -> int:
    """The store's files before the state store: `<data dir>/subscriptions/<tenant>.json`,
    a JSON array of `Subscription.to_json()` objects (`_default.json`: the default tenant)."""
    count = 0
    for path in sorted(directory.glob("*.json")):
        tenant = "" if path.stem == "_default" else path.stem
        try:
            stored = orjson.loads(path.read_bytes())
            subs = [Subscription.from_json(raw) for raw in stored]
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"cannot import the subscriptions file {path}: {error!r}") from None
        for sub in subs:
            tx.put(SUBSCRIPTIONS, tenant, sub.id, sub.to_json())
            count += 1
    return count


# -- notifications --------------------------------------------------------------------------


@dataclass
class _Pending:
    """Entities waiting for one subscription (latest state wins), and when they may go."""

    tenant: str
    entities: dict[str, Doc | str] = field(default_factory=dict)  # id -> doc, or type if deleted
    due: float = 0.0


class Notifier:
    """Delivers notifications from one background thread; writers only enqueue.

    `resolve` turns a subscription's @context into its terms (the API's ContextResolver).
    The notifier is a ChangeListener: `twin.listen(notifier)` hooks every tenant.
    """

    def __init__(
        self,
        store: SubscriptionStore,
        resolve: Callable[[Any], Terms],
        *,
        queue_size: int = 10_000,
        timeout: float = 5.0,
        max_entities: int = 1000,
        max_q_length: int = 4096,
        transport: httpx.BaseTransport | None = None,
        guard: OutboundGuard | None = None,
        access: AccessPolicy | None = None,
    ) -> None:
        self.store = store
        self.access = access or ALLOW_ALL  # what each subscription's owner may read
        self.resolve = resolve
        self.timeout = timeout
        self.max_entities = max_entities
        self.max_q_length = max_q_length
        self.dropped = 0  # changes refused because the queue was full
        self._queue: queue.Queue[tuple[str, Sequence[Change]]] = queue.Queue(queue_size)
        self._pending: dict[str, _Pending] = {}
        self._last_sent: dict[str, float] = {}
        self._filters: dict[tuple[str, str], tuple[str, Filter]] = {}
        self._transport = transport
        self._guard = guard or OutboundGuard()  # endpoints: public addresses unless allowed
        self._client = self._new_client()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._idle = threading.Condition()
        self._busy = 0

    # -- wiring ---------------------------------------------------------------------------

    def __call__(self, events: Sequence[ChangeEvent]) -> None:
        """The Twin's listener: one transaction's events (one tenant), queued as changes."""
        if events:
            self.enqueue(events[0].tenant, [(e.old, e.new, e.graph) for e in events])

    def enqueue(self, tenant: str, changes: Sequence[Change]) -> None:
        """Called under the tenant's write lock: never blocks, counts what it must drop."""
        if not any(s.status() == "active" for s in self.store.all(tenant)):
            return
        try:
            with self._idle:
                self._busy += 1
            self._queue.put_nowait((tenant, changes))
        except queue.Full:
            with self._idle:
                self._busy -= 1
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("notification queue full: %d changes not notified", self.dropped)

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            if self._client.is_closed:
                self._client = self._new_client()
            self._thread = threading.Thread(target=self._run, name="urbis-notifier", daemon=True)
            self._thread.start()

    def _new_client(self) -> httpx.Client:
        return guarded_client(self._guard, transport=self._transport, timeout=self.timeout)

    def stop(self) -> None:
        self._stop.set()
        with self._idle:
            self._busy += 1
        try:  # wake the worker now, not at its next timeout
            self._queue.put_nowait(("", ()))
        except queue.Full:
            with self._idle:
                self._busy -= 1
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 5)
            self._thread = None
        self.store.flush()
        self._client.close()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """True once every queued change is processed (throttled ones may still wait)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    # -- the worker -----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = self._next_due()
            try:
                first = self._queue.get(timeout=wait)
            except queue.Empty:
                self._send_due()
                continue
            batch = [first]
            while len(batch) < 256:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._collect(batch)
                self._send_due()
            except Exception:  # the notifier must outlive any bug in one change
                log.exception("notification processing failed")
            finally:
                with self._idle:
                    self._busy -= len(batch)
                    self._idle.notify_all()

    def _next_due(self) -> float:
        if not self._pending:
            return 0.5
        return max(0.0, min(0.5, min(p.due for p in self._pending.values()) - time.monotonic()))

    def _collect(self, batch: list[tuple[str, Sequence[Change]]]) -> None:
        now = datetime.now(UTC)
        scopes: dict[tuple[str, Caller], ReadScope | None] = {}
        for tenant, changes in batch:
            subs = [s for s in self.store.all(tenant) if s.status(now) == "active"]
            for sub in subs:
                wanted = self._filter(tenant, sub)
                if wanted is None:
                    continue
                if (tenant, sub.owner) not in scopes:
                    scopes[(tenant, sub.owner)] = self._scope(tenant, sub)
                scope = scopes[(tenant, sub.owner)]
                if scope is None:
                    continue
                for stored_old, stored_new, graph in changes:
                    # Matched and sent as the owner sees the entity: never what it may not read.
                    old = scope.seen(stored_old, graph) if stored_old is not None else None
                    new = scope.seen(stored_new, graph) if stored_new is not None else None
                    if (stored_new is not None and new is None) or (old is None and new is None):
                        continue
                    if not wanted.wants(old, new):
                        continue
                    pending = self._pending.get(sub.id)
                    if pending is None:
                        throttle = float(sub.body.get("throttling", 0))
                        due = self._last_sent.get(sub.id, -1e18) + throttle
                        pending = self._pending[sub.id] = _Pending(tenant, due=due)
                    if new is not None:
                        pending.entities[new["id"]] = new
                    elif old is not None:
                        pending.entities[old["id"]] = old["type"][0]

    def _scope(self, tenant: str, sub: Subscription) -> ReadScope | None:
        try:
            return ReadScope.decide(self.access, sub.owner, tenant)
        except NgsiLdError as error:  # the policy refused the owner (AccessDenied)
            log.warning("subscription %s not notified: %s", sub.id, error.detail)
            return None

    def _filter(self, tenant: str, sub: Subscription) -> Filter | None:
        key = (tenant, sub.id)
        cached = self._filters.get(key)
        if cached is not None and cached[0] == sub.modified_at:
            return cached[1]
        try:
            compiled = compile_filter(
                sub.body, self.resolve(sub.context), max_q_length=self.max_q_length
            )
        except NgsiLdError as error:  # e.g. its remote @context is gone
            log.warning("subscription %s cannot be evaluated: %s", sub.id, error.detail)
            self._record(tenant, sub.id, ok=False)
            return None
        self._filters[key] = (sub.modified_at, compiled)
        return compiled

    def _send_due(self) -> None:
        now = time.monotonic()
        for subscription_id in [k for k, p in self._pending.items() if p.due <= now]:
            pending = self._pending.pop(subscription_id)
            try:
                sub = self.store.get(pending.tenant, subscription_id)
            except ResourceNotFound:
                continue
            entities = list(pending.entities.items())
            for start in range(0, len(entities), self.max_entities):
                self._send(pending.tenant, sub, entities[start : start + self.max_entities])
            self._last_sent[subscription_id] = time.monotonic()

    def _send(self, tenant: str, sub: Subscription, entities: list[tuple[str, Doc | str]]) -> None:
        try:
            terms = self.resolve(sub.context)
            body, headers = notification_request(sub, terms, entities, tenant=tenant)
        except NgsiLdError as error:
            log.warning("notification for %s not rendered: %s", sub.id, error.detail)
            self._record(tenant, sub.id, ok=False)
            return
        endpoint = sub.body["notification"]["endpoint"]
        ok = False
        try:
            answer = self._client.post(endpoint["uri"], content=body, headers=headers)
            ok = answer.is_success
            if not ok:  # endpoints may carry credentials (user:password@, ?key=): redacted
                where = redact_url(endpoint["uri"])
                log.warning("notification to %s answered %d", where, answer.status_code)
        except httpx.HTTPError as error:
            where, why = redact_url(endpoint["uri"]), redact_in(str(error), endpoint["uri"])
            log.warning("notification to %s failed: %s", where, why)
        self._record(tenant, sub.id, ok=ok)

    def _record(self, tenant: str, subscription_id: str, *, ok: bool) -> None:
        with contextlib.suppress(ResourceNotFound):
            sub = self.store.get(tenant, subscription_id)
            stamp = now_iso()
            delivery = sub.delivery
            delivery.last_notification = stamp
            delivery.times_sent += 1
            if ok:
                delivery.last_success, delivery.status = stamp, "ok"
            else:
                delivery.last_failure, delivery.status = stamp, "failed"
                delivery.times_failed += 1


def notification_request(
    sub: Subscription,
    terms: Terms,
    entities: list[tuple[str, Doc | str]],
    *,
    tenant: str = "",
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one Notification (clause 5.3.1) in the subscription's format."""
    params = sub.body["notification"]
    endpoint = params["endpoint"]
    accept = endpoint.get("accept", JSON)
    attributes = params.get("attributes")
    writer = EntityWriter(
        terms,
        form=params.get("format", "normalized"),
        sys_attrs=bool(params.get("sysAttrs")),
        lang=sub.body.get("lang"),
    )
    wanted = {terms.expand(a) for a in attributes} if attributes else None
    deleted_at = now_iso()
    data: list[Doc] = []
    for entity_id, doc in entities:
        if isinstance(doc, str):  # deleted: id, type and when (clause 5.3.1 / 5.8.6 v1.8)
            data.append({"id": entity_id, "type": terms.compact(doc), "deletedAt": deleted_at})
        else:
            data.append(writer.entity(doc, attrs=wanted))
    context = sub.body.get("jsonldContext") or sub.context
    body: Doc = {
        "id": f"urn:ngsi-ld:Notification:{uuid.uuid4()}",
        "type": "Notification",
        "subscriptionId": sub.id,
        "notifiedAt": now_iso(),
        "data": data,
    }
    headers = {"Content-Type": accept}
    if accept == JSONLD:
        body["@context"] = context if context is not None else CORE_CONTEXT
    else:
        link = context if isinstance(context, str) else CORE_CONTEXT
        headers["Link"] = f'<{link}>; rel="{CONTEXT_REL}"; type="application/ld+json"'
    if tenant:
        headers["NGSILD-Tenant"] = tenant
    for item in endpoint.get("receiverInfo", []):
        headers[item["key"]] = item["value"]
    return orjson.dumps(body), headers
