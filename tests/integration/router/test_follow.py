"""The router is woken by a store that pushes its changes (hakit.router.viewreader.follow).

A real ZooKeeper (its watches: hakit.coord.zookeeper.watch) and a router whose poll
interval is a minute: a leader change by another connection reaches the router's
view only if the store's push woke it. A store that pushes nothing (SQLite) has no
follower: the poll alone reads it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hakit.coord.sqlite import SqliteCoordinator
from hakit.coord.zookeeper import ZooKeeperCoordinator
from hakit.router.viewreader import ViewReader
from tests.support.router_harness import RouterThread, make_config
from tests.support.waiting import wait_until
from tests.support.zookeeper import contract_store, stop_shared_server

WAKE_WAIT = 10.0  # s: far below the router's 60 s poll, far above a push's delay


@pytest.fixture(scope="module", autouse=True)
def zookeeper_lifetime() -> Iterator[None]:
    """Stops the ZooKeeper server contract_store started, once this module is done."""
    yield
    stop_shared_server()


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[ZooKeeperCoordinator, ZooKeeperCoordinator]]:
    """The router's connection and an agent's, on one real ZooKeeper store."""
    router, agent = contract_store(tmp_path, time.time), contract_store(tmp_path, time.time)
    try:
        yield router, agent
    finally:
        router.close()
        agent.close()


def test_follow_wakes_on_another_connections_lease_change(
    stores: tuple[ZooKeeperCoordinator, ZooKeeperCoordinator],
) -> None:
    router_side, agent = stores
    agent.last_epoch()  # the store exists
    reader = ViewReader(router_side)
    woken = threading.Event()
    stop = reader.follow(woken.set)
    assert stop is not None
    try:
        assert woken.wait(WAKE_WAIT)  # the first token counts as a change
        wait_until(lambda: not _woken_again(woken), WAKE_WAIT, "the watches to settle")
        assert agent.take_over("node2", 5.0) is not None
        assert woken.wait(WAKE_WAIT)
    finally:
        stop()


def _woken_again(woken: threading.Event) -> bool:
    """Clear ``woken``; True if it is set again within 0.3 s."""
    woken.clear()
    return woken.wait(0.3)


def test_a_store_that_pushes_nothing_has_no_follower(tmp_path: Path) -> None:
    store = SqliteCoordinator(tmp_path / "coordination.db")
    try:
        assert ViewReader(store).follow(lambda: None) is None
    finally:
        store.close()


def test_router_follows_a_leader_change_without_waiting_for_its_poll(
    tmp_path: Path, stores: tuple[ZooKeeperCoordinator, ZooKeeperCoordinator]
) -> None:
    router_side, agent = stores
    assert agent.take_over("node1", 5.0) is not None
    cfg = make_config(tmp_path, {"node1": 1, "node2": 2})  # state_poll_interval: 60 s
    router = RouterThread(cfg, ViewReader(router_side))
    try:
        assert router.router.view.leader == "node1"  # read once as it starts
        assert agent.take_over("node2", 5.0) is not None
        wait_until(lambda: router.router.view.leader == "node2", WAKE_WAIT, "the router to follow")
    finally:
        router.close()
