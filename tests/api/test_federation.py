"""Distributed queries across real Urbis instances on loopback (clauses 4.3.6, 6.3.17, 6.3.18).

Three `urbis serve` processes (A, B, C) and, where the forwarded request itself is what is
checked, a small recording source that answers like a broker and keeps every request it gets.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from urbis.testing.server import free_port, running_server
from urbis.twin.outbound import FETCH_FAILED

V1 = "/ngsi-ld/v1"
REGS = f"{V1}/csourceRegistrations"
CONTEXT_REL = "http://www.w3.org/ns/json-ld#context"
WARNING = "NGSILD-Warning"


@pytest.fixture(scope="module")
def brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, httpx.Client]]:
    logs = tmp_path_factory.mktemp("federation")
    with (
        running_server("--memory", "--open", log=logs / "a.log") as a,
        running_server("--memory", "--open", log=logs / "b.log") as b,
        running_server("--memory", "--open", log=logs / "c.log") as c,
    ):
        clients = {
            name: httpx.Client(base_url=url, timeout=20, trust_env=False)
            for name, url in (("A", a), ("B", b), ("C", c))
        }
        yield clients
        for client in clients.values():
            client.close()


@pytest.fixture
def fed(brokers: dict[str, httpx.Client]) -> Iterator[dict[str, httpx.Client]]:
    """The brokers, with every registration removed after each test."""
    yield brokers
    for client in brokers.values():
        for reg in client.get(REGS).json():
            client.delete(f"{REGS}/{reg['id']}")


def url_of(client: httpx.Client) -> str:
    return str(client.base_url).rstrip("/")


def kind() -> str:
    """A fresh entity type per test, so tests never see each other's entities."""
    return f"T{uuid.uuid4().hex[:8]}"


def put(client: httpx.Client, *entities: dict[str, Any]) -> None:
    r = client.post(f"{V1}/entityOperations/upsert", json=list(entities))
    assert r.status_code in (201, 204), r.text


def register(client: httpx.Client, endpoint: str, type_: str, **extra: Any) -> str:
    body: dict[str, Any] = {
        "type": "ContextSourceRegistration",
        "information": [{"entities": [{"type": type_}]}],
        "endpoint": endpoint,
        **extra,
    }
    r = client.post(REGS, json=body)
    assert r.status_code == 201, r.text
    return r.headers["location"].rsplit("/", 1)[1]


def query(client: httpx.Client, **params: Any) -> httpx.Response:
    r = client.get(f"{V1}/entities", params=params)
    assert r.status_code == 200, r.text
    return r


def by_id(response: httpx.Response) -> dict[str, dict[str, Any]]:
    entities = response.json()
    ids = [e["id"] for e in entities]
    assert len(ids) == len(set(ids)), f"an entity came twice: {ids}"
    return {e["id"]: e for e in entities}


def entity(eid: str, type_: str, **attrs: Any) -> dict[str, Any]:
    return {
        "id": eid,
        "type": type_,
        **{k: {"type": "Property", "value": v} for k, v in attrs.items()},
    }


def test_query_merges_local_and_remote_entities(fed: dict[str, httpx.Client]) -> None:
    a, b = fed["A"], fed["B"]
    t = kind()
    put(a, entity(f"urn:a:{t}", t, level=1))
    put(b, entity(f"urn:b:{t}", t, level=2), entity(f"urn:b2:{t}", t, level=3))
    register(a, url_of(b), t)
    r = query(a, type=t, count="true")
    assert set(by_id(r)) == {f"urn:a:{t}", f"urn:b:{t}", f"urn:b2:{t}"}
    assert r.headers["NGSILD-Results-Count"] == "3"
    assert WARNING not in r.headers
    page = query(a, type=t, limit=2, offset=2, count="true")
    assert len(page.json()) == 1 and page.headers["NGSILD-Results-Count"] == "3"
    assert by_id(query(a, type=t, options="keyValues"))[f"urn:b:{t}"]["level"] == 2


def test_q_filter_reaches_the_remote(fed: dict[str, httpx.Client]) -> None:
    """Lost q filters on forwarded queries: the remote must filter, and return only matches."""
    a, b = fed["A"], fed["B"]
    t = kind()
    put(
        b,
        entity(f"urn:full:{t}", t, fillingLevel=0.9),
        entity(f"urn:empty:{t}", t, fillingLevel=0.1),
    )
    register(a, url_of(b), t)
    assert set(by_id(query(a, type=t, q="fillingLevel>0.5"))) == {f"urn:full:{t}"}
    assert set(by_id(query(a, type=t, q="fillingLevel<0.5", attrs="fillingLevel"))) == {
        f"urn:empty:{t}"
    }


def test_a_source_that_is_down_is_reported_and_the_rest_answers(
    fed: dict[str, httpx.Client],
) -> None:
    a, b = fed["A"], fed["B"]
    t = kind()
    put(a, entity(f"urn:a:{t}", t, level=1))
    put(b, entity(f"urn:b:{t}", t, level=2))
    dead = register(a, f"http://127.0.0.1:{free_port()}", t)
    register(a, url_of(b), t)
    r = query(a, type=t)
    assert set(by_id(r)) == {f"urn:a:{t}", f"urn:b:{t}"}
    warning = r.headers[WARNING]
    assert warning.startswith(f"199 {dead} ") and FETCH_FAILED in warning
    status = a.get(f"{REGS}/{dead}").json()
    assert (status["status"], status["timesSent"], status["timesFailed"]) == ("failed", 1, 1)
    # An entity only the dead source could hold: 404, with the failure reported beside it.
    missing = a.get(f"{V1}/entities/urn:nowhere:{t}")
    assert missing.status_code == 404 and dead in missing.headers[WARNING]


def test_a_source_answering_an_error_is_reported(fed: dict[str, httpx.Client]) -> None:
    a, b = fed["A"], fed["B"]
    t = kind()
    put(a, entity(f"urn:a:{t}", t, level=1))
    reg = register(a, url_of(b), t, tenant="nosuchtenant")  # B answers 404 NonexistentTenant
    r = query(a, type=t)
    assert set(by_id(r)) == {f"urn:a:{t}"}
    assert r.headers[WARNING].startswith(f"299 {reg} ")


def test_crossed_registrations_terminate_and_return_each_entity_once(
    fed: dict[str, httpx.Client],
) -> None:
    a, b = fed["A"], fed["B"]
    t = kind()
    put(a, entity(f"urn:a:{t}", t, level=1), entity(f"urn:shared:{t}", t, fromA=1))
    put(b, entity(f"urn:b:{t}", t, level=2), entity(f"urn:shared:{t}", t, fromB=2))
    register(a, url_of(b), t)
    register(b, url_of(a), t)
    for client in (a, b):
        r = query(client, type=t)
        found = by_id(r)
        assert set(found) == {f"urn:a:{t}", f"urn:b:{t}", f"urn:shared:{t}"}
        assert {"fromA", "fromB"} <= set(found[f"urn:shared:{t}"])
        assert "loop detected" in r.headers[WARNING]  # the second hop refused to go round
    one = a.get(f"{V1}/entities/urn:b:{t}")
    assert one.status_code == 200 and one.json()["level"]["value"] == 2


def test_local_only(fed: dict[str, httpx.Client]) -> None:
    a, b = fed["A"], fed["B"]
    t = kind()
    put(a, entity(f"urn:a:{t}", t, level=1))
    put(b, entity(f"urn:b:{t}", t, level=2))
    register(a, url_of(b), t)
    assert set(by_id(query(a, type=t, local="true"))) == {f"urn:a:{t}"}
    assert set(by_id(query(a, type=t, localOnly="true"))) == {f"urn:a:{t}"}
    assert a.get(f"{V1}/entities/urn:b:{t}", params={"local": "true"}).status_code == 404


def test_retrieve_an_entity_only_a_remote_holds(fed: dict[str, httpx.Client]) -> None:
    a, b = fed["A"], fed["B"]
    t = kind()
    put(b, entity(f"urn:b:{t}", t, level=7, name="far"))
    register(a, url_of(b), t)
    r = a.get(f"{V1}/entities/urn:b:{t}", params={"attrs": "level"})
    assert r.status_code == 200, r.text
    assert r.json()["level"]["value"] == 7 and "name" not in r.json()
    kv = a.get(f"{V1}/entities/urn:b:{t}", params={"options": "keyValues"}).json()
    assert kv == {"id": f"urn:b:{t}", "type": t, "level": 7, "name": "far"}
    picked = a.get(f"{V1}/entities/urn:b:{t}", params={"pick": "name", "options": "keyValues"})
    assert picked.json() == {"name": "far"} and WARNING not in picked.headers


def test_an_entity_split_across_three_instances_is_merged(fed: dict[str, httpx.Client]) -> None:
    a, b, c = fed["A"], fed["B"], fed["C"]
    t = kind()
    eid = f"urn:split:{t}"
    put(a, entity(eid, t, temperature=21))
    put(b, entity(eid, t, humidity=0.4))
    put(c, entity(eid, t, pressure=1013))
    register(a, url_of(b), t)
    register(a, url_of(c), t)
    expected = {"id": eid, "type": t, "temperature": 21, "humidity": 0.4, "pressure": 1013}
    assert a.get(f"{V1}/entities/{eid}", params={"options": "keyValues"}).json() == expected
    r = query(a, type=t, options="keyValues", count="true")
    assert r.json() == [expected]
    assert r.headers["NGSILD-Results-Count"] == "1"
    picked = query(a, type=t, pick="id,pressure").json()
    assert picked == [{"id": eid, "pressure": {"type": "Property", "value": 1013}}]


def test_conflicting_attributes_keep_the_most_recent_observation(
    fed: dict[str, httpx.Client],
) -> None:
    a, b = fed["A"], fed["B"]
    t = kind()
    eid = f"urn:conflict:{t}"

    def observed(value: float, at: str) -> dict[str, Any]:
        return {"type": "Property", "value": value, "observedAt": at}

    put(a, {"id": eid, "type": t, "speed": observed(10, "2024-01-01T00:00:00Z"),
             "flow": observed(1, "2024-06-01T00:00:00Z")})  # fmt: skip
    put(b, {"id": eid, "type": t, "speed": observed(20, "2024-03-01T00:00:00Z"),
             "flow": observed(2, "2024-02-01T00:00:00Z")})  # fmt: skip
    register(a, url_of(b), t)
    got = a.get(f"{V1}/entities/{eid}").json()
    assert (got["speed"]["value"], got["flow"]["value"]) == (20, 1)


def test_modes_exclusive_redirect_auxiliary(fed: dict[str, httpx.Client]) -> None:
    a, b, c = fed["A"], fed["B"], fed["C"]
    t = kind()
    owned = f"urn:owned:{t}"
    put(a, entity(owned, t, label="local"))
    put(b, entity(owned, t, meter=2, label="remote"))
    register(
        a,
        url_of(b),
        t,
        mode="exclusive",
        information=[{"entities": [{"type": t, "id": owned}], "propertyNames": ["meter"]}],
    )
    put(a, entity(owned, t, meter=1, label="local"))  # written after: a stale local copy
    kv = a.get(f"{V1}/entities/{owned}", params={"options": "keyValues"}).json()
    assert (kv["meter"], kv["label"]) == (2, "local")  # meter only from the source

    r = kind()
    put(b, entity(f"urn:moved:{r}", r, level=2))
    register(a, url_of(b), r, mode="redirect")
    put(a, entity(f"urn:stale:{r}", r, level=1))
    assert set(by_id(query(a, type=r))) == {f"urn:moved:{r}"}  # local copies are not served

    x = kind()
    put(a, entity(f"urn:x:{x}", x, level=1))
    put(c, entity(f"urn:x:{x}", x, level=99, note="extra"), entity(f"urn:only-aux:{x}", x, level=5))
    register(a, url_of(c), x, mode="auxiliary")
    found = by_id(query(a, type=x, options="keyValues"))
    assert (found[f"urn:x:{x}"]["level"], found[f"urn:x:{x}"]["note"]) == (1, "extra")
    assert found[f"urn:only-aux:{x}"]["level"] == 5


def test_registration_changes_apply_to_the_next_query(fed: dict[str, httpx.Client]) -> None:
    """Registration cache errors: PATCH and DELETE take effect on the very next request."""
    a, b = fed["A"], fed["B"]
    t = kind()
    put(b, entity(f"urn:b:{t}", t, level=2))
    reg = register(a, f"http://127.0.0.1:{free_port()}", t)
    assert WARNING in query(a, type=t).headers
    assert a.patch(f"{REGS}/{reg}", json={"endpoint": url_of(b)}).status_code == 204
    r = query(a, type=t)
    assert set(by_id(r)) == {f"urn:b:{t}"} and WARNING not in r.headers
    assert a.patch(f"{REGS}/{reg}", json={"operations": ["retrieveEntity"]}).status_code == 204
    assert query(a, type=t).json() == []  # queryEntity no longer registered
    assert a.get(f"{V1}/entities/urn:b:{t}").status_code == 200
    assert a.delete(f"{REGS}/{reg}").status_code == 204
    assert a.get(f"{V1}/entities/urn:b:{t}").status_code == 404


def test_chain_of_three_brokers(fed: dict[str, httpx.Client]) -> None:
    a, b, c = fed["A"], fed["B"], fed["C"]
    t = kind()
    put(c, entity(f"urn:c:{t}", t, level=3))
    register(a, url_of(b), t)
    register(b, url_of(c), t)
    assert set(by_id(query(a, type=t))) == {f"urn:c:{t}"}
    register(b, url_of(c), t, management={"localOnly": True})  # B now asks C, C asks nobody
    register(c, url_of(a), t)  # would close a loop A->B->C->A without localOnly
    r = query(a, type=t)
    assert set(by_id(r)) == {f"urn:c:{t}"}


def test_tenant_of_the_registration_is_used(fed: dict[str, httpx.Client]) -> None:
    a, b = fed["A"], fed["B"]
    t = kind()
    r = b.post(
        f"{V1}/entities", json=entity(f"urn:t:{t}", t, level=4), headers={"NGSILD-Tenant": "east"}
    )
    assert r.status_code == 201
    register(a, url_of(b), t, tenant="east")
    assert set(by_id(query(a, type=t))) == {f"urn:t:{t}"}


# -- what a source receives -----------------------------------------------------------------


class Recorder(BaseHTTPRequestHandler):
    """Serves an @context and answers entity queries with [] while recording each request."""

    seen: ClassVar[list[tuple[str, dict[str, list[str]], dict[str, str]]]] = []
    context: ClassVar[dict[str, Any]] = {}
    delay: ClassVar[float] = 0.0

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path == "/ctx.jsonld":
            body = json.dumps(self.context).encode()
            content_type = "application/ld+json"
        else:
            Recorder.seen.append((parts.path, parse_qs(parts.query), dict(self.headers.items())))
            time.sleep(Recorder.delay)
            body, content_type = b"[]", "application/json"
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[str]:
    Recorder.seen = []
    Recorder.delay = 0.0
    Recorder.context = {
        "@context": {"level": "https://example.org/level", "Bin": "https://example.org/Bin"}
    }
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_forwarded_query_keeps_q_link_and_headers(
    fed: dict[str, httpx.Client], recorder: str
) -> None:
    a = fed["A"]
    context_url = f"{recorder}/ctx.jsonld"
    link = f'<{context_url}>; rel="{CONTEXT_REL}"; type="application/ld+json"'
    body = {
        "type": "ContextSourceRegistration",
        "information": [{"entities": [{"type": "Bin"}]}],
        "endpoint": recorder,
        "tenant": "west",
        "contextSourceInfo": [{"key": "X-Api-Key", "value": "k1"}],
    }
    assert a.post(REGS, json=body, headers={"Link": link}).status_code == 201
    q = 'level>0.5;name=="a,b"'
    r = a.get(
        f"{V1}/entities",
        params={"type": "Bin", "q": q, "georel": "near;maxDistance==2000", "geometry": "Point",
                "coordinates": "[3.87,43.6]", "pick": "level", "limit": 5, "offset": 5},
        headers={"Link": link, "Via": "1.1 some-gateway"},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    path, params, headers = Recorder.seen[-1]
    assert path == f"{V1}/entities"
    assert params["q"] == [q]
    assert params["type"] == ["Bin"]
    assert (params["georel"], params["geometry"]) == (["near;maxDistance==2000"], ["Point"])
    assert params["limit"] == ["10"] and params["offset"] == ["0"]
    assert params["pick"] == ["id,type,level"]
    assert params["options"] == ["sysAttrs"]
    assert headers["Link"].startswith(f"<{context_url}>")
    assert headers["NGSILD-Tenant"] == "west"
    assert headers["X-Api-Key"] == "k1"
    via = headers["Via"]
    assert via.startswith("1.1 some-gateway, 1.1 urbis-"), via
    # A request whose Via already names A is not forwarded again.
    alias = via.split(", ")[1].split()[1]
    before = len(Recorder.seen)
    again = a.get(
        f"{V1}/entities", params={"type": "Bin"}, headers={"Link": link, "Via": f"1.1 {alias}"}
    )
    assert again.status_code == 200 and len(Recorder.seen) == before
    assert "loop detected" in again.headers[WARNING]


def test_a_slow_source_times_out_per_its_registration(
    fed: dict[str, httpx.Client], recorder: str
) -> None:
    a = fed["A"]
    t = kind()
    put(a, entity(f"urn:a:{t}", t, level=1))
    reg = register(a, recorder, t, management={"timeout": 200, "cooldown": 60000})
    Recorder.delay = 1.0
    r = query(a, type=t)
    assert set(by_id(r)) == {f"urn:a:{t}"}
    # A timeout reads like a closed port or a refused address: the warnings are no port scanner.
    assert r.headers[WARNING].startswith(f"199 {reg} ") and FETCH_FAILED in r.headers[WARNING]
    asked = len(Recorder.seen)
    again = query(a, type=t)  # within the cooldown: not contacted, and said so
    assert "cooling down" in again.headers[WARNING] and len(Recorder.seen) == asked


def test_distributed_paging_has_a_window(fed: dict[str, httpx.Client], recorder: str) -> None:
    a = fed["A"]
    t = kind()
    register(a, recorder, t)
    r = a.get(f"{V1}/entities", params={"type": t, "limit": 1000, "offset": 1})
    assert r.status_code == 403
    assert "at most 1000 entities" in r.json()["detail"]


def test_logs_are_clean(
    brokers: dict[str, httpx.Client], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """No request above made a broker log a traceback."""
    base = Path(str(tmp_path_factory.getbasetemp()))
    logs = {p.resolve() for p in base.glob("federation*/*.log")}
    assert len(logs) == 3
    for log in logs:
        assert "Traceback" not in log.read_text(), log


# -- the rules without servers --------------------------------------------------------------


def _inst(value: Any, **members: str) -> list[dict[str, Any]]:
    return [{"type": "Property", "value": value, **members}]


def test_merge_rules() -> None:
    from urbis.ngsild.merge import merge_entity

    local = {
        "id": "urn:e",
        "type": ["T"],
        "a": _inst(1),
        "b": _inst(1, observedAt="2024-01-02T00:00:00Z"),
        "createdAt": "2024-01-05T00:00:00Z",
        "modifiedAt": "2024-01-05T00:00:00Z",
    }
    remote = {
        "id": "urn:e",
        "type": ["U"],
        "a": _inst(2),
        "b": _inst(2, observedAt="2024-01-03T00:00:00Z"),
        "c": _inst(3),
        "createdAt": "2024-01-01T00:00:00Z",
        "modifiedAt": "2024-01-09T00:00:00Z",
    }
    merged = merge_entity(local, remote)
    assert merged["type"] == ["T", "U"]
    assert merged["a"][0]["value"] == 1  # nothing decides: local wins
    assert merged["b"][0]["value"] == 2  # newer observedAt wins
    assert merged["c"][0]["value"] == 3
    assert (merged["createdAt"], merged["modifiedAt"]) == (
        "2024-01-01T00:00:00Z",
        "2024-01-09T00:00:00Z",
    )
    aux = merge_entity(local, remote, auxiliary=True)
    assert (aux["b"][0]["value"], aux["c"][0]["value"]) == (1, 3)  # fills, never overrides
    newer = merge_entity(
        {"id": "urn:e", "type": ["T"], "a": _inst(1, modifiedAt="2024-01-01T00:00:00Z")},
        {"id": "urn:e", "type": ["T"], "a": _inst(2, modifiedAt="2024-02-01T00:00:00Z")},
    )
    assert newer["a"][0]["value"] == 2
    datasets = merge_entity(
        {"id": "urn:e", "type": ["T"], "a": _inst(1)},
        {"id": "urn:e", "type": ["T"], "a": _inst(2, datasetId="urn:d")},
    )
    assert [i["value"] for i in datasets["a"]] == [1, 2]
    assert local["a"][0]["value"] == 1 and "c" not in local  # inputs untouched


def test_which_registrations_apply() -> None:
    from urbis.ngsild.registrations import RegistrationReader
    from urbis.twin.context import TermMap
    from urbis.twin.query.typeexpr import TypeAll, TypeName

    reader = RegistrationReader(TermMap.core())
    reg = reader.create(
        {
            "type": "ContextSourceRegistration",
            "endpoint": "http://127.0.0.1:9",
            "operations": ["retrieveOps"],
            "information": [
                {
                    "entities": [{"type": "https://x/T", "idPattern": "^urn:t:"}],
                    "propertyNames": ["https://x/p"],
                }
            ],
        }
    )
    t, u = TypeName("https://x/T"), TypeName("https://x/U")
    assert reg.applies_to_query("queryEntity", types=t)
    assert not reg.applies_to_query("queryEntity", types=u)
    assert reg.applies_to_query("queryEntity", types=TypeAll((t, u)))  # may also be a U
    assert reg.applies_to_query("retrieveEntity", ids=["urn:t:1"])
    assert not reg.applies_to_query("retrieveEntity", ids=["urn:other:1"])
    assert not reg.applies_to_query("queryEntity", types=t, attrs={"https://x/q"})
    assert not reg.applies_to_query("createEntity", types=t)  # not in retrieveOps
    doc = {
        "id": "urn:t:1",
        "type": ["https://x/T"],
        "https://x/p": _inst(1),
        "https://x/q": _inst(2),
    }
    assert set(reg.narrow(doc) or {}) == {"id", "type", "https://x/p"}
    assert reg.narrow({**doc, "id": "urn:other"}) is None
    expired = reader.create(
        {
            "type": "ContextSourceRegistration",
            "endpoint": "http://127.0.0.1:9",
            "expiresAt": "2001-01-01T00:00:00Z",
            "information": [{"propertyNames": ["p"]}],
        }
    )
    assert not expired.applies_to_query("queryEntity")


def test_via_and_warning_syntax() -> None:
    from urbis.ngsild.federation import SourceWarning, via_names

    assert via_names("1.1 gw, HTTP/1.1 urbis-a (comment), 1.0 urbis-b") == [
        "gw",
        "urbis-a",
        "urbis-b",
    ]
    assert via_names(None) == []
    assert (
        SourceWarning(199, "urn:r", 'say "hi"\nthere').header() == '199 urn:r "say \\"hi\\" there"'
    )
