from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pgserver import PostgresServer, start_postgres


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server per test worker."""
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()
