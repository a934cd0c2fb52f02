"""Readers whose clocks disagree with the store's decide alike (no clock is compared).

The store (hakit.coord) judges validity and ages at each read on its own clock;
a reader adds only the time elapsed on its own clock. Here the store runs on one
fake clock and the readers' wall clocks are minutes off, ahead or behind.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hakit.coord.base import NodeRecord
from hakit.coord.sqlite import SqliteCoordinator
from hakit.coord.view import read_cluster
from hakit.health.datapath import handover_candidates

STORE_T0 = 1_700_000_000.0
TTL = 3.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("skew", [-300.0, 0.0, 300.0])
def test_a_skewed_reader_sees_the_same_leader_and_record_ages(tmp_path: Path, skew: float) -> None:
    store_clock = Clock(STORE_T0)
    store = SqliteCoordinator(tmp_path / "coordination.db", clock=store_clock)
    try:
        lease = store.acquire_or_renew("node1", TTL)
        assert lease is not None
        # The standby's agent publishes with its own (skewed) wall clock in updated_at.
        store.publish_node(NodeRecord("node2", "standby", "STOPPED", 0, STORE_T0 + skew))
        reader_now = STORE_T0 + skew  # the reader's wall clock, minutes off the store's
        view = read_cluster(store, reader_now)
        assert view.leader == "node1"
        assert view.lease_valid(reader_now + TTL - 0.5)  # elapsed on the reader's own clock
        assert not view.lease_valid(reader_now + TTL + 0.5)
        assert view.nodes["node2"].age == 0.0  # the store's clock: just stored
        nodes = [("node1", False), ("node2", False)]
        assert handover_candidates("node1", nodes, view.nodes, reader_now, alive_within=TTL) == [
            "node2"
        ]

        store_clock.now += TTL + 1  # the lease runs out and node2's agent falls silent
        later = read_cluster(store, reader_now + 1)
        assert later.leader is None and later.lease is not None and not later.lease.valid
        assert later.nodes["node2"].age == TTL + 1
        assert handover_candidates("node1", nodes, later.nodes, reader_now, alive_within=TTL) == []
    finally:
        store.close()


def test_expired_cluster_state_values_are_left_out_by_the_store_clock(tmp_path: Path) -> None:
    store_clock = Clock(STORE_T0)
    store = SqliteCoordinator(tmp_path / "coordination.db", clock=store_clock)
    try:
        store.set_state("router/r1", {"at": 0.0}, ttl=1.5)  # the writer's clock says nothing
        store.set_state("paused", {"paused": True})
        assert set(store.cluster_state()) == {"router/r1", "paused"}
        store_clock.now += 1.4
        assert store.get_state("router/r1") == {"at": 0.0}
        store_clock.now += 0.2
        assert set(store.cluster_state()) == {"paused"} and store.get_state("router/r1") is None
        with pytest.raises(ValueError):
            store.set_state("x", {}, ttl=0)
    finally:
        store.close()


def test_a_version_3_store_gains_the_new_columns(tmp_path: Path) -> None:
    """A store written by the previous schema opens, keeps its data; rows written before
    have revision 0 and are aged from their updated_at."""
    import sqlite3

    from hakit.coord.sqlite.schema import _SCHEMA_V1, _SCHEMA_V2, _SCHEMA_V3, SCHEMA_VERSION

    path = tmp_path / "coordination.db"
    raw = sqlite3.connect(path, isolation_level=None)
    for statement in _SCHEMA_V1 + _SCHEMA_V2 + _SCHEMA_V3:
        raw.execute(statement)
    raw.execute(
        "INSERT INTO cluster (singleton, identity, lineage, created_at, leases_from) "
        "VALUES (1, 'id-1', '[]', 0, 0)"
    )
    raw.execute(f"INSERT INTO lease VALUES (1, 'n1', 4, {STORE_T0 + 2})")
    raw.execute("UPDATE epoch_counter SET last_epoch = 4")
    raw.execute(f"INSERT INTO nodes VALUES ('n1', 'active', 'RUNNING', 4, {STORE_T0 - 5}, '{{}}')")
    raw.close()
    store = SqliteCoordinator(path, clock=Clock(STORE_T0))
    try:
        lease = store.current_lease()
        assert lease is not None and lease.epoch == 4 and lease.remaining == 2.0
        assert lease.revision == 0 and store.identity == "id-1"
        assert store.nodes()[0].age == 5.0
        renewed = store.acquire_or_renew("n1", TTL)
        assert renewed is not None and renewed.epoch == 4 and renewed.revision == 1
    finally:
        store.close()
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    finally:
        raw.close()
