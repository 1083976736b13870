"""`urbis sources add|list|quarantine` and `urbis sync` on an on-disk twin."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from urbis.cli.main import app
from urbis.connectors.sources import SourceCatalog
from urbis.connectors.sync import SyncState
from urbis.twin.state import open_state_store

runner = CliRunner()


def test_add_list_sync_quarantine(tmp_path: Path) -> None:
    data = tmp_path / "twin"
    (tmp_path / "lights.csv").write_text("ref,lat,lon,h\n1,43.61,3.87,8\n2,43.62,3.88,x\n")
    (tmp_path / "lights.toml").write_text(
        'id = "lights"\nkind = "file"\nendpoint = "lights.csv"\nentity_type = "Streetlight"\n'
        'key = "ref"\nid_template = "urn:ngsi-ld:Streetlight:{key}"\n'
        '[[mapping]]\nsource = "h"\nattribute = "lanternHeight"\nconvert = "int"\nunit = "m"\n'
    )
    (tmp_path / "bad.toml").write_text('id = "bad"\nkind = "file"\nschedule = "often"\n')
    added = runner.invoke(
        app, ["sources", "add", str(tmp_path / "lights.toml"), "--data-dir", str(data)]
    )
    assert added.exit_code == 0, added.output
    saved = SourceCatalog(open_state_store(data)).home.text("lights")
    assert saved is not None and str(tmp_path / "lights.csv") in saved[1]  # endpoint anchored
    refused = runner.invoke(
        app, ["sources", "add", str(tmp_path / "bad.toml"), "--data-dir", str(data)]
    )
    assert refused.exit_code == 2 and "schedule" in refused.output
    listed = runner.invoke(app, ["sources", "list", "--data-dir", str(data)])
    assert "lights" in listed.output and "never" in listed.output
    synced = runner.invoke(app, ["sync", "--all", "--data-dir", str(data)])
    assert synced.exit_code == 0, synced.output
    row = next(line for line in synced.output.splitlines() if "lights" in line and "ok" in line)
    assert row.split("│")[3].strip() == "1"  # created
    quarantined = runner.invoke(app, ["sources", "quarantine", "lights", "--data-dir", str(data)])
    assert "cannot convert 'x' to int" in quarantined.output
    report = SyncState(open_state_store(data)).get("lights", "report")
    assert report["created"] == 1 and report["quarantined"] == 1
    missing = runner.invoke(app, ["sync", "nosuch", "--data-dir", str(data)])
    assert missing.exit_code == 1 and "nosuch" in missing.output
