"""The demo city: deterministic, valid normalized NGSI-LD, every term in urbis-smart-city."""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from urbis.demo import city as demo
from urbis.twin.errors import InvalidRequest

ROOT = Path(__file__).resolve().parents[2]
CONTEXT_FILE = ROOT / "src" / "urbis" / "ontology" / "contexts" / "urbis-smart-city.jsonld"
REFERENCE = Path("/work/shared/reference")
SDM = REFERENCE / "smart-data-models"
CORE_V18 = REFERENCE / "ngsi-ld" / "ngsi-ld-core-context-v1.8.jsonld"
needs_reference = pytest.mark.skipif(
    not SDM.is_dir(), reason="/work/shared/reference (Smart Data Models snapshot) is absent"
)

# Terms the demo takes from the NGSI-LD core context, which the server appends to ours.
CORE_TERMS = {"location", "description", "status"}
# Smart Data Models domain of each type, in the order that settles terms defined by several.
DOMAINS = {
    "WasteContainer": "WasteManagement",
    "Streetlight": "Streetlighting",
    "StreetlightGroup": "Streetlighting",
    "AirQualityObserved": "Environment",
    "FloodMonitoring": "Environment",
    "WaterObserved": "Environment",
    "ParkingSpot": "Parking",
    "OffStreetParking": "Parking",
    "Alert": "Alert",
    "Device": "Device",
    "NoiseLevelObserved": "Environment",
    "PointOfInterest": "PointOfInterest",
    "TrafficFlowObserved": "Transportation",
}
# Montpellier, with a margin around the 6 km demo disc.
LON_RANGE, LAT_RANGE = (3.82, 3.94), (43.57, 43.655)
UTC_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
MEMBER = {
    "Property": "value",
    "Relationship": "object",
    "GeoProperty": "value",
    "LanguageProperty": "languageMap",
    "VocabProperty": "vocab",
}
META = {"type", "observedAt", "unitCode", "datasetId", *MEMBER.values()}
NOW = datetime(2026, 3, 2, 17, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def city() -> list[dict[str, Any]]:
    return list(demo.generate(seed=42))


@pytest.fixture(scope="module")
def context() -> dict[str, str]:
    document = json.loads(CONTEXT_FILE.read_text(encoding="utf-8"))
    assert list(document) == ["@context"]
    terms: dict[str, str] = document["@context"]
    return terms


def instances(value: Any) -> list[dict[str, Any]]:
    return value if isinstance(value, list) else [value]


def sub_attributes(instance: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    return ((k, v) for k, v in instance.items() if k not in META)


def walk(entity: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every (name, instance) of an entity's attributes and sub-attributes, at any depth."""
    stack = [(k, v) for k, v in entity.items() if k not in ("id", "type")]
    while stack:
        name, value = stack.pop()
        for instance in instances(value):
            yield name, instance
            stack.extend(sub_attributes(instance))


# --- determinism and size ----------------------------------------------------------------


def test_same_seed_gives_identical_city() -> None:
    assert list(demo.generate(seed=7)) == list(demo.generate(seed=7))
    assert list(demo.generate(seed=7, now=NOW)) == list(demo.generate(seed=7, now=NOW))


def test_other_seed_or_time_changes_the_city(city: list[dict[str, Any]]) -> None:
    assert list(demo.generate(seed=8)) != city
    assert list(demo.generate(seed=42, now=NOW)) != city


def test_default_time_is_the_reference_time(city: list[dict[str, Any]]) -> None:
    stamps = {i["observedAt"] for e in city for _, i in walk(e) if "observedAt" in i}
    assert stamps == {"2026-01-15T09:00:00Z"}
    naive = list(demo.generate(now=NOW.replace(tzinfo=None)))
    assert naive == list(demo.generate(now=NOW))


def test_scale_multiplies_every_count(city: list[dict[str, Any]]) -> None:
    one = Counter(e["type"] for e in city)
    three = Counter(e["type"] for e in demo.generate(scale=3))
    assert 500 <= len(city) <= 1000
    assert set(one) == set(DOMAINS)
    assert {t: 3 * c for t, c in one.items()} == dict(three)
    sensed = sum(one[t] for t in demo.SENSED)
    assert one["Device"] == sensed


@pytest.mark.parametrize("scale", [0, -1, 1.5, True, "2"])
def test_bad_scale_is_a_client_error(scale: Any) -> None:
    with pytest.raises(InvalidRequest, match="positive integer"):
        list(demo.generate(scale=scale))


def test_ids_follow_the_demo_pattern(city: list[dict[str, Any]]) -> None:
    ids = [e["id"] for e in city]
    assert len(ids) == len(set(ids))
    for entity in city:
        assert re.fullmatch(rf"urn:ngsi-ld:{entity['type']}:demo-\d+", entity["id"])
        assert "@context" not in entity


# --- normalized NGSI-LD ------------------------------------------------------------------


def check_geometry(geometry: dict[str, Any]) -> None:
    kind, coordinates = geometry["type"], geometry["coordinates"]
    assert kind in ("Point", "LineString", "Polygon"), geometry
    if kind == "Point":
        points = [coordinates]
    elif kind == "LineString":
        points = coordinates
    else:
        assert all(ring[0] == ring[-1] and len(ring) >= 4 for ring in coordinates)
        points = [p for ring in coordinates for p in ring]
    for lon, lat in points:
        assert LON_RANGE[0] < lon < LON_RANGE[1], geometry
        assert LAT_RANGE[0] < lat < LAT_RANGE[1], geometry


def check_instance(name: str, instance: dict[str, Any], ids: set[str]) -> None:
    kind = instance["type"]
    assert kind in MEMBER, (name, instance)
    assert MEMBER[kind] in instance, (name, instance)
    assert not ({"value", "object", "languageMap", "vocab"} - {MEMBER[kind]}) & set(instance)
    if kind == "Relationship":
        assert instance["object"] in ids, (name, instance)
    elif kind == "GeoProperty":
        check_geometry(instance["value"])
    elif kind == "LanguageProperty":
        assert all(isinstance(text, str) and text for text in instance["languageMap"].values())
    if "observedAt" in instance:
        assert UTC_Z.match(instance["observedAt"]), instance
    value = instance.get("value")
    if isinstance(value, dict) and "@value" in value:
        fmt = {"DateTime": UTC_Z, "Date": re.compile(r"^\d{4}-\d{2}-\d{2}$")}[value["@type"]]
        assert fmt.match(value["@value"]), instance


def test_every_attribute_is_valid_normalized(city: list[dict[str, Any]]) -> None:
    ids = {e["id"] for e in city}
    for entity in city:
        assert isinstance(entity["type"], str)
        assert entity["location"]["type"] == "GeoProperty"
        for name, instance in walk(entity):
            check_instance(name, instance, ids)


def test_multi_instance_attributes_have_distinct_dataset_ids(city: list[dict[str, Any]]) -> None:
    multi = 0
    for entity in city:
        for value in entity.values():
            if isinstance(value, list):
                multi += 1
                dataset_ids = [i.get("datasetId") for i in value]
                assert len(set(dataset_ids)) == len(dataset_ids)
                assert sum(d is None for d in dataset_ids) <= 1
    assert multi > 0


def test_every_attribute_type_appears(city: list[dict[str, Any]]) -> None:
    kinds = {i["type"] for e in city for _, i in walk(e)}
    assert kinds == set(MEMBER)
    nested = [n for e in city for n, i in walk(e) for k, _ in sub_attributes(i)]
    assert nested, "no property-of-property"


def test_relationships_on_most_types(city: list[dict[str, Any]]) -> None:
    with_relationship = {e["type"] for e in city for _, i in walk(e) if i["type"] == "Relationship"}
    assert len(with_relationship) >= len(DOMAINS) * 2 // 3


def test_devices_point_back_at_their_assets(city: list[dict[str, Any]]) -> None:
    by_id = {e["id"]: e for e in city}
    for entity in city:
        if "refDevice" in entity:
            device = by_id[entity["refDevice"]["object"]]
            assert device["controlledAsset"]["object"] == entity["id"]
            geometry = entity["location"]["value"]
            start = geometry["coordinates"][0 if geometry["type"] == "LineString" else slice(None)]
            assert device["location"]["value"] == {"type": "Point", "coordinates": start}


def test_car_park_availability_matches_its_spots(city: list[dict[str, Any]]) -> None:
    free = Counter(
        e["refParkingSite"]["object"]
        for e in city
        if e["type"] == "ParkingSpot" and e["status"]["value"] == "free"
    )
    for site in (e for e in city if e["type"] == "OffStreetParking"):
        assert site["availableSpotNumber"]["value"] == free[site["id"]]


def distance_m(a: list[float], b: list[float]) -> float:
    dx = (a[0] - b[0]) * 111_320 * math.cos(math.radians(a[1]))
    return math.hypot(dx, (a[1] - b[1]) * 111_320)


def test_researchers_find_bins_near_schools(city: list[dict[str, Any]]) -> None:
    schools = [
        e["location"]["value"]["coordinates"]
        for e in city
        if e["type"] == "PointOfInterest" and e["category"]["value"] == ["school"]
    ]
    bins = [e["location"]["value"]["coordinates"] for e in city if e["type"] == "WasteContainer"]
    assert len(schools) >= 5
    near = [b for b in bins if any(distance_m(b, s) <= 500 for s in schools)]
    assert 0 < len(near) < len(bins)


# --- the context -------------------------------------------------------------------------


def used_terms(city: list[dict[str, Any]]) -> set[str]:
    terms = {e["type"] for e in city}
    for entity in city:
        for name, instance in walk(entity):
            terms.add(name)
            vocab = instance.get("vocab", [])
            terms.update([vocab] if isinstance(vocab, str) else vocab)
            if name == "address":
                terms.update(instance["value"])
    return terms


def test_context_holds_only_term_definitions(context: dict[str, str]) -> None:
    assert context
    for term, iri in context.items():
        assert not term.startswith("@"), term
        assert isinstance(iri, str) and iri.startswith(("https://", "http://")), term
    assert not CORE_TERMS & set(context)


def test_every_used_term_is_defined(city: list[dict[str, Any]], context: dict[str, str]) -> None:
    undefined = used_terms(city) - set(context) - CORE_TERMS
    assert not undefined


def test_types_map_to_their_domain(context: dict[str, str]) -> None:
    for kind, domain in DOMAINS.items():
        assert context[kind] == f"https://smartdatamodels.org/dataModel.{domain}/{kind}"


def sdm_contexts() -> dict[str, dict[str, str]]:
    out = {}
    for path in SDM.glob("*/context.jsonld"):
        terms = json.loads(path.read_text(encoding="utf-8"))["@context"]
        out[path.parent.name] = {t: v if isinstance(v, str) else v["@id"] for t, v in terms.items()}
    return out


def schema_properties(domain: str, kind: str) -> set[str]:
    path = SDM / domain / kind / "schema.json"
    if not path.exists():
        return set()
    schema = json.loads(path.read_text(encoding="utf-8"))
    parts = [schema, *schema.get("allOf", [])]
    for shared in (SDM / domain).glob("*-schema.json"):  # the domain's $ref'd common parts
        parts += json.loads(shared.read_text(encoding="utf-8"))["definitions"].values()
    return {p for part in parts for p in part.get("properties", {})}


@needs_reference
def test_context_agrees_with_smart_data_models(context: dict[str, str]) -> None:
    sdm = sdm_contexts()
    for term, iri in context.items():
        choices = {c[term] for c in sdm.values() if term in c}
        assert iri in choices, (term, iri, choices)
    for term in ("fillingLevel", "name", "address", "dateObserved", "no2", "refParkingSite"):
        assert {c[term] for c in sdm.values() if term in c} == {context[term]}
    assert context["name"] == "https://smartdatamodels.org/name"
    assert (
        context["powerState"] == "https://smartdatamodels.org/dataModel.Streetlighting/powerState"
    )


@needs_reference
def test_shared_terms_take_the_first_type_that_lists_them(context: dict[str, str]) -> None:
    """A term several domains define gets the IRI of the first type (DOMAINS order) using it."""
    sdm = sdm_contexts()
    conflicts = [t for t in context if len({c[t] for c in sdm.values() if t in c}) > 1]
    assert {"category", "refDevice", "temperature"} <= set(conflicts)
    for term in conflicts:
        owners = [d for k, d in DOMAINS.items() if term in schema_properties(d, k)]
        owner = next(d for d in owners if term in sdm[d])
        assert context[term] == sdm[owner][term], term


@needs_reference
def test_core_terms_mean_what_smart_data_models_mean() -> None:
    """The terms left to the core context expand there as the SDM contexts expand them."""
    core = json.loads(CORE_V18.read_text(encoding="utf-8"))["@context"]
    sdm = sdm_contexts()
    for term in CORE_TERMS:
        iri = core[term].replace("ngsi-ld:", core["ngsi-ld"])
        assert {c[term] for c in sdm.values() if term in c} == {iri}, term


@needs_reference
def test_expansion_never_falls_to_the_default_vocab(
    city: list[dict[str, Any]], context: dict[str, str]
) -> None:
    pyld = pytest.importorskip("pyld")
    core = json.loads(CORE_V18.read_text(encoding="utf-8"))["@context"]
    samples = {e["type"]: e for e in city}
    samples["multi"] = next(e for e in city if isinstance(e.get("temperature"), list))
    for entity in samples.values():
        document = {**entity, "@context": [context, core]}
        expanded = json.dumps(pyld.jsonld.expand(document))
        assert "ngsi-ld/default-context" not in expanded, entity["type"]
        assert "https://smartdatamodels.org/" in expanded


# --- the living demo ---------------------------------------------------------------------


def test_updates_are_deterministic_and_target_the_city(city: list[dict[str, Any]]) -> None:
    first = list(demo.updates(random.Random(1), NOW))
    assert first == list(demo.updates(random.Random(1), NOW))
    by_id = {e["id"]: e for e in city}
    ids = set(by_id)
    for entity_id, fragment in first:
        assert entity_id in ids
        assert fragment and set(fragment) <= set(by_id[entity_id])
        for name, value in fragment.items():
            for instance in instances(value):
                check_instance(name, instance, ids)
                stamp = "2026-03-02T17:30:00Z"
                assert instance.get("observedAt", stamp) == stamp
    assert {i.split(":")[2] for i, _ in first} >= {
        "WasteContainer",
        "ParkingSpot",
        "AirQualityObserved",
    }


def test_updates_scale_with_the_city() -> None:
    ids = {e["id"] for e in demo.generate(scale=2)}
    fragments = list(demo.updates(random.Random(3), NOW, scale=2))
    assert {i for i, _ in fragments} <= ids
    assert len(fragments) > len(list(demo.updates(random.Random(3), NOW)))


def test_fill_levels_rise_until_emptied() -> None:
    def levels(t: datetime) -> dict[str, float]:
        return {
            i: f["fillingLevel"]["value"]
            for i, f in demo.updates(random.Random(5), t)
            if "fillingLevel" in f
        }

    before, after = levels(NOW), levels(NOW + timedelta(hours=2))
    assert before.keys() == after.keys()
    rising = sum(after[i] > before[i] for i in before)
    assert rising >= 0.8 * len(before)


def test_living_city_moves() -> None:
    def readings(t: datetime) -> dict[str, Any]:
        return dict(demo.updates(random.Random(9), t))

    now, later = readings(NOW), readings(NOW + timedelta(hours=3))
    air = "urn:ngsi-ld:AirQualityObserved:demo-1"
    assert now[air]["no2"]["value"] != later[air]["no2"]["value"]
    spots_now = {i: f["status"]["value"] for i, f in now.items() if ":ParkingSpot:" in i}
    spots_later = {i: f["status"]["value"] for i, f in later.items() if ":ParkingSpot:" in i}
    assert set(spots_now.values()) | set(spots_later.values()) == {"free", "occupied"}


def test_updates_agree_with_a_city_generated_at_the_same_time() -> None:
    generated = {e["id"]: e for e in demo.generate(now=NOW)}
    for entity_id, fragment in demo.updates(random.Random(2), NOW):
        if ":ParkingSpot:" in entity_id or ":OffStreetParking:" in entity_id:
            for name, value in fragment.items():
                assert generated[entity_id][name] == value
        if ":WasteContainer:" in entity_id:
            assert generated[entity_id]["fillingLevel"] == fragment["fillingLevel"]
