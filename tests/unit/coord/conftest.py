"""Fixtures of the coordination tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.etcd import MISSING, EtcdServer, etcd_available, start_etcd
from tests.support.zookeeper import stop_shared_server


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    """One real single-member etcd per test worker (tests/support/etcd.py); tests keep
    apart by key prefix. Skipped only when /usr/bin/etcd is missing."""
    if not etcd_available():
        pytest.skip(MISSING)
    server = start_etcd()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session", autouse=True)
def zookeeper_server_lifetime() -> Iterator[None]:
    """Stops the ZooKeeper a test started (tests/support/zookeeper.py shared_server) when
    the session ends; none is started for tests that do not use it."""
    yield
    stop_shared_server()
