from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.etcd import MISSING, EtcdServer, etcd_available, start_etcd


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
