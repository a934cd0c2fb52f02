"""ViewReader: the router's poll reads a real SQLite store only when another process wrote."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hakit.coord.base import NodeRecord
from hakit.coord.sqlite import SqliteCoordinator
from hakit.coord.view import read_cluster
from hakit.router.viewreader import ViewReader


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[SqliteCoordinator, SqliteCoordinator]]:
    """The router's connection and an agent's: two connections to one file, as in production."""
    path = tmp_path / "coordination.db"
    router, agent = SqliteCoordinator(path), SqliteCoordinator(path)
    try:
        yield router, agent
    finally:
        router.close()
        agent.close()


def test_unchanged_store_is_not_read_again(
    stores: tuple[SqliteCoordinator, SqliteCoordinator],
) -> None:
    router, agent = stores
    lease = agent.acquire_or_renew("node1", ttl=30)
    assert lease is not None
    agent.publish_node(NodeRecord("node1", "active", "RUNNING", lease.epoch, 1.0))
    wall, mono = Clock(1_000.0), Clock(0.0)
    reader = ViewReader(router, clock=wall, monotonic=mono, max_age=5.0)

    first = reader()
    assert reader.full_reads == 1 and first.lease == lease
    for step in range(1, 4):
        wall.now, mono.now = 1_000.0 + step, step * 0.1
        view = reader()
        assert view.read_at == wall.now  # the lease is judged at the poll's time
        assert view.lease == first.lease and view.nodes == first.nodes
    assert (reader.full_reads, reader.skipped) == (1, 3)

    # Another process writes: the next poll reads it.
    agent.publish_node(NodeRecord("node1", "active", "STOPPING", lease.epoch, 2.0))
    assert reader().nodes["node1"].app_state == "STOPPING"
    assert reader.full_reads == 2
    assert reader() == read_cluster(router, wall.now).at(wall.now)


def test_router_own_writes_do_not_hide_others(
    stores: tuple[SqliteCoordinator, SqliteCoordinator],
) -> None:
    """The router publishes its data-path report through the same connection."""
    router, agent = stores
    reader = ViewReader(router, clock=Clock(1.0), monotonic=Clock(0.0), max_age=60.0)
    assert reader().lease is None
    router.set_state("router/test", {"seen": 1})  # our own commit
    assert agent.acquire_or_renew("node2", ttl=30) is not None  # theirs
    assert reader().leader == "node2"


def test_full_read_at_least_every_max_age(
    stores: tuple[SqliteCoordinator, SqliteCoordinator],
) -> None:
    router, _ = stores
    mono = Clock(0.0)
    reader = ViewReader(router, clock=Clock(1.0), monotonic=mono, max_age=1.0)
    reader()
    mono.now = 0.5
    reader()
    mono.now = 1.0
    reader()
    assert (reader.full_reads, reader.skipped) == (2, 1)


def test_expired_lease_is_seen_without_a_write(
    stores: tuple[SqliteCoordinator, SqliteCoordinator],
) -> None:
    router, agent = stores
    lease = agent.acquire_or_renew("node1", ttl=5)
    assert lease is not None
    # The reader's wall clock is its own (here far from the store's): validity is the
    # store's judgement at the read, less the time elapsed since on the reader's clock.
    wall = Clock(1_000.0)
    reader = ViewReader(router, clock=wall, monotonic=Clock(0.0), max_age=60.0)
    first = reader()
    assert first.leader == "node1" and first.lease is not None
    wall.now += first.lease.remaining - 0.5
    assert reader().leader == "node1"
    wall.now += 1.0
    assert reader().leader is None  # nothing was written: expiry is a matter of time
    assert reader.full_reads == 1


def test_quick_answers_from_the_loop_only_while_unchanged(
    stores: tuple[SqliteCoordinator, SqliteCoordinator],
) -> None:
    router, agent = stores
    lease = agent.acquire_or_renew("node1", ttl=30)
    assert lease is not None
    wall, mono = Clock(1_000.0), Clock(0.0)
    reader = ViewReader(router, clock=wall, monotonic=mono, max_age=5.0)
    assert reader.quick() is None  # nothing read yet: the thread reads
    first = reader()
    wall.now = 1_001.0
    view = reader.quick()
    assert view is not None and view.lease == first.lease and view.read_at == 1_001.0

    agent.publish_node(NodeRecord("node1", "active", "RUNNING", lease.epoch, 2.0))
    assert reader.quick() is None  # changed: read it (in the router's thread)
    assert "node1" in reader().nodes
    assert reader.quick() is not None

    router._lock.acquire()  # another thread is using the connection: never wait for it
    try:
        assert reader.quick() is None
    finally:
        router._lock.release()
    mono.now = 5.0
    assert reader.quick() is None  # a full read is due (max_age)


def test_a_store_without_a_change_token_is_always_read(tmp_path: Path) -> None:
    class Plain:
        """A Coordinator without data_version (e.g. another backend)."""

        def __init__(self, store: SqliteCoordinator) -> None:
            self.current_lease, self.nodes = store.current_lease, store.nodes

    store = SqliteCoordinator(tmp_path / "c.db")
    try:
        reader = ViewReader(Plain(store))  # type: ignore[arg-type]
        reader()
        assert reader.quick() is None and reader.full_reads == 0  # read_cluster directly
    finally:
        store.close()
