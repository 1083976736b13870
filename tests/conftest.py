"""Shared fixtures: an app built from settings with an in-memory twin, and httpx clients."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from urbis.api.app import create_app
from urbis.api.settings import Settings
from urbis.testing.paths import FIXTURES, REFERENCE, SHARED

__all__ = ["FIXTURES", "REFERENCE", "SHARED", "TOKEN", "shared_or_skip"]

TOKEN = "test-admin-token"


def shared_or_skip(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent: ../shared is needed for this reference test")
    return path


@pytest.fixture
def settings() -> Settings:
    return Settings(admin_token=TOKEN, demo=False)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """A client that authenticates as the admin (writes allowed)."""
    app = create_app(settings)
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        yield c


@pytest.fixture
def anonymous(client: TestClient) -> TestClient:
    """The same app without credentials."""
    return TestClient(client.app)
