"""Fixtures of the coordination tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.zookeeper import stop_shared_server


@pytest.fixture(scope="session", autouse=True)
def zookeeper_server_lifetime() -> Iterator[None]:
    """Stops the ZooKeeper a test started (tests/support/zookeeper.py shared_server) when
    the session ends; none is started for tests that do not use it."""
    yield
    stop_shared_server()
