"""The embedded store on disk: data, tenants and the spatial index survive a restart."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from urbis.twin.changes import WriteContext
from urbis.twin.context import ContextResolver
from urbis.twin.core import Twin
from urbis.twin.geo import parse_geoq
from urbis.twin.model import EntityReader
from urbis.twin.query.plan import EntityQuery
from urbis.twin.store.oxigraph import OxigraphBackend

TERMS = ContextResolver().resolve(None)


def light(n: int, lon: float) -> dict[str, object]:
    return {
        "id": f"urn:ngsi-ld:Streetlight:{n}",
        "type": "Streetlight",
        "powerState": "on",
        "location": {"type": "Point", "coordinates": [lon, 43.61]},
    }


def test_restart_keeps_entities_tenants_and_geometries(tmp_path: Path) -> None:
    twin = Twin(OxigraphBackend(tmp_path))
    reader = EntityReader(TERMS)
    writer = WriteContext(reason="test")
    twin.tenant("", create=True).create(reader.entity(light(1, 3.87)), context=writer)
    twin.tenant("utility", create=True).create(reader.entity(light(2, 3.90)), context=writer)
    twin.close()

    reopened = Twin(OxigraphBackend(tmp_path))
    assert sorted(reopened.backend.tenants()) == ["", "utility"]
    service = reopened.tenant("")
    assert service.get("urn:ngsi-ld:Streetlight:1")["type"] == [
        "https://uri.etsi.org/ngsi-ld/default-context/Streetlight"
    ]
    parsed = parse_geoq("near;maxDistance==100", "Point", "[3.87,43.61]", None)
    assert parsed is not None
    geo = replace(parsed, geoproperty=TERMS.expand(parsed.geoproperty))
    found = service.query(EntityQuery(geo=geo, count=True))
    assert found.total == 1 and found.documents[0]["id"] == "urn:ngsi-ld:Streetlight:1"
    other = reopened.tenant("utility")
    assert other.query(EntityQuery(geo=geo, count=True)).total == 0
    reopened.close()
