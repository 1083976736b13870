"""Real OGC servers on loopback for the connector tests: MapServer (WFS 2.0) and pygeoapi.

MapServer is a CGI program: `MapServerCGI` is a small threading HTTP server that sets the CGI
environment and runs `mapserv` once per request, as Apache would. MapServer 8 refuses to run
without `MAPSERVER_CONFIG_FILE`, so each instance writes one with a `MAPS` alias per mapfile; the
URL path names the alias (`/lights` serves the `lights` mapfile).

pygeoapi reads its configuration at import time, so `running_pygeoapi` writes the config and the
OpenAPI document, sets the environment, then imports its Flask app and serves it with werkzeug in
a thread. It can run once per process (the module keeps its first configuration).

The data are generated here (pyshp, Lambert-93) so the tests know every value; where
../shared exists the real Montpellier street lights can be served too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import shapefile

from urbis.connectors.base import Connector, Cursor, Feature
from urbis.testing.server import free_port

MAPSERV = shutil.which("mapserv")

# Lambert-93 as the ESRI WKT a GIS department's export carries in its .prj.
LAMBERT93_PRJ = (
    'PROJCS["RGF93_Lambert_93",GEOGCS["GCS_RGF_1993",DATUM["D_RGF_1993",'
    'SPHEROID["GRS_1980",6378137.0,298.257222101]],PRIMEM["Greenwich",0.0],'
    'UNIT["Degree",0.0174532925199433]],PROJECTION["Lambert_Conformal_Conic"],'
    'PARAMETER["False_Easting",700000.0],PARAMETER["False_Northing",6600000.0],'
    'PARAMETER["Central_Meridian",3.0],PARAMETER["Standard_Parallel_1",44.0],'
    'PARAMETER["Standard_Parallel_2",49.0],PARAMETER["Latitude_Of_Origin",46.5],'
    'UNIT["Meter",1.0]]'
)

LIGHT_COUNT = 317  # not a multiple of any page size the tests use
PARCEL_COUNT = 24  # 22 squares, one with a hole, one invalid bowtie

# A known point: the first street light, near the Place de la Comédie in Montpellier. Its lon/lat
# were computed once with PROJ (EPSG:2154 -> EPSG:4326, always_xy) and are kept as literals, so a
# wrong axis order or a wrong CRS anywhere in the chain shows.
KNOWN_LIGHT = "L0000"
KNOWN_LIGHT_L93 = (770_805.25, 6_279_010.5)
KNOWN_LIGHT_LONLAT = (3.876756597916444, 43.606609647801825)


def light_xy(i: int) -> tuple[float, float]:
    """Where generated light number i stands (Lambert-93 metres)."""
    return KNOWN_LIGHT_L93[0] + (i % 20) * 37.5, KNOWN_LIGHT_L93[1] + (i // 20) * 41.25


def light_height(i: int) -> float:
    return 4.0 + (i % 7) * 0.5


def make_lambert_shapefiles(directory: Path) -> dict[str, Path]:
    """Write `lights` (points) and `parcels` (polygons) in Lambert-93; return their base paths."""
    directory.mkdir(parents=True, exist_ok=True)
    lights = directory / "lights"
    with shapefile.Writer(str(lights), shapeType=shapefile.POINT, encoding="utf-8") as w:
        w.field("ident", "C", 16)
        w.field("name", "C", 60)
        w.field("height", "N", 8, 2)
        w.field("kind", "C", 30)
        for i in range(LIGHT_COUNT):
            w.point(*light_xy(i))
            kind = "LANTERNE" if i % 3 else "PROJECTEUR"
            w.record(f"L{i:04d}", f"Candélabre n°{i}", light_height(i), kind)
    parcels = directory / "parcels"
    with shapefile.Writer(str(parcels), shapeType=shapefile.POLYGON, encoding="utf-8") as w:
        w.field("ident", "C", 16)
        w.field("label", "C", 40)
        for i in range(PARCEL_COUNT - 2):
            x0, y0 = 771_000.0 + i * 120.0, 6_280_000.0
            # Shapefile outer rings run clockwise.
            w.poly([[(x0, y0), (x0, y0 + 100), (x0 + 100, y0 + 100), (x0 + 100, y0), (x0, y0)]])
            w.record(f"P{i:03d}", f"parcel {i}")
        x0, y0 = 771_000.0, 6_281_000.0
        outer = [(x0, y0), (x0, y0 + 300), (x0 + 300, y0 + 300), (x0 + 300, y0), (x0, y0)]
        hole = [(x0 + 100, y0 + 100), (x0 + 200, y0 + 100), (x0 + 200, y0 + 200)]
        w.poly([outer, [*hole, (x0 + 100, y0 + 200), (x0 + 100, y0 + 100)]])
        w.record("P-HOLE", "square with a courtyard")
        x0, y0 = 772_000.0, 6_281_000.0
        bowtie = [(x0, y0), (x0 + 100, y0 + 100), (x0 + 100, y0), (x0, y0 + 100), (x0, y0)]
        w.poly([bowtie])
        w.record("P-BOWTIE", "self-intersecting")
    for base in (lights, parcels):
        base.with_suffix(".prj").write_text(LAMBERT93_PRJ)
    return {"lights": lights, "parcels": parcels}


@dataclass(frozen=True)
class Layer:
    """One MapServer layer: a Shapefile in Lambert-93."""

    name: str
    data: Path  # the Shapefile without its extension
    geometry: str = "POINT"  # POINT, LINE or POLYGON
    featureid: str | None = "ident"  # the field behind gml:id
    encoding: str | None = None  # the DBF's encoding when not UTF-8 (e.g. CP1252)


def mapfile_text(online_resource: str, layers: Sequence[Layer]) -> str:
    """A mapfile serving `layers` by WFS 2.0 in GML 3.2 and GeoJSON, in their own CRS."""
    blocks = []
    for layer in layers:
        featureid = f'      "gml_featureid" "{layer.featureid}"\n' if layer.featureid else ""
        encoding = f'    ENCODING "{layer.encoding}"\n' if layer.encoding else ""
        blocks.append(
            f"""  LAYER
    NAME "{layer.name}"
    TYPE {layer.geometry}
    STATUS ON
    DATA "{layer.data}"
{encoding}    TEMPLATE "void"
    PROJECTION "init=epsg:2154" END
    METADATA
      "wfs_title" "{layer.name}"
      "wfs_srs" "EPSG:2154 EPSG:4326"
      "gml_include_items" "all"
      "gml_types" "auto"
{featureid}    END
  END
"""
        )
    return f"""MAP
  NAME "urbis_test"
  EXTENT 600000 6100000 900000 6400000
  PROJECTION "init=epsg:2154" END
  WEB
    METADATA
      "ows_title" "Urbis test WFS"
      "ows_onlineresource" "{online_resource}"
      "ows_srs" "EPSG:2154 EPSG:4326"
      "ows_enable_request" "*"
      "wfs_getfeature_formatlist" "geojson,application/gml+xml; version=3.2"
    END
  END
  OUTPUTFORMAT
    NAME "geojson"
    DRIVER "OGR/GEOJSON"
    MIMETYPE "application/json; subtype=geojson"
    FORMATOPTION "STORAGE=stream"
    FORMATOPTION "FORM=SIMPLE"
    FORMATOPTION "LCO:WRITE_NAME=NO"
  END
{"".join(blocks)}END
"""


class _CGIHandler(BaseHTTPRequestHandler):
    """Runs `mapserv` for one request with the CGI environment a web server would set."""

    server: _MapServerHTTP
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        self._run(b"")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._run(self.rfile.read(length))

    def log_message(self, format: str, *args: Any) -> None:  # quiet: pytest shows failures
        pass

    def _run(self, body: bytes) -> None:
        path, _, query = self.path.partition("?")
        alias = path.strip("/")
        if alias == "unavailable":  # a server in trouble, for the SourceUnavailable tests
            self._reply(503, {"Content-Type": "text/plain"}, b"down for maintenance")
            return
        if alias not in self.server.aliases:
            self._reply(404, {"Content-Type": "text/plain"}, b"no such map")
            return
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "MAPSERVER_CONFIG_FILE": str(self.server.config_file),
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.0",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": str(self.server.server_address[1]),
            "SCRIPT_NAME": path,
            "REQUEST_METHOD": self.command,
            "QUERY_STRING": f"map={alias}&{query}" if query else f"map={alias}",
        }
        if self.command == "POST":
            env["CONTENT_TYPE"] = self.headers.get("Content-Type", "text/xml")
            env["CONTENT_LENGTH"] = str(len(body))
        self.server.requests.append((self.command, self.path))
        done = subprocess.run(
            [self.server.mapserv], input=body, env=env, capture_output=True, timeout=120
        )
        head, sep, payload = done.stdout.partition(b"\r\n\r\n")
        if not sep:
            head, sep, payload = done.stdout.partition(b"\n\n")
        if done.returncode != 0 or not sep:
            self._reply(500, {"Content-Type": "text/plain"}, done.stdout + done.stderr)
            return
        status, headers = 200, {}
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers[name.strip()] = value.strip()
        self._reply(status, headers, payload)

    def _reply(self, status: int, headers: Mapping[str, str], payload: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _MapServerHTTP(ThreadingHTTPServer):
    daemon_threads = True
    mapserv: str
    config_file: Path
    aliases: set[str]
    requests: list[tuple[str, str]]


@dataclass
class MapServerCGI:
    """A running MapServer: `url(alias)` is the WFS endpoint of one mapfile."""

    base: str
    requests: list[tuple[str, str]]  # (method, path) of every request served, for the tests

    def url(self, alias: str) -> str:
        return f"{self.base}/{alias}"


@contextmanager
def running_mapserver(workdir: Path, maps: Mapping[str, Sequence[Layer]]) -> Iterator[MapServerCGI]:
    """Serve each mapfile of `maps` (alias -> layers) through `mapserv` on a free port."""
    if MAPSERV is None:
        pytest.skip("mapserv is not installed (Debian package mapserver-bin)")
    workdir.mkdir(parents=True, exist_ok=True)
    httpd = _MapServerHTTP(("127.0.0.1", 0), _CGIHandler)
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    aliases = []
    for alias, layers in maps.items():
        mapfile = workdir / f"{alias}.map"
        mapfile.write_text(mapfile_text(f"{base}/{alias}?", layers), encoding="utf-8")
        aliases.append(f'    {alias} "{mapfile}"')
    config = workdir / "mapserver.conf"
    config.write_text(
        'CONFIG\n  ENV\n    MS_MAP_NO_PATH "1"\n  END\n  MAPS\n'
        + "\n".join(aliases)
        + "\n  END\nEND\n"
    )
    httpd.mapserv, httpd.config_file, httpd.aliases = MAPSERV, config, set(maps)
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield MapServerCGI(base, httpd.requests)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def extract_montpellier_lights(fixtures: Path, workdir: Path) -> Path:
    """Unzip the real street lights Shapefile; return its base path (no extension)."""
    archive = fixtures / "montpellier/VilleMTP_MTP_EclairagePublic/VilleMTP_MTP_EclairagePublic.zip"
    workdir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as z:
        for name in z.namelist():
            if name.rsplit(".", 1)[-1].lower() in {"shp", "shx", "dbf", "prj"}:
                (workdir / Path(name).name).write_bytes(z.read(name))
    return workdir / "VilleMTP_MTP_EclairagePublic"


# -- pygeoapi ---------------------------------------------------------------------------------

SENSOR_COUNT = 253
KNOWN_SENSOR = "flood-0000"
KNOWN_SENSOR_LONLAT = (3.8767, 43.6108)


def sensor_lonlat(i: int) -> tuple[float, float]:
    return round(KNOWN_SENSOR_LONLAT[0] + (i % 16) * 0.0021, 7), round(
        KNOWN_SENSOR_LONLAT[1] + (i // 16) * 0.0013, 7
    )


def flood_sensors_geojson() -> dict[str, Any]:
    """A water utility's flood sensors (CRS84 lon/lat), as its OGC API would serve them."""
    features = []
    for i in range(SENSOR_COUNT):
        features.append(
            {
                "type": "Feature",
                "id": f"flood-{i:04d}",
                "properties": {
                    "name": f"Lez gauge {i}",
                    "waterLevel": round(0.25 + (i % 11) * 0.1, 2),
                    "status": "alert" if i % 10 == 0 else "ok",
                },
                "geometry": {"type": "Point", "coordinates": list(sensor_lonlat(i))},
            }
        )
    return {"type": "FeatureCollection", "features": features}


def pygeoapi_config(url: str, port: int, data: Path) -> dict[str, Any]:
    contact = {
        key: "x"
        for key in [
            "position",
            "address",
            "city",
            "stateorprovince",
            "postalcode",
            "country",
            "phone",
            "fax",
            "email",
            "url",
            "hours",
            "instructions",
        ]
    }
    return {
        "server": {
            "bind": {"host": "127.0.0.1", "port": port},
            "url": url,
            "mimetype": "application/json; charset=UTF-8",
            "encoding": "utf-8",
            "language": "en-US",
            "pretty_print": False,
            "limits": {"default_items": 10, "max_items": 500},
            "map": {"url": "https://tile.example/{z}/{x}/{y}.png", "attribution": "none"},
        },
        "logging": {"level": "ERROR"},
        "metadata": {
            "identification": {
                "title": "Water utility",
                "description": "Flood sensors of the water utility",
                "keywords": ["flood"],
                "keywords_type": "theme",
                "terms_of_service": "https://example.org/terms",
                "url": "https://example.org",
            },
            "license": {"name": "CC-BY 4.0", "url": "https://creativecommons.org/licenses/by/4.0/"},
            "provider": {"name": "Water utility", "url": "https://example.org"},
            "contact": {"name": "Ops", "role": "pointOfContact", **contact},
        },
        "resources": {
            "floodsensors": {
                "type": "collection",
                "title": "Flood sensors",
                "description": "Water level gauges",
                "keywords": ["flood", "water"],
                "extents": {
                    "spatial": {
                        "bbox": [3.8, 43.5, 4.0, 43.7],
                        "crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84",
                    }
                },
                "providers": [
                    {
                        "type": "feature",
                        "name": "GeoJSON",
                        "data": str(data),
                        "id_field": "id",
                        "crs": [
                            "http://www.opengis.net/def/crs/OGC/1.3/CRS84",
                            "http://www.opengis.net/def/crs/EPSG/0/4326",
                            "http://www.opengis.net/def/crs/EPSG/0/2154",
                        ],
                        "storage_crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84",
                    }
                ],
            }
        },
    }


_PYGEOAPI_URL: str | None = None
_PYGEOAPI_LOCK = threading.Lock()


@contextmanager
def running_pygeoapi(workdir: Path) -> Iterator[str]:
    """Start pygeoapi 0.21 on a free port with a generated collection; yield its base URL."""
    global _PYGEOAPI_URL
    try:
        import yaml
        from werkzeug.serving import make_server
    except ImportError:  # pragma: no cover - pygeoapi brings both
        pytest.skip("pygeoapi is not installed (pip install -e '.[test]')")
    with _PYGEOAPI_LOCK:
        if _PYGEOAPI_URL is not None:
            raise RuntimeError("pygeoapi reads its config at import: one instance per process")
        workdir.mkdir(parents=True, exist_ok=True)
        data = workdir / "floodsensors.geojson"
        data.write_text(json.dumps(flood_sensors_geojson()))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        config = workdir / "pygeoapi-config.yml"
        config.write_text(yaml.safe_dump(pygeoapi_config(url, port, data)))
        openapi = workdir / "pygeoapi-openapi.yml"
        os.environ["PYGEOAPI_CONFIG"] = str(config)
        os.environ["PYGEOAPI_OPENAPI"] = str(openapi)
        try:
            from pygeoapi.openapi import generate_openapi_document
        except ImportError:
            pytest.skip("pygeoapi is not installed (pip install -e '.[test]')")
        openapi.write_text(generate_openapi_document(config, "yaml"))  # type: ignore[arg-type]
        from pygeoapi.flask_app import APP

        server = make_server("127.0.0.1", port, APP, threaded=True)
        _PYGEOAPI_URL = url
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield url
    finally:
        server.shutdown()
        thread.join(timeout=10)


# -- pytest fixtures (import them into the test modules that use them) -----------------------


@pytest.fixture(scope="session")
def lambert_shapefiles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_lambert_shapefiles(tmp_path_factory.mktemp("lambert93"))


@pytest.fixture(scope="session")
def mapserver(
    tmp_path_factory: pytest.TempPathFactory, lambert_shapefiles: dict[str, Path]
) -> Iterator[MapServerCGI]:
    """MapServer with `city` (generated lights and parcels) and, where ../shared exists,
    `montpellier` (the 29,969 real street lights, CP1252 DBF, no id field)."""
    from urbis.testing.paths import FIXTURES

    workdir = tmp_path_factory.mktemp("mapserver")
    maps: dict[str, list[Layer]] = {
        "city": [
            Layer("lights", lambert_shapefiles["lights"]),
            Layer("parcels", lambert_shapefiles["parcels"], geometry="POLYGON"),
        ]
    }
    if FIXTURES.exists():
        lights = extract_montpellier_lights(FIXTURES, workdir / "montpellier")
        maps["montpellier"] = [Layer("streetlights", lights, featureid=None, encoding="CP1252")]
    with running_mapserver(workdir, maps) as server:
        yield server


@pytest.fixture(scope="session")
def pygeoapi_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One pygeoapi for the whole run. pytest makes a separate session fixture for each module
    that imports this one, and pygeoapi starts once per process: a later instance reuses the
    server the first started (it serves until the session ends)."""
    if _PYGEOAPI_URL is not None:
        yield _PYGEOAPI_URL
        return
    with running_pygeoapi(tmp_path_factory.mktemp("pygeoapi")) as url:
        yield url


def fetch_features(connector: Connector) -> list[Feature]:
    """Every record one full fetch yields, checked to be Features, the connector closed."""
    try:
        records = list(connector.fetch(Cursor()))
    finally:
        connector.close()
    assert all(isinstance(r, Feature) for r in records)
    return [r for r in records if isinstance(r, Feature)]
