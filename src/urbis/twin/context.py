"""JSON-LD @context handling for the NGSI-LD API without a JSON-LD processor per request.

* `TermMap`: the term <-> IRI mapping of one resolved @context (user contexts first, the NGSI-LD
  core context last), answering `expand`/`compact` with dict lookups.
* `ContextResolver`: turns the @context of a request (Link header URL, inline object, array)
  into a cached `TermMap`, fetching remote contexts with limits.
* `ContextStore`: the port through which the resolver finds hosted contexts and caches fetched
  ones; the NGSI-LD @context store behind `/ngsi-ld/v1/jsonldContexts` (clause 5.13) that
  implements it is ngsild/contexts.py.

Context processing follows JSON-LD 1.1 (term definitions, prefixes, `@vocab`, `@import`,
protection) as far as naming terms needs it; value coercions (`@type`, `@container`) and scoped
contexts do not change a term's IRI and are ignored. One deliberate difference: a term defined
as `null` is removed (its name falls back to `@vocab`) rather than silently dropping attributes.
"""

from __future__ import annotations

import builtins
import hashlib
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol
from urllib.parse import urljoin, urlsplit

import httpx
import orjson

from urbis.ontology.core_context import CORE_CONTEXT, is_core_context_url
from urbis.twin.errors import (
    BadRequestData,
    LdContextNotAvailable,
    ResourceNotFound,
)
from urbis.twin.outbound import OutboundGuard, fetch_failed, guarded_client

_KEYWORD_NAMES = (
    "@base @container @context @direction @graph @id @import @included @index @json @language "
    "@list @nest @none @prefix @propagate @protected @reverse @set @type @value @version @vocab"
)
KEYWORDS: Final = frozenset(_KEYWORD_NAMES.split())
_KEYWORD_FORM = re.compile(r"^@[A-Za-z]+$")
_ABSOLUTE_IRI = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*|_):\S*$")
_GEN_DELIMS = frozenset(":/?#[]@")
_MEMO_LIMIT = 10_000  # names outside the context memoised per TermMap (bounds hostile input)


# -- context processing ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Term:
    iri: str  # an absolute IRI, a blank node identifier or a keyword (for aliases)
    prefix: bool  # may be used as the prefix of a compact IRI (JSON-LD 1.1 prefix flag)


_Source = tuple[Mapping[str, Any] | None, str]  # a local context and where it came from


class _Processor:
    """The active context while local contexts are applied in order."""

    def __init__(self) -> None:
        self.terms: dict[str, _Term] = {}
        self.origin: dict[str, str] = {}
        self.protected: set[str] = set()
        self.vocab: str | None = None

    def apply(self, local: Mapping[str, Any] | None, source: str) -> None:
        if local is None:
            if self.protected:
                raise BadRequestData(
                    f"{source}: a null @context cannot clear the protected terms "
                    f"{sorted(self.protected)}; remove the null entry"
                )
            self.terms.clear()
            self.vocab = None
            return
        if "@version" in local and local["@version"] != 1.1:
            raise BadRequestData(f"{source}: @version must be 1.1, got {local['@version']!r}")
        protected = local.get("@protected", False)
        if not isinstance(protected, bool):
            raise BadRequestData(f"{source}: @protected must be true or false, got {protected!r}")
        if "@vocab" in local:
            self.vocab = self._vocab(local["@vocab"], source)
        definitions = _LocalDefinitions(self, local, source, protected, {})
        for term in local:
            if not isinstance(term, str):
                raise BadRequestData(f"{source}: term names must be strings, got {term!r}")
            if not term.startswith("@"):
                definitions.define(term)

    def apply_core(self, core: _Processor) -> None:
        """Applies the (pre-processed) core context last, refusing redefined core terms."""
        for term, definition in core.terms.items():
            mine = self.terms.get(term)
            if mine is not None and mine.iri != definition.iri:
                raise BadRequestData(
                    f"{self.origin[term]} redefines the NGSI-LD core term {term!r} as "
                    f"{mine.iri!r}, but the core context maps it to {definition.iri!r} and "
                    f"protects it: rename the term or map it to {definition.iri!r}"
                )
        self.terms.update(core.terms)
        self.vocab = core.vocab

    def _vocab(self, value: object, source: str) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise BadRequestData(f"{source}: @vocab must be an absolute IRI, got {value!r}")
        iri = self.expand(value)
        if iri is None or not _ABSOLUTE_IRI.match(iri):
            raise BadRequestData(f"{source}: @vocab must be an absolute IRI, got {value!r}")
        return iri

    def expand(self, value: str, local: _LocalDefinitions | None = None) -> str | None:
        """JSON-LD IRI expansion with vocab=true; `local` resolves forward references."""
        if value in KEYWORDS:
            return value
        if _KEYWORD_FORM.match(value):
            return None
        if local is not None:
            local.depend(value)
        term = self.terms.get(value)
        if term is not None:
            return term.iri
        colon = value.find(":")
        if colon > 0:
            prefix, suffix = value[:colon], value[colon + 1 :]
            if prefix == "_" or suffix.startswith("//"):
                return value
            if local is not None:
                local.depend(prefix)
            mapping = self.terms.get(prefix)
            if mapping is not None and mapping.prefix:
                return mapping.iri + suffix
            if _ABSOLUTE_IRI.match(value):
                return value
        if self.vocab is not None:
            return self.vocab + value
        return value


@dataclass(slots=True)
class _LocalDefinitions:
    """Creates the term definitions of one local context (JSON-LD 1.1 Create Term Definition)."""

    active: _Processor
    local: Mapping[str, Any]
    source: str
    protected_default: bool
    defined: dict[str, bool]

    def depend(self, term: str) -> None:
        if term in self.local and self.defined.get(term) is not True:
            self.define(term)

    def define(self, term: str) -> None:
        state = self.defined.get(term)
        if state is True:
            return
        if state is False:
            raise BadRequestData(f"{self.source}: the definition of term {term!r} is cyclic")
        self.defined[term] = False
        value = self.local[term]
        if value is None or (isinstance(value, Mapping) and value.get("@id", "") is None):
            self._check_protected(term, None)
            self.active.terms.pop(term, None)
            self.defined[term] = True
            return
        if isinstance(value, str):
            id_value: object = value
            prefix_flag: bool | None = None  # computed below for simple terms
            protected = self.protected_default
        elif isinstance(value, Mapping):
            self._check_expanded(term, value)
            id_value = value.get("@id")
            prefix_flag = bool(value.get("@prefix", False))
            protected = value.get("@protected", self.protected_default)
        else:
            raise BadRequestData(
                f"{self.source}: the definition of term {term!r} must be an IRI string, an "
                f"object or null, got {value!r}"
            )
        if id_value is not None and id_value != term:
            iri = self._iri_from_id(term, id_value)
            if iri is None:  # a keyword-like @id: JSON-LD ignores such terms
                self.defined[term] = True
                return
            if prefix_flag is None:
                prefix_flag = (
                    ":" not in term
                    and "/" not in term
                    and (iri[-1:] in _GEN_DELIMS or iri.startswith("_:"))
                )
        else:
            iri = self._iri_from_term(term)
        self._check_protected(term, iri)
        self.active.terms[term] = _Term(iri, bool(prefix_flag))
        self.active.origin[term] = self.source
        if protected:
            self.active.protected.add(term)
        self.defined[term] = True

    def _iri_from_id(self, term: str, id_value: object) -> str | None:
        if not isinstance(id_value, str):
            raise BadRequestData(
                f"{self.source}: the @id of term {term!r} must be a string, got {id_value!r}"
            )
        if id_value in KEYWORDS:
            if id_value == "@context":
                raise BadRequestData(f"{self.source}: term {term!r} cannot alias @context")
            return id_value
        if _KEYWORD_FORM.match(id_value):
            return None
        iri = self.active.expand(id_value, self)
        if iri is None or not _ABSOLUTE_IRI.match(iri):
            raise BadRequestData(
                f"{self.source}: term {term!r} maps to {id_value!r}, which is not an IRI: use "
                f"an absolute IRI (e.g. 'https://example.org/{term}'), a compact IRI whose "
                "prefix this @context defines, or set @vocab"
            )
        colon = term.find(":")
        if (0 < colon < len(term) - 1) or "/" in term:
            self.defined[term] = True
            if self.active.expand(term, self) != iri:
                raise BadRequestData(
                    f"{self.source}: term {term!r} has the form of an IRI but maps to "
                    f"{iri!r}; a term that looks like an IRI must map to itself"
                )
        return iri

    def _iri_from_term(self, term: str) -> str:
        colon = term.find(":")
        if colon > 0:
            prefix, suffix = term[:colon], term[colon + 1 :]
            self.depend(prefix)
            mapping = self.active.terms.get(prefix)
            return mapping.iri + suffix if mapping is not None else term
        if "/" in term:
            raise BadRequestData(
                f"{self.source}: term {term!r} is a relative IRI; give it an absolute @id"
            )
        if self.active.vocab is None:
            raise BadRequestData(
                f"{self.source}: term {term!r} has no @id and no @vocab is in effect: map it "
                f"to an absolute IRI (e.g. 'https://example.org/{term}') or set @vocab"
            )
        return self.active.vocab + term

    def _check_expanded(self, term: str, value: Mapping[str, Any]) -> None:
        def bad(what: str) -> BadRequestData:
            return BadRequestData(f"{self.source}: term {term!r}: {what}, got {value!r}")

        if "@reverse" in value:
            raise bad("reverse properties (@reverse) are not supported by NGSI-LD")
        if "@type" in value and not isinstance(value["@type"], str | None):
            raise bad("@type must be a string")
        container = value.get("@container")
        if container is not None and not (
            isinstance(container, str)
            or (isinstance(container, list) and all(isinstance(c, str) for c in container))
        ):
            raise bad("@container must be a string or an array of strings")
        for flag in ("@prefix", "@protected"):
            if flag in value and not isinstance(value[flag], bool):
                raise bad(f"{flag} must be true or false")

    def _check_protected(self, term: str, iri: str | None) -> None:
        if term not in self.active.protected:
            return
        previous = self.active.terms.get(term)
        if previous is None or previous.iri != iri:
            raise BadRequestData(
                f"{self.source} redefines the protected term {term!r} (defined by "
                f"{self.active.origin.get(term, 'an earlier @context')}) as {iri!r}; "
                f"keep {previous.iri if previous else None!r} or rename the term"
            )


def _process(sources: Iterable[_Source], core: _Processor | None) -> _Processor:
    processor = _Processor()
    for local, source in sources:
        processor.apply(local, source)
    if core is not None:
        processor.apply_core(core)
    return processor


_CORE: Final = _process([(CORE_CONTEXT, "the NGSI-LD core @context")], None)


# -- term maps ---------------------------------------------------------------------------------


class TermMap:
    """Expansion and compaction of attribute names, type names and vocab values.

    Immutable; equal (and hashing equal) to any other TermMap with the same definitions, so it
    can key caches. Lookups are dict hits: defined terms and their inverse are precomputed,
    other names are computed once and memoised.
    """

    __slots__ = ("_compacted", "_expanded", "_prefixes", "_terms", "_vocab", "key")

    def __init__(self, terms: Mapping[str, _Term], vocab: str) -> None:
        self._terms = dict(terms)
        self._vocab = vocab
        self._expanded = {term: t.iri for term, t in self._terms.items()}
        inverse: dict[str, str] = {}
        for term, t in self._terms.items():  # JSON-LD term selection: shortest, then least
            best = inverse.get(t.iri)
            if best is None or (len(term), term) < (len(best), best):
                inverse[t.iri] = term
        self._compacted = inverse
        self._prefixes = [(term, t.iri) for term, t in self._terms.items() if t.prefix]
        digest = hashlib.sha256(
            orjson.dumps([vocab, sorted((k, t.iri, t.prefix) for k, t in self._terms.items())])
        )
        self.key: Final = digest.hexdigest()

    @classmethod
    def from_contexts(cls, contexts: Sequence[Mapping[str, Any] | None] = ()) -> TermMap:
        """The map of these local contexts (in order) with the core context applied last."""
        return cls._build([(ctx, f"@context[{i}]") for i, ctx in enumerate(contexts)])

    @classmethod
    def core(cls) -> TermMap:
        return _CORE_MAP

    @classmethod
    def _build(cls, sources: Iterable[_Source]) -> TermMap:
        processor = _process(sources, _CORE)
        assert processor.vocab is not None  # the core context sets it
        return cls(processor.terms, processor.vocab)

    def expand(self, term: str) -> str:
        """Attribute or entity type name -> IRI (defined term, compact IRI, IRI or @vocab)."""
        iri = self._expanded.get(term)
        if iri is None:
            iri = self._expand_name(term)
            if len(self._expanded) < _MEMO_LIMIT:
                self._expanded[term] = iri
        return iri

    def compact(self, iri: str) -> str:
        """IRI -> the shortest defined term, else a vocab-relative name, else a compact IRI."""
        name = self._compacted.get(iri)
        if name is None:
            name = self._compact_iri(iri)
            if len(self._compacted) < _MEMO_LIMIT:
                self._compacted[iri] = name
        return name

    def expand_vocab(self, value: str) -> str:
        """A VocabProperty value (`"@type": "@vocab"` in the core context) -> IRI."""
        return self.expand(value)

    def compact_vocab(self, value: str) -> str:
        """A VocabProperty IRI -> its short form, as for names."""
        return self.compact(value)

    def _expand_name(self, name: str) -> str:
        if name in KEYWORDS:
            return name
        colon = name.find(":")
        if colon > 0:
            prefix, suffix = name[:colon], name[colon + 1 :]
            if prefix == "_" or suffix.startswith("//"):
                return name
            mapping = self._terms.get(prefix)
            if mapping is not None and mapping.prefix:
                return mapping.iri + suffix
            if _ABSOLUTE_IRI.match(name):
                return name
        return self._vocab + name

    def _compact_iri(self, iri: str) -> str:
        # JSON-LD IRI compaction order: term, @vocab suffix, compact IRI. Every candidate must
        # expand back to `iri`, so compaction never produces a name that means something else.
        vocab = self._vocab
        if iri.startswith(vocab) and len(iri) > len(vocab):
            suffix = iri[len(vocab) :]
            if suffix not in self._terms and self._expand_name(suffix) == iri:
                return suffix
        best: str | None = None
        for term, prefix_iri in self._prefixes:
            if len(iri) > len(prefix_iri) and iri.startswith(prefix_iri):
                candidate = f"{term}:{iri[len(prefix_iri) :]}"
                if (best is None or (len(candidate), candidate) < (len(best), best)) and (
                    self.expand(candidate) == iri
                ):
                    best = candidate
        return best if best is not None else iri

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TermMap) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"<TermMap {len(self._terms)} terms {self.key[:12]}>"


_CORE_MAP: Final = TermMap._build([])


# -- where hosted and fetched @contexts are kept --------------------------------------------


class ContextStore(Protocol):
    """What the resolver needs of the broker's @context store (ngsild/contexts.py hosts the
    NGSI-LD one, clause 5.13): hosted contexts by URL, fetched ones cached, uses counted.
    `generation` changes when a context is deleted, so term maps built on it are dropped."""

    generation: int

    def get(self, local_id: str) -> dict[str, Any]: ...

    def hosted_for_url(self, url: str) -> tuple[Any, str] | None: ...

    def cached(self, url: str) -> tuple[Any, str, float] | None: ...

    def store_cached(self, url: str, context: Any, ttl: float) -> tuple[str, float]: ...

    def touch(self, local_ids: Iterable[str]) -> None: ...


class TransientContexts:
    """A resolver's store when none is given (tools, tests): hosts nothing and keeps fetched
    contexts only in the resolver's own term-map cache."""

    generation = 0

    def get(self, local_id: str) -> dict[str, Any]:
        raise ResourceNotFound(f"no @context with id {local_id!r} is stored here")

    def hosted_for_url(self, url: str) -> tuple[Any, str] | None:
        return None

    def cached(self, url: str) -> tuple[Any, str, float] | None:
        return None

    def store_cached(self, url: str, context: Any, ttl: float) -> tuple[str, float]:
        return hashlib.sha256(url.encode()).hexdigest()[:32], time.time() + ttl

    def touch(self, local_ids: Iterable[str]) -> None:
        return None


def inline_sources(value: Any, source: str) -> builtins.list[_Source]:
    """Flattens an @context value that references no remote context."""
    if isinstance(value, list):
        out: builtins.list[_Source] = []
        for i, item in enumerate(value):
            out.extend(inline_sources(item, f"{source}[{i}]"))
        return out
    return [(value, source)]


# -- resolution ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Resolved:
    sources: builtins.list[_Source] = field(default_factory=list)
    used: set[str] = field(default_factory=set)  # registry ids the term map depends on
    expires: float = float("inf")


@dataclass(frozen=True, slots=True)
class _CachedMap:
    terms: TermMap
    used: tuple[str, ...]
    expires: float
    generation: int


class ContextResolver:
    """Resolves request @contexts to cached `TermMap`s; safe to share between threads."""

    def __init__(
        self,
        *,
        fetch_timeout: float = 5.0,
        max_context_bytes: int = 1_000_000,
        cache_ttl: float = 3600,
        allow_remote: bool = True,
        registry: ContextStore | None = None,
        transport: httpx.BaseTransport | None = None,
        max_depth: int = 5,
        max_term_maps: int = 1024,
        guard: OutboundGuard | None = None,
    ) -> None:
        """`guard`: which addresses may be fetched (default: public ones only)."""
        self.fetch_timeout = fetch_timeout
        self.max_context_bytes = max_context_bytes
        self.cache_ttl = cache_ttl
        self.allow_remote = allow_remote
        self.registry: ContextStore = registry if registry is not None else TransientContexts()
        self.max_depth = max_depth
        self.max_term_maps = max_term_maps
        self._client = guarded_client(
            guard or OutboundGuard(),
            transport=transport,
            timeout=fetch_timeout,
            follow_redirects=True,  # each hop goes through the guard again
            max_redirects=3,
            headers={
                "Accept": "application/ld+json, application/json;q=0.9",
                "Accept-Encoding": "identity",  # so max_context_bytes bounds what we decode
            },
        )
        self._maps: OrderedDict[Hashable, _CachedMap] = OrderedDict()
        self._lock = threading.Lock()

    def cached(self, context: object) -> TermMap | None:
        """The term map if it is known already (no I/O, so callable from an event loop)."""
        if context is None:
            return _CORE_MAP
        return self._hit(self._key(context))

    def resolve(self, context: object) -> TermMap:
        """The term map of a request's @context (None: the core context only)."""
        if context is None:
            return _CORE_MAP
        key = self._key(context)
        hit = self._hit(key)
        if hit is not None:
            return hit
        generation = self.registry.generation
        resolved = _Resolved()
        self._collect(context, "the @context", None, (), resolved)
        terms = TermMap._build(resolved.sources)
        self.registry.touch(resolved.used)
        entry = _CachedMap(terms, tuple(resolved.used), resolved.expires, generation)
        with self._lock:
            self._maps[key] = entry
            while len(self._maps) > self.max_term_maps:
                self._maps.popitem(last=False)
        return terms

    def close(self) -> None:
        self._client.close()

    @staticmethod
    def _key(context: object) -> Hashable:
        if isinstance(context, str):
            return context
        try:
            return orjson.dumps(context, option=orjson.OPT_SORT_KEYS)
        except TypeError as exc:
            raise BadRequestData(f"the @context is not valid JSON: {exc}") from None

    def _hit(self, key: Hashable) -> TermMap | None:
        with self._lock:
            hit = self._maps.get(key)
            if hit is None:
                return None
            if hit.expires <= time.time() or hit.generation != self.registry.generation:
                del self._maps[key]
                return None
            self._maps.move_to_end(key)
        if hit.used:
            self.registry.touch(hit.used)
        return hit.terms

    def _collect(
        self, value: object, source: str, base: str | None, chain: tuple[str, ...], out: _Resolved
    ) -> None:
        if value is None:
            out.sources.append((None, source))
        elif isinstance(value, str):
            self._collect_url(value, source, base, chain, out)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                self._collect(item, f"{source}[{i}]", base, chain, out)
        elif isinstance(value, dict):
            if "@import" in value:
                value = self._imported(value, source, base, chain, out)
            out.sources.append((value, source))
        else:
            raise BadRequestData(
                f"{source} must be a URL, an object, null or an array of these, got {value!r}"
            )

    def _collect_url(
        self, url: str, source: str, base: str | None, chain: tuple[str, ...], out: _Resolved
    ) -> None:
        absolute = self._absolute(url, source, base)
        if is_core_context_url(absolute):
            return  # the core context is always applied, last
        context = self._load(absolute, source, chain, out)
        self._collect(context, f"the @context at {absolute}", absolute, (*chain, absolute), out)

    def _imported(
        self,
        value: dict[str, Any],
        source: str,
        base: str | None,
        chain: tuple[str, ...],
        out: _Resolved,
    ) -> dict[str, Any]:
        """JSON-LD 1.1 @import: the imported context's terms under the importing context's."""
        url = value["@import"]
        if not isinstance(url, str):
            raise BadRequestData(f"{source}: @import must be a URL, got {url!r}")
        absolute = self._absolute(url, source, base)
        if is_core_context_url(absolute):
            imported: object = CORE_CONTEXT
        else:
            imported = self._load(absolute, source, chain, out)
        if not isinstance(imported, dict) or "@import" in imported:
            raise BadRequestData(
                f"{source}: @import {absolute} must name a single context object without "
                "its own @import"
            )
        return {**imported, **{k: v for k, v in value.items() if k != "@import"}}

    @staticmethod
    def _absolute(url: str, source: str, base: str | None) -> str:
        absolute = urljoin(base, url) if base else url
        if urlsplit(absolute).scheme not in ("http", "https"):
            raise BadRequestData(f"{source}: @context URL {url!r} is not an absolute http(s) URL")
        return absolute

    def _load(self, url: str, source: str, chain: tuple[str, ...], out: _Resolved) -> object:
        if url in chain:
            raise BadRequestData(
                f"{source}: the remote @contexts include each other in a cycle: "
                f"{' -> '.join((*chain, url))}"
            )
        if len(chain) >= self.max_depth:
            raise BadRequestData(
                f"{source}: remote @contexts nest more than {self.max_depth} levels deep: "
                f"{' -> '.join((*chain, url))}"
            )
        hosted = self.registry.hosted_for_url(url)
        if hosted is not None:
            context, local_id = hosted
            out.used.add(local_id)
            return context
        cached = self.registry.cached(url)
        if cached is None:
            context = self._fetch(url)
            local_id, expires = self.registry.store_cached(url, context, self.cache_ttl)
        else:
            context, local_id, expires = cached
        out.used.add(local_id)
        out.expires = min(out.expires, expires)
        return context

    def _fetch(self, url: str) -> object:
        if not self.allow_remote:
            raise LdContextNotAvailable(
                f"@context {url} is remote and this broker does not fetch remote contexts: "
                "send it inline or host it with POST /ngsi-ld/v1/jsonldContexts"
            )
        limit = self.max_context_bytes
        deadline = time.monotonic() + self.fetch_timeout
        body = bytearray()
        try:
            with self._client.stream("GET", url) as response:
                if response.status_code != 200:
                    why = f"HTTP {response.status_code}"
                    raise LdContextNotAvailable(
                        f"cannot load @context {url}: {fetch_failed('@context', url, why)}"
                    )
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > limit:
                    raise LdContextNotAvailable(
                        f"cannot load @context {url}: it is {declared} bytes, more than the "
                        f"{limit} bytes allowed"
                    )
                for chunk in response.iter_bytes():  # decoded: the limit holds after gzip
                    body += chunk
                    if len(body) > limit:
                        raise LdContextNotAvailable(
                            f"cannot load @context {url}: it is larger than the {limit} bytes "
                            "allowed"
                        )
                    if time.monotonic() > deadline:
                        raise httpx.ReadTimeout("total time exceeded")
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            # One detail for refused, closed, filtered (timeout) and bad answers: no port scan.
            raise LdContextNotAvailable(
                f"cannot load @context {url}: {fetch_failed('@context', url, exc)}"
            ) from None
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise LdContextNotAvailable(
                f"cannot use @context {url}: the document is not JSON ({exc})"
            ) from None
        if not isinstance(doc, dict) or "@context" not in doc:
            raise LdContextNotAvailable(
                f'cannot use @context {url}: the document has no top-level "@context" member'
            )
        context = doc["@context"]
        if not isinstance(context, dict | list | str):
            raise LdContextNotAvailable(
                f'cannot use @context {url}: its "@context" is neither an object, an array '
                "nor a URL"
            )
        return context
