"""The PyPI client ngsildclient drives a running `urbis serve` (create, get, query, batch, delete).

ngsildclient pins old httpx/rich versions, so it lives in a virtual environment of its own and
the flow runs there as a subprocess that prints what it observed as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from urbis.testing.server import running_server

VERSION = "0.5.2"
CACHE = Path(os.environ.get("URBIS_TEST_CACHE", Path.home() / ".cache" / "urbis-tests"))

FLOW = textwrap.dedent(
    """
    import json, sys
    from ngsildclient import Client, Entity

    host, port = sys.argv[1], int(sys.argv[2])
    seen = {}
    with Client(hostname=host, port=port, verbose=False) as client:
        e = Entity("AirQualityObserved", "AQ:1")
        e.prop("NO2", 22, unitcode="GP").loc(43.61, 3.87)
        e.rel("refDevice", "Device:1")
        seen["created"] = bool(client.create(e))
        got = client.get("urn:ngsi-ld:AirQualityObserved:AQ:1")
        seen["get_no2"] = got["NO2"]["value"]
        seen["get_location"] = got["location"]["value"]["coordinates"]
        batch = []
        for i in range(2, 12):
            b = Entity("AirQualityObserved", f"AQ:{i}")
            b.prop("NO2", 10 * i, unitcode="GP")
            batch.append(b)
        seen["upsert"] = bool(client.upsert(batch))
        seen["count_all"] = client.count(type="AirQualityObserved")
        seen["count_q"] = client.count(type="AirQualityObserved", q="NO2>50")
        found = client.query(type="AirQualityObserved", q="NO2>50")
        seen["query_ids"] = sorted(x["id"] for x in found)
        seen["deleted"] = bool(client.delete(got))  # an Entity: a plain str goes to batch
        seen["exists_after_delete"] = client.exists("urn:ngsi-ld:AirQualityObserved:AQ:1")
    print(json.dumps(seen))
    """
)


@pytest.fixture(scope="session")
def ngsildclient_python() -> Path:
    venv = CACHE / f"ngsildclient-{VERSION}"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        install = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", f"ngsildclient=={VERSION}"],
            capture_output=True,
            text=True,
        )
        if install.returncode != 0:
            pytest.skip(
                f"cannot install ngsildclient from the package registry: {install.stderr[-500:]}"
            )
    return python


def test_ngsildclient_flow(ngsildclient_python: Path, tmp_path: Path) -> None:
    with running_server("--open", "--memory", log=tmp_path / "server.log") as base:
        port = base.rsplit(":", 1)[1]
        run = subprocess.run(
            [str(ngsildclient_python), "-c", FLOW, "127.0.0.1", port],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, (
            run.stderr[-3000:] + (tmp_path / "server.log").read_text()[-3000:]
        )
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["created"] is True
    assert seen["get_no2"] == 22
    assert seen["get_location"] == [3.87, 43.61]
    assert seen["upsert"] is True
    assert seen["count_all"] == 11
    assert seen["count_q"] == 6
    assert seen["query_ids"] == sorted(
        f"urn:ngsi-ld:AirQualityObserved:AQ:{i}" for i in range(6, 12)
    )
    assert seen["deleted"] is True
    assert seen["exists_after_delete"] is False
