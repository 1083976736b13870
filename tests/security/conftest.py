"""Fixtures of the security tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from urbis.testing.listener import Listener


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()
