"""A deterministic demo city: Montpellier as NGSI-LD normalized Smart Data Models entities.

Everything is synthetic (names, streets, sensors, readings) and only roughly placed on the real
city (centre lon 3.8767, lat 43.6108; a disc of about 6 km across). Entities are compacted with
the hosted context ``urbis-smart-city`` (ontology/contexts/urbis-smart-city.jsonld) and carry no
``@context`` member.

Static attributes come from one seeded ``random.Random``, so a seed gives the same city every time.
Readings (fill levels, parking occupancy, air quality, river levels...) are functions of the entity
number and the time, so ``generate(now=t)`` and ``updates(rng, t)`` agree and a fill level keeps
rising between two emptyings. Without ``now`` the city is generated at ``REFERENCE_NOW``.

Smart Data Models domains map some terms differently (``category``, ``refDevice``,
``temperature``...); a flat context can hold only one IRI per term, so the context takes the IRI of
the first type of ``TYPES`` whose model lists the term (e.g. ``refDevice`` is WasteManagement's).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import shapely

from urbis.twin.errors import InvalidRequest
from urbis.twin.provenance import DatasetInfo

CONTEXT_ID = "urbis-smart-city"
REFERENCE_NOW = datetime(2026, 1, 15, 9, 0, tzinfo=UTC)
CENTRE = (3.8767, 43.6108)
RADIUS_M = 3000.0

Entity = dict[str, Any]
Attrs = dict[str, Any]

# Types in the order used to resolve terms that several Smart Data Models domains define.
TYPES = (
    "WasteContainer",
    "Streetlight",
    "StreetlightGroup",
    "AirQualityObserved",
    "FloodMonitoring",
    "WaterObserved",
    "ParkingSpot",
    "OffStreetParking",
    "Alert",
    "Device",
    "NoiseLevelObserved",
    "PointOfInterest",
    "TrafficFlowObserved",
)

# Entities per unit of `scale` (Devices: one per sensed entity). Scale 1 gives 796 entities.
BASE_COUNTS: dict[str, int] = {
    "PointOfInterest": 15,
    "StreetlightGroup": 10,
    "Streetlight": 150,
    "WasteContainer": 150,
    "OffStreetParking": 6,
    "ParkingSpot": 120,
    "AirQualityObserved": 8,
    "NoiseLevelObserved": 8,
    "TrafficFlowObserved": 12,
    "FloodMonitoring": 4,
    "WaterObserved": 4,
    "Alert": 3,
}

# Sensed types, each entity monitored by one Device, with what the device measures (as terms).
SENSED: dict[str, list[str]] = {
    "WasteContainer": ["fillingLevel", "temperature"],
    "ParkingSpot": ["status"],
    "AirQualityObserved": ["no2", "pm10", "pm25", "o3", "temperature", "relativeHumidity"],
    "NoiseLevelObserved": ["LAeq", "LAmax", "LAS"],
    "TrafficFlowObserved": ["intensity", "occupancy", "averageVehicleSpeed"],
    "FloodMonitoring": ["currentLevel"],
    "WaterObserved": ["waterLevel", "flow"],
}

SPOTS_PER_SITE = BASE_COUNTS["ParkingSpot"] // BASE_COUNTS["OffStreetParking"]
PROVIDER = "Urbis demo city (synthetic data)"

# Approximate neighbourhood centres, used only to label addresses.
_DISTRICTS = (
    ("Écusson", 3.8760, 43.6110),
    ("Comédie", 3.8797, 43.6085),
    ("Antigone", 3.8890, 43.6080),
    ("Port Marianne", 3.8980, 43.6030),
    ("Beaux-Arts", 3.8840, 43.6170),
    ("Boutonnet", 3.8700, 43.6190),
    ("Les Arceaux", 3.8620, 43.6110),
    ("Figuerolles", 3.8640, 43.6060),
    ("Gambetta", 3.8690, 43.6050),
    ("Près d'Arènes", 3.8830, 43.5920),
    ("Croix d'Argent", 3.8580, 43.5930),
    ("Hôpitaux-Facultés", 3.8550, 43.6300),
    ("Aiguelongue", 3.8800, 43.6330),
    ("Millénaire", 3.9080, 43.6120),
)
_STREETS = (
    "rue de la Loge",
    "rue Foch",
    "boulevard du Jeu de Paume",
    "avenue de Lodève",
    "rue du Faubourg Boutonnet",
    "avenue Georges Clemenceau",
    "boulevard Louis Blanc",
    "rue de l'Aiguillerie",
    "avenue du Pont Juvénal",
    "rue Marceau",
    "boulevard de Strasbourg",
    "avenue de Toulouse",
    "rue du Pioch de Boutonnet",
    "place Carnot",
    "avenue de la Liberté",
)
_TREES = (
    "Les Platanes",
    "Les Micocouliers",
    "Les Oliviers",
    "Les Arbousiers",
    "Les Chênes Verts",
    "Les Tilleuls",
    "Les Amandiers",
    "Les Figuiers",
    "Les Mûriers",
    "Les Lauriers",
)
# (category, fr, en, oc, capacity range); four schools for each other point of interest.
_POI_KINDS = (
    ("school", "École maternelle", "Nursery School", "Escòla mairala", (90, 180)),
    ("school", "École élémentaire", "Primary School", "Escòla elementària", (150, 350)),
    ("school", "Collège", "Middle School", "Collègi", (400, 800)),
    ("school", "Lycée", "High School", "Licèu", (800, 1500)),
)
_POI_OTHERS = (
    ("library", "Médiathèque", "Library", "Mediatèca", (50, 200)),
    ("park", "Parc", "Park", "Parc", (300, 2000)),
    ("sportsCentre", "Gymnase", "Sports Hall", "Gimnàs", (100, 400)),
)
# (storedWasteKind, binColor, French label)
_WASTE_KINDS = (
    ("other", "grey", "ordures ménagères"),
    ("plastic", "yellow", "emballages"),
    ("glass", "green", "verre"),
    ("paper", "blue", "papiers"),
    ("organic", "brown", "biodéchets"),
)
# European Air Quality Index band limits (µg/m³) and the matching levels.
_EAQI = {
    "no2": (40, 90, 120, 230, 340),
    "pm10": (20, 40, 50, 100, 150),
    "pm25": (10, 20, 25, 50, 75),
    "o3": (50, 100, 130, 240, 380),
}
_AQ_LEVELS = ("good", "fair", "moderate", "poor", "veryPoor", "extremelyPoor")
# The Lez, very roughly, from north to south through the east of the city.
_RIVER = ((3.8930, 43.6330), (3.8990, 43.5930))
_M_PER_DEG_LAT = 111_320.0
_M_PER_DEG_LON = 111_320.0 * math.cos(math.radians(CENTRE[1]))


# --- NGSI-LD building blocks -------------------------------------------------------------


def entity_id(kind: str, n: int) -> str:
    return f"urn:ngsi-ld:{kind}:demo-{n}"


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _datetime(t: datetime) -> dict[str, str]:
    return {"@type": "DateTime", "@value": _iso(t)}


def _date(d: date) -> dict[str, str]:
    return {"@type": "Date", "@value": d.isoformat()}


def _prop(value: Any, **meta: Any) -> Attrs:
    return {"type": "Property", "value": value, **meta}


def _measure(value: Any, unit: str | None, t: datetime) -> Attrs:
    meta: Attrs = {"observedAt": _iso(t)}
    if unit is not None:
        meta["unitCode"] = unit
    return _prop(value, **meta)


def _rel(kind: str, n: int) -> Attrs:
    return {"type": "Relationship", "object": entity_id(kind, n)}


def _point(lon: float, lat: float) -> Attrs:
    return {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, lat]}}


def _vocab(terms: list[str]) -> Attrs:
    return {"type": "VocabProperty", "vocab": terms[0] if len(terms) == 1 else terms}


# --- geography ---------------------------------------------------------------------------

Position = tuple[float, float]


def _offset(pos: Position, dx_m: float, dy_m: float) -> Position:
    return (
        round(pos[0] + dx_m / _M_PER_DEG_LON, 6),
        round(pos[1] + dy_m / _M_PER_DEG_LAT, 6),
    )


def _scatter(rng: random.Random, around: Position, radius_m: float) -> Position:
    """A point uniformly distributed in the disc of `radius_m` around `around`."""
    r = radius_m * math.sqrt(rng.random())
    a = 2 * math.pi * rng.random()
    return _offset(around, r * math.cos(a), r * math.sin(a))


def _district(pos: Position) -> str:
    return min(_DISTRICTS, key=lambda d: (d[1] - pos[0]) ** 2 + (d[2] - pos[1]) ** 2)[0]


def _address(rng: random.Random, pos: Position) -> Attrs:
    return _prop(
        {
            "streetAddress": f"{rng.randint(1, 120)} {rng.choice(_STREETS)}",
            "addressLocality": "Montpellier",
            "postalCode": "34000",
            "addressCountry": "FR",
            "district": _district(pos),
        }
    )


def _square(pos: Position, half_side_m: float) -> Attrs:
    h = half_side_m
    ring = [list(_offset(pos, dx, dy)) for dx, dy in ((-h, -h), (h, -h), (h, h), (-h, h), (-h, -h))]
    return {"type": "GeoProperty", "value": {"type": "Polygon", "coordinates": [ring]}}


# --- time models: readings as functions of (entity number, time) ---------------------------


def _unit(*key: object) -> float:
    """A stable pseudo-random number in [0, 1) for a key (independent of the seed)."""
    digest = hashlib.blake2b("|".join(map(str, key)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _hours(t: datetime) -> float:
    return t.timestamp() / 3600.0


def _local_hour(t: datetime) -> float:
    """Hour of day in Montpellier (CET; the demo ignores summer time)."""
    return (_hours(t) + 1.0) % 24.0


def _rush(t: datetime) -> float:
    """Traffic intensity profile in [0, ~1]: morning and evening peaks over a daytime plateau."""
    h = _local_hour(t)
    peaks = math.exp(-(((h - 8.5) / 1.5) ** 2)) + math.exp(-(((h - 18.0) / 2.0) ** 2))
    return min(1.0, peaks + (0.3 if 7 <= h <= 21 else 0.05))


def _air_temperature(n: int, t: datetime) -> float:
    season = 15.0 - 8.0 * math.cos(2 * math.pi * (t.timetuple().tm_yday - 15) / 365.0)
    day = 5.0 * math.sin(2 * math.pi * (_local_hour(t) - 9.0) / 24.0)
    return round(season + day + 2.0 * _unit("temperature", n), 1)


def _jitter(rng: random.Random, value: float, spread: float) -> float:
    return round(max(0.0, value + rng.uniform(-spread, spread)), 1)


def _waste_state(n: int, t: datetime) -> Attrs:
    """The bin fills linearly and is emptied every `period` hours."""
    period = 48.0 + 120.0 * _unit("WasteContainer", n, "period")
    cycle = _hours(t) / period + _unit("WasteContainer", n, "phase")
    fraction = cycle % 1.0
    emptied = t - timedelta(hours=fraction * period)
    return {
        "fillingLevel": _measure(round(0.02 + 0.95 * fraction, 3), None, t)
        | {"reliability": _prop(round(0.8 + 0.19 * _unit("WasteContainer", n, "rel"), 2))},
        "dateLastEmptying": _prop(_datetime(emptied)),
        "nextActuationDeadline": _prop(_datetime(emptied + timedelta(hours=period))),
    }


def _spot_free(n: int, t: datetime) -> bool:
    """Occupancy redrawn every 20 minutes, busier during the day."""
    slot = int(t.timestamp() // 1200)
    return _unit("ParkingSpot", n, slot) >= 0.25 + 0.6 * _rush(t)


def _spot_state(n: int, t: datetime) -> Attrs:
    return {"status": _measure("free" if _spot_free(n, t) else "occupied", None, t)}


def _site_state(site: int, t: datetime) -> Attrs:
    first = (site - 1) * SPOTS_PER_SITE + 1
    free = sum(_spot_free(n, t) for n in range(first, first + SPOTS_PER_SITE))
    occupied = SPOTS_PER_SITE - free
    return {
        "availableSpotNumber": _measure(free, None, t),
        "occupiedSpotNumber": _measure(occupied, None, t),
        "occupancy": _measure(round(occupied / SPOTS_PER_SITE, 2), None, t),
        "status": _prop(["open", "spacesAvailable" if free else "full"]),
    }


def _air_state(n: int, t: datetime, rng: random.Random) -> Attrs:
    rush, h = _rush(t), _local_hour(t)
    sun = max(0.0, math.sin(math.pi * (h - 8.0) / 12.0))
    values = {
        "no2": _jitter(rng, (15 + 25 * _unit("no2", n)) * (0.5 + 1.5 * rush), 3),
        "pm10": _jitter(rng, 12 + 12 * _unit("pm10", n) + 8 * rush, 2),
        "o3": _jitter(rng, 35 + 70 * sun * (0.7 + 0.6 * _unit("o3", n)), 4),
    }
    values["pm25"] = round(values["pm10"] * 0.55, 1)
    band = max(sum(v > limit for limit in _EAQI[k]) for k, v in values.items())
    attrs = {k: _measure(v, "GQ", t) for k, v in values.items()}
    attrs["airQualityIndex"] = _prop(band + 1, observedAt=_iso(t))
    attrs["airQualityLevel"] = _prop(_AQ_LEVELS[band], observedAt=_iso(t))
    attrs["temperature"] = _measure(_air_temperature(n, t), "CEL", t)
    attrs["relativeHumidity"] = _measure(
        round(0.45 + 0.3 * _unit("rh", n, int(_hours(t))), 2), None, t
    )
    attrs["dateObserved"] = _prop(_datetime(t))
    return attrs


def _noise_state(n: int, t: datetime, rng: random.Random) -> Attrs:
    start = t.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    laeq = _jitter(rng, 47 + 18 * _rush(t) + 8 * _unit("noise", n), 1.5)
    return {
        "LAeq": _measure(laeq, "2N", t),
        "LAmax": _measure(round(laeq + 14 + 8 * _unit("noise-max", n), 1), "2N", t),
        "LAS": _measure(round(laeq + 5, 1), "2N", t),
        "dateObservedFrom": _prop(_datetime(start)),
        "dateObservedTo": _prop(_datetime(start + timedelta(hours=1))),
    }


def _traffic_state(n: int, t: datetime, rng: random.Random) -> Attrs:
    start = t.replace(second=0, microsecond=0) - timedelta(minutes=t.minute % 15 + 15)
    intensity = int(_jitter(rng, 20 + 280 * _rush(t) * (0.4 + 0.6 * _unit("lane", n)), 10))
    occupancy = round(min(0.95, intensity / 380), 2)
    return {
        "intensity": _measure(intensity, None, t),
        "occupancy": _measure(occupancy, None, t),
        "averageVehicleSpeed": _measure(round(50 - 35 * occupancy, 1), "KMH", t),
        "averageHeadwayTime": _measure(round(900 / max(intensity, 1), 1), "SEC", t),
        "congested": _prop(occupancy > 0.6, observedAt=_iso(t)),
        "dateObserved": _prop(_datetime(t)),
        "dateObservedFrom": _prop(_datetime(start)),
        "dateObservedTo": _prop(_datetime(start + timedelta(minutes=15))),
    }


def _river_level(kind: str, n: int, t: datetime) -> float:
    """A calm level with a flash flood every few days (the Lez reacts fast to Cévenol rains)."""
    wave = math.sin(2 * math.pi * (_hours(t) / 216.0 + _unit(kind, n, "phase")))
    return round(0.6 + 0.4 * _unit(kind, n, "base") + 3.2 * max(0.0, wave) ** 8, 2)


def _flood_state(n: int, t: datetime) -> Attrs:
    level = _river_level("FloodMonitoring", n, t)
    status = "Danger" if level >= 4.0 else "Alert" if level >= 2.5 else "Normal"
    return {
        "currentLevel": _measure(level, "MTR", t),
        "measuredDistance": _measure(round(6.0 - level, 2), "MTR", t),
        "floodLevelStatus": _prop(status, observedAt=_iso(t)),
        "observationDateTime": _prop(_datetime(t)),
    }


def _water_state(n: int, t: datetime) -> Attrs:
    level = _river_level("WaterObserved", n, t)
    return {
        "waterLevel": _measure(level, "MTR", t),
        "flow": _measure(round(0.8 + 6.0 * level**1.8, 2), "MQS", t),
        "dateObserved": _prop(_datetime(t)),
    }


def _light_state(n: int, t: datetime) -> Attrs:
    h = _local_hour(t)
    state = "off" if 7.5 <= h < 17.5 else "low" if 1.0 <= h < 5.0 else "on"
    level = {"off": 0.0, "low": 0.4, "on": 1.0}[state]
    rating = 40 + 10 * int(4 * _unit("Streetlight", n, "power"))
    return {
        "powerState": _prop(state, observedAt=_iso(t)),
        "illuminanceLevel": _measure(level, None, t),
        "powerConsumption": _measure(round(rating * level, 1), "WTT", t),
    }


# --- the city ----------------------------------------------------------------------------


@dataclass
class _City:
    """Counts and positions shared by the builders of one generated city."""

    scale: int
    now: datetime
    positions: dict[str, list[Position]] = field(default_factory=dict)

    def count(self, kind: str) -> int:
        return BASE_COUNTS[kind] * self.scale

    def pos(self, kind: str, n: int) -> Position:
        return self.positions[kind][n - 1]

    def device_number(self, kind: str, n: int) -> int:
        offset = 0
        for sensed in SENSED:
            if sensed == kind:
                return offset + n
            offset += self.count(sensed)
        raise KeyError(kind)

    def n_schools(self) -> int:
        return sum(1 for n in range(1, self.count("PointOfInterest") + 1) if n % 5)


def _check(scale: int, now: datetime | None) -> datetime:
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise InvalidRequest(f"demo scale must be a positive integer, got {scale!r}")
    if now is None:
        return REFERENCE_NOW
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


def _school_number(k: int) -> int:
    """The point of interest number of the k-th school (every fifth point is not a school)."""
    return k + (k - 1) // 4


def _layout(rng: random.Random, city: _City) -> None:
    p = city.positions
    p["PointOfInterest"] = [
        _scatter(rng, CENTRE, 2800) for _ in range(city.count("PointOfInterest"))
    ]
    p["StreetlightGroup"] = [
        _scatter(rng, CENTRE, 2500) for _ in range(city.count("StreetlightGroup"))
    ]
    groups = city.count("StreetlightGroup")
    p["Streetlight"] = [
        _scatter(rng, p["StreetlightGroup"][n % groups], 300)
        for n in range(city.count("Streetlight"))
    ]
    p["WasteContainer"] = [
        _scatter(rng, CENTRE, RADIUS_M) for _ in range(city.count("WasteContainer"))
    ]
    p["OffStreetParking"] = [
        _scatter(rng, CENTRE, 2000) for _ in range(city.count("OffStreetParking"))
    ]
    p["ParkingSpot"] = [
        _scatter(rng, p["OffStreetParking"][n // SPOTS_PER_SITE], 60)
        for n in range(city.count("ParkingSpot"))
    ]
    schools = city.n_schools()
    for kind in ("AirQualityObserved", "NoiseLevelObserved"):
        p[kind] = [
            _scatter(rng, city.pos("PointOfInterest", _school_number(n % schools + 1)), 150)
            for n in range(city.count(kind))
        ]
    p["TrafficFlowObserved"] = [
        _scatter(rng, CENTRE, 2500) for _ in range(city.count("TrafficFlowObserved"))
    ]
    for kind in ("FloodMonitoring", "WaterObserved"):
        total = city.count(kind)
        p[kind] = [_on_river(rng, (n + 0.5) / total) for n in range(total)]


def _on_river(rng: random.Random, fraction: float) -> Position:
    (lon0, lat0), (lon1, lat1) = _RIVER
    on_line = (lon0 + (lon1 - lon0) * fraction, lat0 + (lat1 - lat0) * fraction)
    return _scatter(rng, on_line, 40)


def _base(kind: str, n: int, city: _City, name: str | Attrs) -> Entity:
    lon, lat = city.pos(kind, n)
    return {
        "id": entity_id(kind, n),
        "type": kind,
        "name": _prop(name) if isinstance(name, str) else name,
        "location": _point(lon, lat),
    }


def _days_ago(rng: random.Random, city: _City, low: int, high: int) -> datetime:
    return city.now - timedelta(days=rng.randint(low, high), minutes=rng.randint(0, 1439))


# --- builders, one per type --------------------------------------------------------------


def _point_of_interest(rng: random.Random, city: _City, n: int) -> Entity:
    round_, slot = divmod(n - 1, 5)
    if slot < 4:
        category, fr, en, oc, capacity = _POI_KINDS[slot]
    else:
        category, fr, en, oc, capacity = _POI_OTHERS[round_ % len(_POI_OTHERS)]
    label = _TREES[(n - 1) % len(_TREES)]
    suffix = f" {(n - 1) // len(_TREES) + 1}" if n > len(_TREES) else ""
    pos = city.pos("PointOfInterest", n)
    names = {
        "fr": f"{fr} {label}{suffix}",
        "en": f"{label}{suffix} {en}",
        "oc": f"{oc} {label}{suffix}",
    }
    entity = _base("PointOfInterest", n, city, {"type": "LanguageProperty", "languageMap": names})
    entity |= {
        "description": _prop(f"Synthetic {en.lower()} of the Urbis demo city"),
        "category": _prop([category]),
        "address": _address(rng, pos),
        "areaServed": _prop(_district(pos)),
        "capacity": _prop(rng.randint(*capacity)),
        "dataProvider": _prop(PROVIDER),
    }
    return entity


def _streetlight_group(rng: random.Random, city: _City, n: int) -> Entity:
    pos = city.pos("StreetlightGroup", n)
    entity = _base("StreetlightGroup", n, city, f"Secteur d'éclairage {n}")
    state = _light_state(n, city.now)
    entity |= {
        "location": _square(pos, 350),
        "description": _prop("Streetlights switched together by one control cabinet"),
        "areaServed": _prop(_district(pos)),
        "powerState": state["powerState"],
        "illuminanceLevel": state["illuminanceLevel"],
        "dateLastSwitchingOn": _prop(_datetime(_days_ago(rng, city, 0, 1))),
        "dataProvider": _prop(PROVIDER),
    }
    return entity


def _streetlight(rng: random.Random, city: _City, n: int) -> Entity:
    pos = city.pos("Streetlight", n)
    group = (n - 1) % city.count("StreetlightGroup") + 1
    broken = rng.random() < 0.03
    entity = _base("Streetlight", n, city, f"Lampadaire {n}")
    entity |= {
        "address": _address(rng, pos),
        "areaServed": _prop(_district(pos)),
        "status": _prop(
            rng.choice(["defectiveLamp", "brokenLantern", "columnIssue"]) if broken else "ok"
        ),
        **_light_state(n, city.now),
        "lanternHeight": _prop(rng.choice([4, 6, 8, 10, 12]), unitCode="MTR"),
        "locationCategory": _prop(
            rng.choice(["road", "sidewalk", "park", "pedestrianPath", "parking"])
        ),
        "controllingMethod": _prop("group"),
        "dateServiceStarted": _prop(_date(_days_ago(rng, city, 800, 9000).date())),
        "dateLastLampChange": _prop(_datetime(_days_ago(rng, city, 30, 1500))),
        "circuit": _prop(f"C-{group:03d}-{rng.randint(1, 9)}"),
        "streetPoleNum": _prop(str(rng.randint(1, 9999))),
        "refStreetlightGroup": _rel("StreetlightGroup", group),
        "provider": _prop(_vendor("Streetlight", n)),
        "dataProvider": _prop(PROVIDER),
    }
    return entity


def _waste_container(rng: random.Random, city: _City, n: int) -> Entity:
    pos = city.pos("WasteContainer", n)
    kind, colour, label = rng.choice(_WASTE_KINDS)
    underground = rng.random() < 0.3
    entity = _base("WasteContainer", n, city, f"Conteneur {label} {n}")
    temperature = _air_temperature(n, city.now) + (2.0 if kind == "organic" else 0.0)
    if underground:  # two probes: near the lid and at the bottom of the pit
        temperatures: Any = [
            _measure(round(temperature + 1.5, 1), "CEL", city.now)
            | {"datasetId": "urn:ngsi-ld:Dataset:lid"},
            _measure(round(temperature - 3.0, 1), "CEL", city.now)
            | {"datasetId": "urn:ngsi-ld:Dataset:base"},
        ]
    else:
        temperatures = _measure(round(temperature, 1), "CEL", city.now)
    status = rng.choices(["ok", "lidOpen", "dropped", "vandalized"], [0.94, 0.03, 0.02, 0.01])[0]
    entity |= {
        "description": _prop(
            f"{'Underground' if underground else 'Street'} container for {kind} waste"
        ),
        "address": _address(rng, pos),
        "areaServed": _prop(_district(pos)),
        "serialNumber": _prop(f"WC-{rng.randrange(16**6):06X}"),
        "category": _prop(["underground" if underground else "fixed"]),
        "storedWasteKind": _prop(kind),
        "storedWasteOrigin": _prop(rng.choice(["household", "household", "municipal"])),
        "binColor": _prop(colour),
        "binCapacity": _prop(3000 if underground else rng.choice([340, 660, 1000]), unitCode="LTR"),
        **_waste_state(n, city.now),
        "temperature": temperatures,
        "status": _prop(status, observedAt=_iso(city.now)),
        "dateServiceStarted": _prop(_date(_days_ago(rng, city, 200, 4000).date())),
        "actuationHours": _prop("Mo-Sa 05:00-12:00"),
        "responsible": _prop("Montpellier Méditerranée Métropole"),
        "refDevice": _rel("Device", city.device_number("WasteContainer", n)),
        "dataProvider": _prop(PROVIDER),
    }
    return entity


def _off_street_parking(rng: random.Random, city: _City, n: int) -> Entity:
    pos = city.pos("OffStreetParking", n)
    district = _district(pos)
    entity = _base("OffStreetParking", n, city, f"Parking {district} {n}")
    entity |= {
        "description": _prop("Underground public car park; each spot has an occupancy sensor"),
        "address": _address(rng, pos),
        "areaServed": _prop(district),
        "category": _prop(["underground", "public", "feeCharged", "shortTerm"]),
        "allowedVehicleType": _prop(["car"]),
        "layout": _prop(["multiLevel"]),
        "totalSpotNumber": _prop(SPOTS_PER_SITE),
        **_site_state(n, city.now),
        "lowestFloor": _prop(-rng.randint(1, 4)),
        "highestFloor": _prop(0),
        "maximumParkingDuration": _prop("PT24H"),
        "openingHours": _prop("Mo-Su 00:00-24:00"),
        "priceRatePerMinute": _prop(round(rng.uniform(0.02, 0.05), 3)),
        "priceCurrency": _prop("EUR"),
        "dataProvider": _prop(PROVIDER),
    }
    return entity


def _parking_spot(rng: random.Random, city: _City, n: int) -> Entity:
    site = (n - 1) // SPOTS_PER_SITE + 1
    entity = _base("ParkingSpot", n, city, f"P{site}-{(n - 1) % SPOTS_PER_SITE + 1:03d}")
    entity |= {
        "description": _prop(f"Spot {(n - 1) % SPOTS_PER_SITE + 1} of car park {site}"),
        "areaServed": _prop(_district(city.pos("ParkingSpot", n))),
        **_spot_state(n, city.now),
        "category": _prop(["offStreet"]),
        "width": _prop(round(rng.uniform(2.3, 2.6), 2), unitCode="MTR"),
        "length": _prop(round(rng.uniform(4.8, 5.2), 2), unitCode="MTR"),
        "refParkingSite": _rel("OffStreetParking", site),
        "refDevice": _rel("Device", city.device_number("ParkingSpot", n)),
        "dataProvider": _prop(PROVIDER),
    }
    return entity


def _near_school(city: _City, n: int) -> int:
    return _school_number((n - 1) % city.n_schools() + 1)


def _air_quality(rng: random.Random, city: _City, n: int) -> Entity:
    pos = city.pos("AirQualityObserved", n)
    entity = _base("AirQualityObserved", n, city, f"Station qualité de l'air {n}")
    entity |= {
        "address": _address(rng, pos),
        "areaServed": _prop(_district(pos)),
        **_air_state(n, city.now, rng),
        "reliability": _prop(round(rng.uniform(0.7, 0.95), 2)),
        "typeofLocation": _prop("outdoor"),
        "refDevice": _rel("Device", city.device_number("AirQualityObserved", n)),
        "refPointOfInterest": _rel("PointOfInterest", _near_school(city, n)),
        "dataProvider": _prop(PROVIDER),
    }
    return entity


def _noise_level(rng: random.Random, city: _City, n: int) -> Entity:
    pos = city.pos("NoiseLevelObserved", n)
    entity = _base("NoiseLevelObserved", n, city, f"Sonomètre {n}")
    entity |= {
        "address": _address(rng, pos),
        "areaServed": _prop(_district(pos)),
        **_noise_state(n, city.now, rng),
        "LAeq_d": _prop(round(rng.uniform(52, 66), 1), unitCode="2N"),
        "sonometerClass": _prop(rng.choice(["1", "2"])),
        "refDevice": _rel("Device", city.device_number("NoiseLevelObserved", n)),
        "refPointOfInterest": _rel("PointOfInterest", _near_school(city, n)),
        "dataProvider": _prop(PROVIDER),
    }
    return entity


def _traffic_flow(rng: random.Random, city: _City, n: int) -> Entity:
    start = city.pos("TrafficFlowObserved", n)
    heading = rng.uniform(0, 2 * math.pi)
    line = [
        list(_offset(start, 120 * k * math.cos(heading), 120 * k * math.sin(heading)))
        for k in range(3)
    ]
    entity = _base("TrafficFlowObserved", n, city, f"Boucle de comptage {n}")
    entity |= {
        "location": {"type": "GeoProperty", "value": {"type": "LineString", "coordinates": line}},
        "address": _address(rng, start),
        "areaServed": _prop(_district(start)),
        **_traffic_state(n, city.now, rng),
        "averageVehicleLength": _prop(round(rng.uniform(4.2, 5.5), 2), unitCode="MTR"),
        "laneId": _prop(rng.randint(1, 3)),
        "laneDirection": _prop(rng.choice(["forward", "backward"])),
        "reversedLane": _prop(False),
        "refDevice": _rel("Device", city.device_number("TrafficFlowObserved", n)),
        "dataProvider": _prop(PROVIDER),
    }
    return entity


def _flood_monitoring(rng: random.Random, city: _City, n: int) -> Entity:
    pos = city.pos("FloodMonitoring", n)
    entity = _base("FloodMonitoring", n, city, f"Station de crue du Lez {n}")
    entity |= {
        "address": _address(rng, pos),
        "areaServed": _prop(_district(pos)),
        "stationID": _prop(f"LEZ{n:03d}"),
        **_flood_state(n, city.now),
        "referenceLevel": _prop(6.0, unitCode="MTR"),
        "alertLevel": _prop(2.5, unitCode="MTR"),
        "dangerLevel": _prop(4.0, unitCode="MTR"),
        "refDevice": _rel("Device", city.device_number("FloodMonitoring", n)),
        "dataProvider": _prop(PROVIDER),
    }
    return entity


def _water_observed(rng: random.Random, city: _City, n: int) -> Entity:
    pos = city.pos("WaterObserved", n)
    entity = _base("WaterObserved", n, city, f"Hydromètre du Lez {n}")
    entity |= {
        "description": _prop("Water level and flow of the Lez river"),
        "alternateName": _prop(f"LEZ-HYD-{n:03d}"),
        "areaServed": _prop(_district(pos)),
        **_water_state(n, city.now),
        "refDevice": _rel("Device", city.device_number("WaterObserved", n)),
        "dataProvider": _prop(PROVIDER),
    }
    return entity


def _device(rng: random.Random, city: _City, kind: str, n: int) -> Entity:
    number = city.device_number(kind, n)
    lon, lat = city.pos(kind, n)
    battery = round(rng.uniform(0.15, 1.0), 2)
    installed = _days_ago(rng, city, 60, 1500)
    return {
        "id": entity_id("Device", number),
        "type": "Device",
        "name": _prop(f"Capteur {number}"),
        "location": _point(lon, lat),
        "deviceCategory": _prop(["sensor"]),
        "controlledProperty": _vocab(SENSED[kind]),
        "controlledAsset": _rel(kind, n),
        "serialNumber": _prop(f"SN-{rng.randrange(16**8):08X}"),
        "hardwareVersion": _prop(rng.choice(["A2", "B1"])),
        "firmwareVersion": _prop(rng.choice(["1.4.2", "1.5.0", "2.0.1"])),
        "supportedProtocol": _prop([rng.choice(["lora", "nb-iot", "sigfox"])]),
        "areaServed": _prop(_district((lon, lat))),
        "batteryLevel": _measure(battery, None, city.now),
        "rssi": _measure(round(rng.uniform(0.3, 1.0), 2), None, city.now),
        "deviceState": _prop("lowBattery" if battery < 0.25 else "ok", observedAt=_iso(city.now)),
        "provider": _prop(_vendor("Device", number)),
        "owner": _prop([_OWNERS[kind]]),
        "dateInstalled": _prop(_datetime(installed)),
        "dateFirstUsed": _prop(_datetime(installed + timedelta(days=1))),
        "dateLastCalibration": _prop(_datetime(_days_ago(rng, city, 1, 60))),
        "dateLastValueReported": _prop(_datetime(city.now)),
        "dataProvider": _prop(PROVIDER),
    }


# (source type, category, subCategory, severity, description)
_ALERTS = (
    ("FloodMonitoring", "naturalDisaster", "floodRisk", "medium", "Rising water level on the Lez"),
    ("AirQualityObserved", "environment", "airPollution", "low", "Ozone episode expected"),
    ("TrafficFlowObserved", "traffic", "roadWorks", "informational", "Road works, one lane closed"),
)


def _alert(rng: random.Random, city: _City, n: int) -> Entity:
    source, category, sub, severity, text = _ALERTS[(n - 1) % len(_ALERTS)]
    source_n = rng.randint(1, city.count(source))
    issued = city.now - timedelta(minutes=rng.randint(5, 180))
    lon, lat = city.pos(source, source_n)
    return {
        "id": entity_id("Alert", n),
        "type": "Alert",
        "location": _point(lon, lat),
        "description": _prop(text),
        "category": _prop(category),
        "subCategory": _prop(sub),
        "severity": _prop(severity),
        "alertSource": _rel(source, source_n),
        "dateIssued": _prop(_datetime(issued)),
        "validFrom": _prop(_datetime(issued)),
        "validTo": _prop(_datetime(issued + timedelta(hours=12))),
        "dataProvider": _prop(PROVIDER),
    }


# Vendors (Smart Data Models `provider`) and operators (`owner`) of the sensors and lamps, picked
# by a stable hash of the entity number so that the seeded layout above does not change.
_VENDORS = ("Lumen Systems", "Citelum Tech", "Sensoria")
_OWNERS = {
    "WasteContainer": "urn:ngsi-ld:Organization:waste-department",
    "ParkingSpot": "urn:ngsi-ld:Organization:parking-operator",
    "AirQualityObserved": "urn:ngsi-ld:Organization:air-quality-agency",
    "NoiseLevelObserved": "urn:ngsi-ld:Organization:air-quality-agency",
    "TrafficFlowObserved": "urn:ngsi-ld:Organization:mobility-department",
    "FloodMonitoring": "urn:ngsi-ld:Organization:river-authority",
    "WaterObserved": "urn:ngsi-ld:Organization:river-authority",
}
# Districts: Voronoi cells of the neighbourhood centres (in degrees, so a point's cell is the
# district `_district` names), clipped to a box around the demo disc and cut into `scale`
# latitude bands. They are points of interest of category "district" with a Polygon location.
_DISTRICT_HALF_SIDE_M = 3300.0


def _vendor(kind: str, n: int) -> str:
    return _VENDORS[int(len(_VENDORS) * _unit(kind, n, "vendor"))]


def _district_cells(scale: int) -> list[tuple[str, list[list[float]]]]:
    """(district name, exterior ring) of every district cell, in a fixed order."""
    west, south = _offset(CENTRE, -_DISTRICT_HALF_SIDE_M, -_DISTRICT_HALF_SIDE_M)
    east, north = _offset(CENTRE, _DISTRICT_HALF_SIDE_M, _DISTRICT_HALF_SIDE_M)
    frame = shapely.box(west, south, east, north)
    centres = [shapely.Point(lon, lat) for _, lon, lat in _DISTRICTS]
    cells = shapely.voronoi_polygons(shapely.MultiPoint(centres), extend_to=frame).geoms
    out = []
    for (name, _, _), centre in zip(_DISTRICTS, centres, strict=True):
        cell = next(c for c in cells if c.contains(centre)).intersection(frame)
        _, low, _, high = cell.bounds
        for band in range(scale):
            cut = shapely.box(
                west,
                low + (high - low) * band / scale,
                east,
                low + (high - low) * (band + 1) / scale,
            )
            part = shapely.normalize(cell.intersection(cut))
            ring = [[round(x, 6), round(y, 6)] for x, y in part.exterior.coords]
            label = name if scale == 1 else f"{name} {band + 1}"
            out.append((label, ring))
    return out


def _districts(city: _City) -> Iterator[Entity]:
    first = city.count("PointOfInterest")
    for k, (name, ring) in enumerate(_district_cells(city.scale), start=1):
        yield {
            "id": entity_id("PointOfInterest", first + k),
            "type": "PointOfInterest",
            "name": _prop(name),
            "location": {
                "type": "GeoProperty",
                "value": {"type": "Polygon", "coordinates": [ring]},
            },
            "description": _prop("Synthetic district of the Urbis demo city"),
            "category": _prop(["district"]),
            "areaServed": _prop(name),
            "dataProvider": _prop(PROVIDER),
        }


Builder = Callable[[random.Random, _City, int], Entity]
_BUILDERS: tuple[tuple[str, Builder], ...] = (
    ("PointOfInterest", _point_of_interest),
    ("StreetlightGroup", _streetlight_group),
    ("Streetlight", _streetlight),
    ("WasteContainer", _waste_container),
    ("OffStreetParking", _off_street_parking),
    ("ParkingSpot", _parking_spot),
    ("AirQualityObserved", _air_quality),
    ("NoiseLevelObserved", _noise_level),
    ("TrafficFlowObserved", _traffic_flow),
    ("FloodMonitoring", _flood_monitoring),
    ("WaterObserved", _water_observed),
)


def generate(*, seed: int = 42, scale: int = 1, now: datetime | None = None) -> Iterator[Entity]:
    """Yield the demo city's entities (normalized, compacted with ``CONTEXT_ID``).

    ``scale`` multiplies every count (scale 1: 796 entities); ``now`` (UTC if naive) dates the
    readings, ``REFERENCE_NOW`` when omitted so the output depends on nothing but the arguments.
    """
    city = _City(scale=scale, now=_check(scale, now))
    rng = random.Random(seed)
    _layout(rng, city)
    for kind, build in _BUILDERS:
        for n in range(1, city.count(kind) + 1):
            yield build(rng, city, n)
    for kind in SENSED:
        for n in range(1, city.count(kind) + 1):
            yield _device(rng, city, kind, n)
    for n in range(1, city.count("Alert") + 1):
        yield _alert(rng, city, n)
    yield from _districts(city)


def dataset_info(graph: str) -> DatasetInfo:
    """What the metadata graph says about the demo city's dataset."""
    return DatasetInfo(
        graph=graph,
        title="Urbis demo city (Montpellier, synthetic)",
        source="demo/city.py",
        connector="demo",
        publisher=PROVIDER,
        licence="https://creativecommons.org/publicdomain/zero/1.0/",
        description="Deterministic synthetic Smart Data Models entities for examples and tests",
    )


def _sample(rng: random.Random, count: int, fraction: float) -> list[int]:
    return sorted(rng.sample(range(1, count + 1), max(1, round(count * fraction))))


def updates(rng: random.Random, now: datetime, *, scale: int = 1) -> Iterator[tuple[str, Attrs]]:
    """Yield (entity id, normalized attribute fragment) for one tick of the living demo.

    A tenth of the bins and parking spots, a twentieth of the streetlights and every station and
    car park report their state at ``now``; the fragments fit a city generated with this ``scale``
    (any seed) and agree with what ``generate(now=now)`` gives, up to measurement noise.
    """
    city = _City(scale=scale, now=_check(scale, now))
    t = city.now
    for n in _sample(rng, city.count("WasteContainer"), 0.1):
        yield entity_id("WasteContainer", n), _waste_state(n, t)
    for n in _sample(rng, city.count("ParkingSpot"), 0.1):
        yield entity_id("ParkingSpot", n), _spot_state(n, t)
    for n in range(1, city.count("OffStreetParking") + 1):
        yield entity_id("OffStreetParking", n), _site_state(n, t)
    for n in _sample(rng, city.count("Streetlight"), 0.05):
        yield entity_id("Streetlight", n), _light_state(n, t)
    stations: tuple[tuple[str, Callable[[int], Attrs]], ...] = (
        ("AirQualityObserved", lambda n: _air_state(n, t, rng)),
        ("NoiseLevelObserved", lambda n: _noise_state(n, t, rng)),
        ("TrafficFlowObserved", lambda n: _traffic_state(n, t, rng)),
        ("FloodMonitoring", lambda n: _flood_state(n, t)),
        ("WaterObserved", lambda n: _water_state(n, t)),
    )
    for kind, state in stations:
        for n in range(1, city.count(kind) + 1):
            yield entity_id(kind, n), state(n)
