"""@context handling: the core term map, context processing, remote fetching, the @context store.

The reference files under /work/shared/reference are read (never copied) to check the project's
own core context and the Smart Data Models contexts against pyld, a full JSON-LD processor.
"""

from __future__ import annotations

import json
import re
import string
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from urbis.ngsild.contexts import (
    CONTEXTS,
    PACKAGED_CONTEXTS,
    ContextRegistry,
    import_legacy_contexts,
)
from urbis.ontology.core_context import (
    CORE_CONTEXT,
    DEFAULT_CORE_CONTEXT_URL,
    DEFAULT_VOCAB,
    NGSI_LD,
    core_context_document,
    is_core_context_url,
)
from urbis.twin.context import ContextResolver, TermMap
from urbis.twin.errors import (
    BadRequestData,
    LdContextNotAvailable,
    OperationNotSupported,
    ResourceNotFound,
)
from urbis.twin.outbound import FETCH_FAILED, OutboundGuard
from urbis.twin.state import import_once, open_state_store

LOOPBACK = OutboundGuard(allow_loopback=True)  # as `urbis serve --open`
REFERENCE = Path("/work/shared/reference")
NGSI_REF = REFERENCE / "ngsi-ld"
SDM_REF = REFERENCE / "smart-data-models"
CORE_URLS = {
    "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld": "v1.8",
    "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.9.jsonld": "v1.9",
}
# v1.8 maps these to themselves, i.e. into the default context; v1.9 (and we) use ngsi-ld:.
V18_ERRATA = {"attributeCount", "attributeDetails"}
SDM_DOMAINS = sorted(p.parent.name for p in SDM_REF.glob("*/context.jsonld"))

needs_reference = pytest.mark.skipif(
    not NGSI_REF.is_dir(), reason="/work/shared/reference is absent: nothing to compare with"
)


def _read(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _pyld_context(contexts: list[Any]) -> tuple[Any, Any]:
    """A pyld processor and its active context for `contexts`, offline."""
    jsonld = pytest.importorskip("pyld.jsonld")
    files = {
        **{url: NGSI_REF / f"ngsi-ld-core-context-{v}.jsonld" for url, v in CORE_URLS.items()},
        "https://w3id.org/security/data-integrity/v2": NGSI_REF / "data-integrity-v2.jsonld",
    }

    def loader(url: str, options: object = None) -> dict[str, Any]:
        return {"contextUrl": None, "documentUrl": url, "document": _read(files[url])}

    processor = jsonld.JsonLdProcessor()
    options = {"documentLoader": loader, "processingMode": "json-ld-1.1", "base": ""}
    active = processor.process_context(processor._get_initial_context(options), contexts, options)
    return processor, active


def _sdm_context(domain: str) -> dict[str, Any]:
    context = _read(SDM_REF / domain / "context.jsonld")["@context"]
    assert isinstance(context, dict)
    return context


@pytest.fixture
def resolver() -> Iterator[ContextResolver]:
    # The test sites listen on loopback, which the outbound guard refuses unless told (--open).
    r = ContextResolver(registry=ContextRegistry(packaged=None), guard=LOOPBACK)
    yield r
    r.close()


# -- the core context --------------------------------------------------------------------------


def test_core_context_urls_are_recognised() -> None:
    for version in ("1.3", "1.4", "1.5", "1.6", "1.7", "1.8", "1.9"):
        url = f"https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v{version}.jsonld"
        assert is_core_context_url(url)
    assert is_core_context_url("https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld")
    assert is_core_context_url(DEFAULT_CORE_CONTEXT_URL)
    assert DEFAULT_CORE_CONTEXT_URL.endswith("-v1.8.jsonld")
    assert not is_core_context_url("https://uri.etsi.org/ngsi-ld/v1/other-context.jsonld")
    assert not is_core_context_url("https://evil.example/ngsi-ld/v1/ngsi-ld-core-context.jsonld")


def test_core_context_document_is_a_copy() -> None:
    doc = core_context_document()
    doc["@context"]["location"] = "changed"
    assert CORE_CONTEXT["location"] == "ngsi-ld:location"
    assert TermMap.core().expand("location") == NGSI_LD + "location"


@needs_reference
def test_core_terms_are_the_union_of_v18_and_v19() -> None:
    union: set[str] = set()
    for version in CORE_URLS.values():
        union |= set(_read(NGSI_REF / f"ngsi-ld-core-context-{version}.jsonld")["@context"])
    assert set(CORE_CONTEXT) == union


@needs_reference
@pytest.mark.parametrize("url", sorted(CORE_URLS))
def test_every_core_term_expands_as_in_the_reference(url: str) -> None:
    version = CORE_URLS[url]
    reference = _read(NGSI_REF / f"ngsi-ld-core-context-{version}.jsonld")["@context"]
    processor, active = _pyld_context([url])
    core = TermMap.core()
    terms = [t for t in reference if not t.startswith("@")]
    assert len(terms) > 170
    differing = {t for t in terms if processor._expand_iri(active, t, vocab=True) != core.expand(t)}
    assert differing == (V18_ERRATA if version == "v1.8" else set())
    for term in differing:
        assert core.expand(term) == NGSI_LD + term
    # names outside the core context fall back to the same @vocab
    for name in ("fillingLevel", "temperature", "x-y_z"):
        assert core.expand(name) == processor._expand_iri(active, name, vocab=True)


def test_core_expansion_and_compaction() -> None:
    core = TermMap.core()
    assert core.expand("type") == "@type" and core.compact("@type") == "type"
    assert core.expand("@context") == "@context"
    assert core.expand("id") == "@id" and core.compact("@id") == "id"
    assert core.expand("value") == NGSI_LD + "hasValue"
    assert core.compact(NGSI_LD + "hasValue") == "value"
    assert core.expand("Point") == "https://purl.org/geojson/vocab#Point"
    assert core.expand("ngsi-ld:foo") == NGSI_LD + "foo"
    assert core.compact(NGSI_LD + "foo") == "ngsi-ld:foo"
    assert core.expand("fillingLevel") == DEFAULT_VOCAB + "fillingLevel"
    assert core.compact(DEFAULT_VOCAB + "fillingLevel") == "fillingLevel"
    # compaction never yields a name that expands to something else
    assert core.compact(NGSI_LD + "//x") == NGSI_LD + "//x"  # not "ngsi-ld://x", an IRI
    # a default-context IRI whose suffix is a core term must not compact to that term
    assert core.compact(DEFAULT_VOCAB + "location") == "ngsi-ld:default-context/location"
    assert core.expand("https://example.org/x") == "https://example.org/x"
    assert core.compact("https://example.org/x") == "https://example.org/x"
    assert core.expand("urn:ngsi-ld:Thing:1") == "urn:ngsi-ld:Thing:1"
    assert core.expand("_:b0") == "_:b0"
    assert core.expand_vocab("Open") == DEFAULT_VOCAB + "Open"
    assert core.compact_vocab(DEFAULT_VOCAB + "Open") == "Open"


# -- Smart Data Models contexts against pyld ---------------------------------------------------


@needs_reference
@pytest.mark.parametrize("domain", SDM_DOMAINS)
def test_sdm_context_expands_like_pyld(domain: str, resolver: ContextResolver) -> None:
    context = _sdm_context(domain)
    processor, active = _pyld_context([context, DEFAULT_CORE_CONTEXT_URL])
    terms = resolver.resolve(context)
    names = [t for t in context if not t.startswith("@")]
    names += ["fillingLevel", "notInAnyContext", "ngsi-ld:x", "schema:x", "location", "value"]
    for name in names:
        assert terms.expand(name) == processor._expand_iri(active, name, vocab=True), name
    # Plain (uncoerced) terms compact as pyld does; coerced ones are chosen by name length,
    # which pyld only does when the value matches the coercion.
    plain = [
        t
        for t in names
        if isinstance(context.get(t, ""), str) and isinstance(CORE_CONTEXT.get(t, ""), str)
    ]
    for name in plain:
        iri = terms.expand(name)
        assert terms.compact(iri) == processor._compact_iri(active, iri, vocab=True), name


@needs_reference
def test_sdm_filling_level(resolver: ContextResolver) -> None:
    terms = resolver.resolve(_sdm_context("WasteManagement"))
    iri = "https://smartdatamodels.org/dataModel.WasteManagement/fillingLevel"
    assert terms.expand("fillingLevel") == iri
    assert terms.compact(iri) == "fillingLevel"
    # location is redefined with the full core IRI: accepted, and still the core IRI
    assert terms.expand("location") == NGSI_LD + "location"


@needs_reference
def test_several_sdm_contexts_together(resolver: ContextResolver) -> None:
    contexts = [_sdm_context(d) for d in SDM_DOMAINS]
    processor, active = _pyld_context([*contexts, DEFAULT_CORE_CONTEXT_URL])
    terms = resolver.resolve(contexts)
    for name in ("fillingLevel", "streetlightModel", "NO2", "occupancy", "unknownName"):
        assert terms.expand(name) == processor._expand_iri(active, name, vocab=True)


# -- context processing ------------------------------------------------------------------------

EX = "https://example.org/ns/"


def test_prefixes_and_terms_defined_through_other_terms() -> None:
    terms = TermMap.from_contexts(
        [
            {
                "alias": "speed",  # refers to a term defined later in the same context
                "speed": {"@id": "ex:speed", "@type": "https://example.org/ns/Speed"},
                "ex": EX,
                "hash": "https://example.org/h#",
                "noDelim": "https://example.org/nodelim",
                "expandedPrefix": {"@id": "https://example.org/exp/"},
                "flaggedPrefix": {"@id": "https://example.org/flag", "@prefix": True},
                "ex:direct": {"@type": "@id"},
            }
        ]
    )
    assert terms.expand("speed") == EX + "speed"
    assert terms.expand("alias") == EX + "speed"
    assert terms.compact(EX + "speed") == "alias"  # shortest term wins
    assert terms.expand("ex:other") == EX + "other"
    assert terms.compact(EX + "other") == "ex:other"
    assert terms.expand("ex:direct") == EX + "direct"
    assert terms.expand("hash:frag") == "https://example.org/h#frag"
    # simple terms whose IRI does not end in a gen-delim, and expanded definitions without
    # @prefix, are not prefixes (JSON-LD 1.1): the name stays an IRI of its own
    assert terms.expand("noDelim:x") == "noDelim:x"
    assert terms.expand("expandedPrefix:x") == "expandedPrefix:x"
    assert terms.expand("flaggedPrefix:x") == "https://example.org/flagx"


def test_term_selection_is_shortest_then_least() -> None:
    terms = TermMap.from_contexts([{"bb": EX + "p", "ab": EX + "p", "longer": EX + "p"}])
    assert terms.compact(EX + "p") == "ab"


def test_user_vocab_applies_to_term_definitions_only() -> None:
    terms = TermMap.from_contexts([{"@vocab": EX, "relative": "relative"}])
    assert terms.expand("relative") == EX + "relative"
    # the core context, applied last, sets the default-context @vocab for everything else
    assert terms.expand("undefined") == DEFAULT_VOCAB + "undefined"


def test_null_entries_and_null_terms() -> None:
    terms = TermMap.from_contexts([{"a": EX + "a", "b": EX + "b"}, None, {"b": EX + "b2"}])
    assert terms.expand("a") == DEFAULT_VOCAB + "a"
    assert terms.expand("b") == EX + "b2"
    removed = TermMap.from_contexts([{"a": EX + "a"}, {"a": None}])
    assert removed.expand("a") == DEFAULT_VOCAB + "a"


@pytest.mark.parametrize(
    ("context", "fragment"),
    [
        ({"a": "a"}, "'a'"),  # no @id, no @vocab: not an IRI
        ({"a": "b", "b": "a"}, "cyclic"),
        ({"a": 42}, "'a'"),
        ({"a": {"@id": 42}}, "'a'"),
        ({"a": {"@id": EX + "a", "@reverse": EX + "r"}}, "@reverse"),
        ({"a": {"@id": EX + "a", "@container": 3}}, "@container"),
        ({"a": {"@id": EX + "a", "@prefix": "yes"}}, "@prefix"),
        ({"@vocab": 5}, "@vocab"),
        ({"@version": 1.0}, "@version"),
        ({"a/b": EX + "x"}, "'a/b'"),
        ({"ex": EX, "ex:a": EX + "b"}, "'ex:a'"),
        ({"rel/path": {"@type": "@id"}}, "relative"),
    ],
)
def test_malformed_inline_contexts(context: dict[str, Any], fragment: str) -> None:
    with pytest.raises(BadRequestData) as err:
        TermMap.from_contexts([context])
    assert fragment in err.value.detail


def test_redefining_a_core_term_is_refused() -> None:
    with pytest.raises(BadRequestData) as err:
        TermMap.from_contexts([{"location": "http://example.org/myLocation"}])
    assert "'location'" in err.value.detail and "http://example.org/myLocation" in err.value.detail
    with pytest.raises(BadRequestData, match="ngsi-ld"):
        TermMap.from_contexts([{"ngsi-ld": "https://example.org/elsewhere/"}])
    # the same IRI in another spelling is accepted (Smart Data Models do this)
    same = TermMap.from_contexts(
        [{"location": NGSI_LD + "location", "bbox": {"@id": "https://purl.org/geojson/vocab#bbox"}}]
    )
    assert same.expand("location") == NGSI_LD + "location"


def test_user_protected_terms() -> None:
    with pytest.raises(BadRequestData, match="protected term 'a'"):
        TermMap.from_contexts([{"@protected": True, "a": EX + "a"}, {"a": EX + "other"}])
    with pytest.raises(BadRequestData, match="null"):
        TermMap.from_contexts([{"a": {"@id": EX + "a", "@protected": True}}, None])
    same = TermMap.from_contexts([{"@protected": True, "a": EX + "a"}, {"a": EX + "a"}])
    assert same.expand("a") == EX + "a"


def test_term_maps_compare_by_definitions() -> None:
    one = TermMap.from_contexts([{"a": EX + "a"}])
    assert one == TermMap.from_contexts([{"a": {"@id": EX + "a"}}])
    assert hash(one) == hash(TermMap.from_contexts([{"a": EX + "a"}]))
    assert one != TermMap.from_contexts([{"a": EX + "b"}])
    assert one != TermMap.core()
    assert TermMap.from_contexts([]) == TermMap.core()


def test_inline_contexts_through_the_resolver(resolver: ContextResolver) -> None:
    nested = [[{"a": EX + "a"}], None, [[{"b": EX + "b"}]], DEFAULT_CORE_CONTEXT_URL]
    terms = resolver.resolve(nested)
    assert terms.expand("a") == DEFAULT_VOCAB + "a"  # reset by the null entry
    assert terms.expand("b") == EX + "b"
    assert resolver.resolve(None) is TermMap.core()
    assert resolver.resolve(DEFAULT_CORE_CONTEXT_URL) == TermMap.core()
    with pytest.raises(BadRequestData, match="42"):
        resolver.resolve([{"a": EX + "a"}, 42])
    with pytest.raises(BadRequestData, match="absolute"):
        resolver.resolve("relative/context.jsonld")
    with pytest.raises(BadRequestData, match="absolute"):
        resolver.resolve("file:///etc/passwd")


def test_repeated_context_is_one_lookup(resolver: ContextResolver) -> None:
    context = {"a": EX + "a", "b": EX + "b"}
    first = resolver.resolve(context)
    assert resolver.resolve({"b": EX + "b", "a": EX + "a"}) is first  # canonical key


NAMES = st.text(alphabet=string.ascii_letters + string.digits + "_-:./#@", min_size=1, max_size=24)
IRIS = st.one_of(
    st.from_regex(r"https?://[a-z]{1,8}(\.[a-z]{2,3})?/[A-Za-z0-9_/#:.-]{0,24}", fullmatch=True),
    st.builds(lambda s: NGSI_LD + s, NAMES),
    st.builds(lambda s: DEFAULT_VOCAB + s, NAMES),
    st.builds(lambda s: EX + s, NAMES),
)
_ROUND_TRIP = TermMap.from_contexts(
    [{"ex": EX, "short": EX + "a", "ex2": {"@id": EX, "@prefix": True}, "x": "ex:x"}]
)


@settings(max_examples=200, deadline=None)
@given(NAMES)
def test_names_round_trip(name: str) -> None:
    for terms in (TermMap.core(), _ROUND_TRIP):
        iri = terms.expand(name)
        assert terms.expand(terms.compact(iri)) == iri


@settings(max_examples=200, deadline=None)
@given(IRIS)
def test_iris_round_trip(iri: str) -> None:
    for terms in (TermMap.core(), _ROUND_TRIP):
        assert terms.expand(terms.compact(iri)) == iri
        assert terms.expand_vocab(terms.compact_vocab(iri)) == iri


# -- remote contexts over loopback HTTP --------------------------------------------------------


@dataclass
class Route:
    body: bytes
    status: int = 200
    delay: float = 0.0
    content_length: bool = True
    trickle: float = 0.0  # seconds between 16-byte chunks


@dataclass
class Site:
    base: str
    routes: dict[str, Route] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)

    def serve(self, path: str, context: Any, **options: Any) -> str:
        self.routes[path] = Route(json.dumps({"@context": context}).encode(), **options)
        return self.base + path


@pytest.fixture
def site() -> Iterator[Site]:
    routes: dict[str, Route] = {}
    hits: Counter[str] = Counter()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits[self.path] += 1
            route = routes.get(self.path, Route(b"not found", status=404))
            try:
                time.sleep(route.delay)
                self.send_response(route.status)
                self.send_header("Content-Type", "application/ld+json")
                if route.content_length:
                    self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                if route.trickle:
                    for i in range(0, len(route.body), 16):
                        self.wfile.write(route.body[i : i + 16])
                        self.wfile.flush()
                        time.sleep(route.trickle)
                else:
                    self.wfile.write(route.body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up, as the test intends

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.block_on_close = False
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield Site(f"http://127.0.0.1:{server.server_address[1]}", routes, hits)
    server.shutdown()
    server.server_close()


def _resolver(**options: Any) -> ContextResolver:
    return ContextResolver(registry=ContextRegistry(packaged=None), guard=LOOPBACK, **options)


def test_remote_context_is_fetched_once(site: Site, resolver: ContextResolver) -> None:
    url = site.serve("/ctx.jsonld", {"speed": EX + "speed"})
    first = resolver.resolve(url)
    assert first.expand("speed") == EX + "speed"
    assert resolver.resolve(url) is first
    assert resolver.resolve([url, {"other": EX + "other"}]).expand("other") == EX + "other"
    assert site.hits["/ctx.jsonld"] == 1
    [info] = resolver.registry.list(details=True, kind="Cached")
    assert info["URL"] == url and info["kind"] == "Cached" and info["numberOfHits"] == 3
    assert "expiresAt" in info and "lastUsage" in info
    assert resolver.registry.list() == [url]


def test_remote_contexts_nest_and_resolve_relative_urls(site: Site) -> None:
    site.serve("/a/one.jsonld", ["two.jsonld", {"one": "ex:one"}])
    site.serve("/a/two.jsonld", {"ex": EX, "two": "ex:two"})
    resolver = _resolver()
    terms = resolver.resolve(site.base + "/a/one.jsonld")
    assert terms.expand("one") == EX + "one"
    assert terms.expand("two") == EX + "two"
    resolver.close()


def test_import(site: Site, resolver: ContextResolver) -> None:
    url = site.serve("/base.jsonld", {"ex": EX, "a": "ex:a", "b": "ex:b"})
    terms = resolver.resolve({"@import": url, "b": EX + "overridden"})
    assert terms.expand("a") == EX + "a"
    assert terms.expand("b") == EX + "overridden"


def test_cycle_is_detected(site: Site, resolver: ContextResolver) -> None:
    site.serve("/a.jsonld", ["/b.jsonld", {"a": EX + "a"}])
    site.serve("/b.jsonld", "/a.jsonld")
    with pytest.raises(BadRequestData, match="cycle") as err:
        resolver.resolve(site.base + "/a.jsonld")
    assert "/a.jsonld -> " in err.value.detail
    assert site.hits["/a.jsonld"] == 1


def test_nesting_depth_is_limited(site: Site) -> None:
    for i in range(4):
        site.serve(f"/n{i}.jsonld", f"/n{i + 1}.jsonld")
    site.serve("/n4.jsonld", {"deep": EX + "deep"})
    assert _resolver(max_depth=5).resolve(site.base + "/n0.jsonld").expand("deep") == EX + "deep"
    with pytest.raises(BadRequestData, match="4 levels"):
        _resolver(max_depth=4).resolve(site.base + "/n0.jsonld")


def test_http_error(site: Site, resolver: ContextResolver) -> None:
    with pytest.raises(LdContextNotAvailable) as err:
        resolver.resolve(site.base + "/missing.jsonld")
    # The same detail as for a closed port or a refused address (no port scanner): no "404".
    assert FETCH_FAILED in err.value.detail and "404" not in err.value.detail
    assert site.base + "/missing.jsonld" in err.value.detail
    assert err.value.status == 503


def test_unreachable_server(resolver: ContextResolver) -> None:
    with pytest.raises(LdContextNotAvailable, match=re.escape("http://127.0.0.1:9/")):
        resolver.resolve("http://127.0.0.1:9/ctx.jsonld")


def test_timeout(site: Site) -> None:
    slow = site.serve("/slow.jsonld", {"a": EX + "a"}, delay=2.0)
    resolver = _resolver(fetch_timeout=0.2)
    started = time.monotonic()
    with pytest.raises(LdContextNotAvailable, match=re.escape(FETCH_FAILED)):
        resolver.resolve(slow)
    assert time.monotonic() - started < 1.5


def test_total_time_is_limited(site: Site) -> None:
    trickle = site.serve("/trickle.jsonld", {"a": EX + "a" * 200}, trickle=0.05)
    with pytest.raises(LdContextNotAvailable, match=re.escape(FETCH_FAILED)):
        _resolver(fetch_timeout=0.3).resolve(trickle)


@pytest.mark.parametrize("content_length", [True, False])
def test_oversized_context(site: Site, content_length: bool) -> None:
    big = site.serve(
        "/big.jsonld", {f"t{i}": EX + str(i) for i in range(500)}, content_length=content_length
    )
    with pytest.raises(LdContextNotAvailable, match="2000 bytes") as err:
        _resolver(max_context_bytes=2000).resolve(big)
    assert big in err.value.detail


def test_documents_that_are_not_contexts(site: Site, resolver: ContextResolver) -> None:
    site.routes["/html"] = Route(b"<html>hello</html>")
    site.routes["/plain.json"] = Route(b'{"name": "not a context"}')
    site.routes["/number.json"] = Route(b'{"@context": 42}')
    for path, fragment in [
        ("/html", "not JSON"),
        ("/plain.json", '"@context"'),
        ("/number.json", "neither"),
    ]:
        with pytest.raises(LdContextNotAvailable, match=fragment):
            resolver.resolve(site.base + path)


def test_malformed_remote_term_names_its_url(site: Site, resolver: ContextResolver) -> None:
    url = site.serve("/bad.jsonld", {"location": "http://example.org/loc"})
    with pytest.raises(BadRequestData) as err:
        resolver.resolve(url)
    assert url in err.value.detail and "'location'" in err.value.detail


def test_cache_expiry_and_deletion_refetch(site: Site) -> None:
    url = site.serve("/ttl.jsonld", {"a": EX + "a"})
    resolver = _resolver(cache_ttl=0.2)
    resolver.resolve(url)
    resolver.resolve(url)
    assert site.hits["/ttl.jsonld"] == 1
    time.sleep(0.3)
    resolver.resolve(url)
    assert site.hits["/ttl.jsonld"] == 2
    resolver.registry.delete(url)  # a Cached context may be named by its URL
    resolver.resolve(url)
    assert site.hits["/ttl.jsonld"] == 3


def _refusing_transport() -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"unexpected request to {request.url}")

    return httpx.MockTransport(handler)


def test_core_and_hosted_contexts_are_never_fetched() -> None:
    registry = ContextRegistry(packaged=None)
    hosted = registry.add({"@context": {"hostedTerm": EX + "hosted"}})
    resolver = ContextResolver(registry=registry, transport=_refusing_transport())
    for url in ("https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld", *CORE_URLS):
        assert resolver.resolve(url) == TermMap.core()
    url = f"https://broker.example:8443/ngsi-ld/v1/jsonldContexts/{hosted}"
    assert resolver.resolve(url).expand("hostedTerm") == EX + "hosted"
    assert resolver.resolve([url]).expand("hostedTerm") == EX + "hosted"
    assert registry.details(hosted)["numberOfHits"] == 2
    registry.delete(hosted)
    with pytest.raises(AssertionError, match="unexpected request"):  # no longer hosted here
        resolver.resolve(url)


def test_remote_contexts_can_be_disabled(site: Site) -> None:
    url = site.serve("/ctx.jsonld", {"a": EX + "a"})
    with pytest.raises(LdContextNotAvailable, match="does not fetch"):
        _resolver(allow_remote=False).resolve(url)
    assert site.hits["/ctx.jsonld"] == 0


def test_concurrent_resolution(site: Site, resolver: ContextResolver) -> None:
    url = site.serve("/shared.jsonld", {"a": EX + "a"})
    results: list[str] = []

    def work() -> None:
        for _ in range(50):
            results.append(resolver.resolve(url).expand("a"))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [EX + "a"] * 200
    assert site.hits["/shared.jsonld"] <= 4


# -- the @context store ------------------------------------------------------------------------


def test_registry_add_get_list_delete() -> None:
    registry = ContextRegistry(packaged=None)
    body = {"@context": {"a": EX + "a"}}
    hosted = registry.add(body)
    assert registry.get(hosted) == body
    assert registry.list(base_url="http://broker:1026/") == [
        f"http://broker:1026/ngsi-ld/v1/jsonldContexts/{hosted}"
    ]
    [info] = registry.list(details=True)
    assert info["localId"] == hosted and info["kind"] == "Hosted" and info["numberOfHits"] == 1
    assert registry.list(kind="Cached") == []
    implicit = registry.add_implicit([{"b": EX + "b"}])
    assert registry.add_implicit([{"b": EX + "b"}]) == implicit  # by content
    assert registry.details(implicit)["kind"] == "ImplicitlyCreated"
    assert len(registry.list(kind="ImplicitlyCreated")) == 1
    with pytest.raises(BadRequestData, match="kind"):
        registry.list(kind="Everything")
    registry.delete(hosted)
    with pytest.raises(ResourceNotFound, match=hosted):
        registry.get(hosted)
    with pytest.raises(ResourceNotFound):
        registry.delete(hosted)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ([], "JSON object"),
        ({"context": {}}, '"@context"'),
        ({"@context": "https://example.org/c.jsonld"}, "object or an array"),
        ({"@context": [{"a": EX + "a"}, 7]}, "[1]"),
        ({"@context": {"location": "http://example.org/loc"}}, "'location'"),
        ({"@context": {"a": "a"}}, "'a'"),
    ],
)
def test_registry_rejects_bad_contexts(body: object, fragment: str) -> None:
    with pytest.raises(BadRequestData) as err:
        ContextRegistry(packaged=None).add(body)
    assert fragment in err.value.detail


def test_registry_accepts_arrays_with_urls() -> None:
    registry = ContextRegistry(packaged=None)
    local_id = registry.add({"@context": ["https://example.org/c.jsonld", {"a": "ex:a"}]})
    assert registry.get(local_id)["@context"][0] == "https://example.org/c.jsonld"


def test_cached_contexts_are_not_served(site: Site, resolver: ContextResolver) -> None:
    url = site.serve("/c.jsonld", {"a": EX + "a"})
    resolver.resolve(url)
    [local_id] = [i["localId"] for i in resolver.registry.list(details=True)]
    with pytest.raises(OperationNotSupported, match=url):
        resolver.registry.get(local_id)
    assert resolver.registry.details(url)["localId"] == local_id


def test_registry_persistence(tmp_path: Path) -> None:
    registry = ContextRegistry(open_state_store(tmp_path), packaged=None)
    hosted = registry.add({"@context": {"a": EX + "a"}})
    implicit = registry.add_implicit({"b": EX + "b"})
    reloaded = ContextRegistry(open_state_store(tmp_path), packaged=None)
    assert reloaded.get(hosted) == {"@context": {"a": EX + "a"}}
    assert reloaded.details(implicit)["kind"] == "ImplicitlyCreated"
    assert reloaded.details(hosted)["createdAt"] == registry.details(hosted)["createdAt"]
    reloaded.delete(hosted)
    assert open_state_store(tmp_path).get(CONTEXTS, "", hosted) is None
    again = ContextRegistry(open_state_store(tmp_path), packaged=None)
    assert {i["localId"] for i in again.list(True)} == {implicit}


def test_packaged_contexts(tmp_path: Path) -> None:
    (tmp_path / "city-terms.jsonld").write_text(json.dumps({"@context": {"bin": EX + "bin"}}))
    registry = ContextRegistry(packaged=tmp_path)
    assert registry.get("city-terms") == {"@context": {"bin": EX + "bin"}}
    assert registry.details("city-terms")["kind"] == "Hosted"
    with pytest.raises(OperationNotSupported, match="packaged"):
        registry.delete("city-terms")
    resolver = ContextResolver(registry=registry, transport=_refusing_transport())
    url = "http://localhost:8000/ngsi-ld/v1/jsonldContexts/city-terms"
    assert resolver.resolve(url).expand("bin") == EX + "bin"


def test_broken_packaged_context_fails_at_start(tmp_path: Path) -> None:
    (tmp_path / "broken.jsonld").write_text("{not json")
    with pytest.raises(ValueError, match=re.escape("broken.jsonld")):
        ContextRegistry(packaged=tmp_path)
    old_files = tmp_path / "contexts"  # the registry's files before the state store
    old_files.mkdir()
    (old_files / "x.json").write_text(json.dumps({"@context": {}, "kind": "Cached"}))
    with pytest.raises(ValueError, match="not an @context stored"):
        import_once(open_state_store(tmp_path), "contexts", old_files, import_legacy_contexts)


@pytest.mark.skipif(
    not (PACKAGED_CONTEXTS / "urbis-smart-city.jsonld").exists(),
    reason="ontology/contexts/urbis-smart-city.jsonld is not written yet",
)
def test_the_project_context_is_packaged_and_valid() -> None:
    registry = ContextRegistry()
    assert registry.details("urbis-smart-city")["kind"] == "Hosted"
    resolver = ContextResolver(registry=registry, transport=_refusing_transport())
    url = "http://localhost:8000/ngsi-ld/v1/jsonldContexts/urbis-smart-city"
    terms = resolver.resolve(url)
    assert terms != TermMap.core()
