"""Replicated storage with PostgreSQL end to end: two nodes, each its own database (two
databases of the tests' real server stand in for two servers) and its own home.

Real agents, apps and router; writes through the router all along. The standby applies
the active's generations (each dump restored into a new database beside its own, swapped
in by rename with its home); a switchover ships a final generation once the active's app
stopped, and the new active serves every acknowledged write with /integrity clean."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from hakit.demo.cluster import free_ports, wait_for
from hakit.history.facts import DATA_LOSS_WINDOW
from hakit.history.kinds import EventKind
from tests.pgserver import PostgresServer

from .conftest import ClusterFactory, events_of, wait_serving
from .test_operator import Load
from .test_replicated import TOKEN, _replica, nothing_lost, switch_over

pytestmark = pytest.mark.e2e


@pytest.fixture
def databases(postgres: PostgresServer) -> Iterator[tuple[str, str]]:
    """node1's and node2's database URLs (created empty; dropped at the end with every
    database the applies made beside them)."""
    prefix = f"rep_{secrets.token_hex(3)}"
    base = postgres.url.rsplit("/", 1)[0]
    with psycopg.connect(postgres.url, autocommit=True) as admin:
        for node in ("node1", "node2"):
            admin.execute(f'CREATE DATABASE "{prefix}_{node}"')
    try:
        yield f"{base}/{prefix}_node1", f"{base}/{prefix}_node2"
    finally:
        with psycopg.connect(postgres.url, autocommit=True) as admin:
            rows = admin.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", (prefix + "%",)
            ).fetchall()
            for (name,) in rows:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _count(url: str) -> int:
    with psycopg.connect(url) as session:
        row = session.execute("SELECT count(*) FROM records").fetchone()
    assert row is not None
    return int(row[0])


def test_each_node_its_own_postgresql_database_and_a_switchover_loses_nothing(
    databases: tuple[str, str],  # first: dropped only once the cluster has stopped
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(
        storage="replicated",
        replication_interval="2s",
        admin_ports=tuple(free_ports(2)),
        admin_token=TOKEN,
        hold_timeout="60s",
        node_database_urls=databases,
    )
    urls = dict(zip(("node1", "node2"), databases, strict=True))
    active = wait_serving(cluster)
    standby = next(node.name for node in cluster.cfg.nodes if node.name != active)
    with Load(cluster.router_url, rate=20) as load:
        wait_for(lambda: len(load.written) >= 20, 30, "writes before the first generation")

        # The standby applies a scheduled generation: its own database now holds records.
        def applied() -> dict[str, Any] | None:
            entry = _replica(cluster, standby)
            return entry if entry and entry.get("generation") else None

        wait_for(applied, 60, f"{standby} to apply a generation")
        assert _count(urls[standby]) > 0
        switch_over(cluster, load, standby, "pg move")
    nothing_lost(cluster, load, standby)
    assert _count(urls[standby]) >= len(load.written)  # served from its own database
    (promotion,) = [
        event
        for event in events_of(cluster, str(EventKind.REPLICATION), standby)
        if DATA_LOSS_WINDOW in event.data and event.epoch
    ]
    assert promotion.data[DATA_LOSS_WINDOW] == 0.0, promotion.reason
    assert "nothing is lost" in promotion.reason
