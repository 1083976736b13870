"""The broker's @context store (NGSI-LD clause 5.13, `/ngsi-ld/v1/jsonldContexts`).

Hosted contexts (POSTed, or packaged with the ontology), contexts created implicitly, and the
remote ones the resolver fetched (cached, with an expiry): what the resolver
(twin/context.py) reads through its `ContextStore` port and what the contexts routes serve.
Hosted and implicit contexts persist in the state store (twin/state).
"""

from __future__ import annotations

import builtins
import hashlib
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import orjson

from urbis import ontology
from urbis.twin.context import TermMap, inline_sources
from urbis.twin.errors import BadRequestData, OperationNotSupported, ResourceNotFound
from urbis.twin.state import StateStore, StateTransaction, memory_state_store

HOSTED, CACHED, IMPLICIT = "Hosted", "Cached", "ImplicitlyCreated"
KINDS: Final = (HOSTED, CACHED, IMPLICIT)
CONTEXTS: Final = "contexts"  # the state store's collection of hosted and implicit contexts
CONTEXTS_PATH: Final = "/ngsi-ld/v1/jsonldContexts"
PACKAGED_CONTEXTS: Final = Path(ontology.__file__).resolve().parent / "contexts"
_HOSTED_URL = re.compile(re.escape(CONTEXTS_PATH) + r"/([^/?#]+)$")


@dataclass(slots=True)
class _Entry:
    local_id: str
    kind: str
    context: Any  # the value of the "@context" member
    created_at: float
    url: str | None = None  # the original URL of a Cached context
    expires_at: float | None = None  # Cached only
    deletable: bool = True
    hits: int = 0
    last_usage: float | None = None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def check_context_value(value: object, source: str) -> bool:
    """Checks the shape of an @context value; True if it references remote contexts."""
    if value is None:
        return False
    if isinstance(value, str):
        return True
    if isinstance(value, list):
        remote = False
        for i, item in enumerate(value):
            remote = check_context_value(item, f"{source}[{i}]") or remote
        return remote
    if isinstance(value, dict):
        return isinstance(value.get("@import"), str)
    raise BadRequestData(
        f"{source} must be an object, a URL, null or an array of these, got {value!r}"
    )


def _stored_entry(local_id: str, doc: Mapping[str, Any], where: str) -> _Entry:
    kind, created = doc.get("kind"), doc.get("createdAt")
    if (
        kind not in (HOSTED, IMPLICIT)
        or not isinstance(created, int | float)
        or "@context" not in doc
    ):
        raise ValueError(f"{where} is not an @context stored by this registry")
    return _Entry(local_id, str(kind), doc["@context"], float(created))


def import_legacy_contexts(tx: StateTransaction, directory: Path) -> int:
    """The registry's files before the state store: `<data dir>/contexts/<id>.json`."""
    count = 0
    for path in sorted(directory.glob("*.json")):
        doc = ContextRegistry._read(path)
        _stored_entry(path.stem, doc, str(path))  # the same checks as a start made on them
        tx.put(CONTEXTS, "", path.stem, doc)
        count += 1
    return count


class ContextRegistry:
    """The broker's @context store: hosted (POSTed or packaged), cached (fetched) and implicit.

    Hosted and implicitly created contexts persist in the state store (collection
    `contexts`; in memory when none is given). Packaged contexts (`ontology/contexts/*.jsonld`)
    are hosted under their file stem and cannot be deleted.
    """

    def __init__(
        self,
        state: StateStore | None = None,
        *,
        packaged: Path | None = PACKAGED_CONTEXTS,
        max_cached: int = 512,
    ) -> None:
        self.state = state if state is not None else memory_state_store()
        self.max_cached = max_cached
        self.generation = 0  # bumped on deletion, so resolvers drop the term maps built on it
        self._entries: dict[str, _Entry] = {}
        self._cached: OrderedDict[str, str] = OrderedDict()  # original URL -> local id (LRU)
        self._lock = threading.RLock()
        if packaged is not None and packaged.is_dir():
            for path in sorted(packaged.glob("*.jsonld")):
                context = self._read(path)["@context"]
                self._entries[path.stem] = _Entry(
                    path.stem, HOSTED, context, path.stat().st_mtime, deletable=False
                )
        for local_id, doc in self.state.list(CONTEXTS, ""):
            self._entries[local_id] = _stored_entry(local_id, doc, f"{CONTEXTS}/{local_id}")

    # -- the endpoints --------------------------------------------------------------------

    def add(self, context_body: object) -> str:
        """Add @context (5.13.2): stores `{"@context": ...}` as Hosted, returns its id."""
        context = self._validated(context_body)
        local_id = uuid.uuid4().hex
        self._put(_Entry(local_id, HOSTED, context, time.time()))
        return local_id

    def add_implicit(self, context: object) -> str:
        """Stores an inline @context a request carried (kind ImplicitlyCreated), by content."""
        checked = self._validated({"@context": context})
        canonical = orjson.dumps(checked, option=orjson.OPT_SORT_KEYS)
        local_id = hashlib.sha256(canonical).hexdigest()[:32]
        with self._lock:
            if local_id not in self._entries:
                self._put(_Entry(local_id, IMPLICIT, checked, time.time()))
        return local_id

    def get(self, local_id: str) -> dict[str, Any]:
        """Serve @context (5.13.4): the document of a Hosted or ImplicitlyCreated context."""
        with self._lock:
            entry = self._find(local_id)
            if entry.kind == CACHED:
                raise OperationNotSupported(
                    f"@context {local_id!r} is a cached copy of {entry.url}; fetch it from "
                    "there, or ask for its metadata with details=true"
                )
            self._hit(entry, time.time())
            return {"@context": entry.context}

    def details(self, local_id: str, base_url: str = "") -> dict[str, Any]:
        """The metadata of one stored @context (5.13.4 with details=true)."""
        with self._lock:
            return self._details(self._find(local_id), base_url)

    def delete(self, local_id: str) -> None:
        """Delete @context (5.13.5); a Cached context may also be named by its original URL."""
        with self._lock:
            entry = self._find(local_id)
            if not entry.deletable:
                raise OperationNotSupported(
                    f"@context {local_id!r} is packaged with this broker and cannot be deleted"
                )
            del self._entries[entry.local_id]
            if entry.url is not None:
                self._cached.pop(entry.url, None)
            if entry.kind != CACHED:
                self.state.delete(CONTEXTS, "", entry.local_id)
            self.generation += 1

    def list(
        self, details: bool = False, kind: str | None = None, base_url: str = ""
    ) -> builtins.list[Any]:
        """List @contexts (5.13.3): URLs, or metadata objects if `details`."""
        if kind is not None and kind not in KINDS:
            raise BadRequestData(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        now = time.time()
        with self._lock:
            entries = [
                e
                for e in self._entries.values()
                if (kind is None or e.kind == kind) and not self._expired(e, now)
            ]
            if details:
                return [self._details(e, base_url) for e in entries]
            return [self._url(e, base_url) for e in entries]

    # -- for the resolver -----------------------------------------------------------------

    def hosted_for_url(self, url: str) -> tuple[Any, str] | None:
        """The @context behind a `.../ngsi-ld/v1/jsonldContexts/{id}` URL this store hosts."""
        match = _HOSTED_URL.search(urlsplit(url).path)
        if match is None:
            return None
        with self._lock:
            entry = self._entries.get(match.group(1))
            if entry is None or entry.kind == CACHED:
                return None
            return entry.context, entry.local_id

    def cached(self, url: str) -> tuple[Any, str, float] | None:
        """A fetched @context that has not expired: (context, local id, expiry time)."""
        with self._lock:
            local_id = self._cached.get(url)
            entry = self._entries.get(local_id) if local_id is not None else None
            if entry is None or entry.expires_at is None or self._expired(entry, time.time()):
                return None
            self._cached.move_to_end(url)
            return entry.context, entry.local_id, entry.expires_at

    def store_cached(self, url: str, context: Any, ttl: float) -> tuple[str, float]:
        """Keeps a fetched @context for `ttl` seconds; returns (local id, expiry time)."""
        now = time.time()
        local_id = hashlib.sha256(url.encode()).hexdigest()[:32]
        with self._lock:
            self._entries[local_id] = _Entry(
                local_id, CACHED, context, now, url=url, expires_at=now + ttl
            )
            self._cached[url] = local_id
            self._cached.move_to_end(url)
            while len(self._cached) > self.max_cached:
                _, old = self._cached.popitem(last=False)
                self._entries.pop(old, None)
        return local_id, now + ttl

    def touch(self, local_ids: Iterable[str]) -> None:
        """Counts one use of each context (numberOfHits, lastUsage)."""
        now = time.time()
        with self._lock:
            for local_id in local_ids:
                entry = self._entries.get(local_id)
                if entry is not None:
                    self._hit(entry, now)

    # -- internals ------------------------------------------------------------------------

    @staticmethod
    def _hit(entry: _Entry, now: float) -> None:
        entry.hits += 1
        entry.last_usage = now

    @staticmethod
    def _expired(entry: _Entry, now: float) -> bool:
        return entry.expires_at is not None and entry.expires_at <= now

    def _find(self, local_id: str) -> _Entry:
        entry = self._entries.get(local_id)
        if entry is None and local_id in self._cached:
            entry = self._entries.get(self._cached[local_id])
        if entry is None or self._expired(entry, time.time()):
            raise ResourceNotFound(f"no @context with id {local_id!r} is stored here")
        return entry

    @staticmethod
    def _url(entry: _Entry, base_url: str) -> str:
        if entry.url is not None:
            return entry.url
        return f"{base_url.rstrip('/')}{CONTEXTS_PATH}/{entry.local_id}"

    def _details(self, entry: _Entry, base_url: str) -> dict[str, Any]:
        info: dict[str, Any] = {
            "URL": self._url(entry, base_url),
            "localId": entry.local_id,
            "kind": entry.kind,
            "createdAt": _iso(entry.created_at),
            "numberOfHits": entry.hits,
        }
        if entry.last_usage is not None:
            info["lastUsage"] = _iso(entry.last_usage)
        if entry.expires_at is not None:
            info["expiresAt"] = _iso(entry.expires_at)
        return info

    def _put(self, entry: _Entry) -> None:
        with self._lock:  # durable first: a refused write leaves the registry as it was
            doc = {"kind": entry.kind, "createdAt": entry.created_at, "@context": entry.context}
            self.state.put(CONTEXTS, "", entry.local_id, doc)
            self._entries[entry.local_id] = entry

    @staticmethod
    def _validated(body: object) -> Any:
        if not isinstance(body, dict) or "@context" not in body:
            raise BadRequestData('the body must be a JSON object with an "@context" member')
        context = body["@context"]
        if not isinstance(context, dict | list):
            raise BadRequestData(
                f'"@context" must be a JSON object or an array, got {type(context).__name__}'
            )
        if not check_context_value(context, '"@context"'):
            # Self-contained: check it completely (term IRIs, core terms) now.
            TermMap._build(inline_sources(context, '"@context"'))
        return context

    @staticmethod
    def _read(path: Path) -> dict[str, Any]:
        try:
            doc = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ValueError(f"cannot read the @context file {path}: {exc}") from exc
        if not isinstance(doc, dict) or "@context" not in doc:
            raise ValueError(f'{path} is not a JSON-LD context (no "@context" member)')
        return doc
