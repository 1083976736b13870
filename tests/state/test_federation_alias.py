"""The broker's Via alias lives in the state store: stable across restarts, taken over from an
older data directory's file, exported with the rest of the state."""

from __future__ import annotations

from pathlib import Path

from urbis.ngsild.federation import FEDERATION, broker_alias
from urbis.twin.state.sqlite import SqliteStateStore


def test_the_alias_is_generated_once_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    first = broker_alias(None, SqliteStateStore(path))
    again = broker_alias(None, SqliteStateStore(path))  # a restart
    assert first == again and first.startswith("urbis-")
    assert [key for key, _ in SqliteStateStore(path).list(FEDERATION, "")] == ["alias"]


def test_an_older_alias_file_is_taken_over(tmp_path: Path) -> None:
    (tmp_path / "federation-alias").write_text("urbis-from-before\n")
    state = SqliteStateStore(tmp_path / "state.sqlite3")
    assert broker_alias(None, state, tmp_path) == "urbis-from-before"
    (tmp_path / "federation-alias").unlink()
    assert broker_alias(None, state, tmp_path) == "urbis-from-before"


def test_the_setting_wins_and_is_not_stored(tmp_path: Path) -> None:
    state = SqliteStateStore(tmp_path / "state.sqlite3")
    assert broker_alias("city-a", state) == "city-a"
    assert state.get(FEDERATION, "", "alias") is None


def test_the_alias_travels_in_the_state_dump(tmp_path: Path) -> None:
    source = SqliteStateStore(tmp_path / "a.sqlite3")
    alias = broker_alias(None, source)
    target = SqliteStateStore(tmp_path / "b.sqlite3")
    target.load(source.dump())
    assert broker_alias(None, target) == alias
