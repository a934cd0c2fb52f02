from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.mariadbserver import MariaDBServer, start_mariadb
from tests.pgserver import PostgresServer, start_postgres


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server per test worker."""
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDBServer]:
    """One real MariaDB server per test worker (tests/mariadbserver.py)."""
    server = start_mariadb()
    try:
        yield server
    finally:
        server.stop()
