"""The coordination contract (hakit.coord.base), tested once against every backend.

Each backend in hakit.coord.registry.BACKENDS needs a store maker in ``MAKERS``:
a fresh store in the test's directory, with an injected wall clock where time
matters (``FakeClock``: it moves only when the test says so). A backend whose
lease expiry is decided by a server must make its test store with a clock the
test controls (or a server whose clock it does). Tests of one backend's own
workings (files, locking, migrations) stay in its own module (test_sqlite.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hakit.coord.base import Coordinator, Event, Lease, NodeRecord
from hakit.coord.registry import BACKENDS
from hakit.coord.sqlite import SqliteCoordinator
from tests.support.zookeeper import contract_store as _zookeeper

TTL = 10.0


class FakeClock:
    """Wall-clock seconds that move only when the test says so."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


StoreMaker = Callable[[Path, FakeClock], Coordinator]
OpenStore = Callable[[], Coordinator]  # another handle on the test's store


def _sqlite(directory: Path, clock: FakeClock) -> Coordinator:
    return SqliteCoordinator(directory / "coordination.db", clock=clock)


MAKERS: dict[str, StoreMaker] = {
    "sqlite": _sqlite,
    "zookeeper": _zookeeper,  # a real server; the FakeClock stands in for its clock
}


def test_every_registered_backend_has_a_store_maker() -> None:
    assert set(MAKERS) == set(BACKENDS)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=sorted(BACKENDS))
def open_store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> Iterator[OpenStore]:
    """Opens handles on one fresh store of the backend ``request.param``; closes them after."""
    make = MAKERS.get(request.param)
    if make is None:
        pytest.fail(f"backend {request.param!r} has no store maker in MAKERS")
    opened: list[Coordinator] = []

    def open_one() -> Coordinator:
        opened.append(make(tmp_path, clock))
        return opened[-1]

    try:
        yield open_one
    finally:
        for store in opened:
            store.close()


@pytest.fixture
def coordinator(open_store: OpenStore) -> Coordinator:
    return open_store()


def event(n: int) -> Event:
    return Event(
        0, 100.0 + n, "node1", "restart", f"restart number {n}.", 2, "agent:node1", {"n": n}
    )


def test_satisfies_the_coordinator_protocol(coordinator: Coordinator) -> None:
    as_protocol: Coordinator = coordinator  # checked by mypy
    assert as_protocol.last_epoch() == 0


def test_first_acquire_gets_epoch_one_and_expires_after_ttl(
    coordinator: Coordinator, clock: FakeClock
) -> None:
    assert coordinator.current_lease() is None
    lease = coordinator.acquire_or_renew("n1", TTL)
    assert lease == Lease.as_read("n1", 1, clock.now + TTL, clock.now)
    assert coordinator.current_lease() == lease
    assert coordinator.last_epoch() == 1


def test_renew_by_holder_extends_and_keeps_epoch(
    coordinator: Coordinator, clock: FakeClock
) -> None:
    first = coordinator.acquire_or_renew("n1", TTL)
    clock.advance(TTL - 1)
    renewed = coordinator.acquire_or_renew("n1", TTL)
    assert first is not None and renewed is not None
    assert renewed.epoch == first.epoch
    assert renewed.expires_at == clock.now + TTL > first.expires_at
    assert coordinator.last_epoch() == 1


def test_other_node_is_refused_while_lease_is_valid(
    coordinator: Coordinator, clock: FakeClock
) -> None:
    held = coordinator.acquire_or_renew("n1", TTL)
    clock.advance(TTL - 0.001)
    assert coordinator.acquire_or_renew("n2", TTL) is None
    assert coordinator.current_lease() == held


def test_expired_lease_is_stolen_with_a_greater_epoch(
    coordinator: Coordinator, clock: FakeClock
) -> None:
    old = coordinator.acquire_or_renew("n1", TTL)
    clock.advance(TTL)
    stolen = coordinator.acquire_or_renew("n2", TTL)
    assert old is not None and stolen is not None
    assert stolen.holder == "n2" and stolen.epoch == old.epoch + 1
    # The former holder is now refused.
    assert coordinator.acquire_or_renew("n1", TTL) is None


def test_current_lease_returns_expired_lease_as_stored(
    coordinator: Coordinator, clock: FakeClock
) -> None:
    held = coordinator.acquire_or_renew("n1", TTL)
    clock.advance(TTL * 3)
    stored = coordinator.current_lease()
    assert stored == held
    assert stored is not None and not stored.valid  # judged by the store when read
    assert stored.remaining == pytest.approx(-2 * TTL)


def test_holder_renewing_after_expiry_gets_a_new_epoch(
    coordinator: Coordinator, clock: FakeClock
) -> None:
    # Someone may have seen the lease free in between: the old token must not stay valid.
    first = coordinator.acquire_or_renew("n1", TTL)
    clock.advance(TTL + 1)
    again = coordinator.acquire_or_renew("n1", TTL)
    assert first is not None and again is not None
    assert again.holder == "n1" and again.epoch == first.epoch + 1


def test_release_only_by_holder_and_epoch(coordinator: Coordinator) -> None:
    held = coordinator.acquire_or_renew("n1", TTL)
    assert held is not None
    assert not coordinator.release("n2", held.epoch)
    assert not coordinator.release("n1", held.epoch - 1)
    assert not coordinator.release("n1", held.epoch + 1)
    assert coordinator.current_lease() == held
    assert coordinator.release("n1", held.epoch)
    assert coordinator.current_lease() is None
    assert not coordinator.release("n1", held.epoch)  # already released


def test_epoch_never_goes_back_after_release(coordinator: Coordinator) -> None:
    epochs = []
    for node in ["n1", "n2", "n1", "n1"]:
        lease = coordinator.acquire_or_renew(node, TTL)
        assert lease is not None
        epochs.append(lease.epoch)
        assert coordinator.release(node, lease.epoch)
    assert epochs == [1, 2, 3, 4]
    assert coordinator.last_epoch() == 4
    assert coordinator.current_lease() is None


def test_stale_release_does_not_drop_the_new_holders_lease(
    coordinator: Coordinator, clock: FakeClock
) -> None:
    old = coordinator.acquire_or_renew("n1", TTL)
    clock.advance(TTL)
    new = coordinator.acquire_or_renew("n1", TTL)  # same node, new epoch after expiry
    assert old is not None and new is not None
    assert not coordinator.release("n1", old.epoch)
    assert coordinator.current_lease() == new


def test_lease_state_is_shared_between_coordinator_objects(open_store: OpenStore) -> None:
    one, two = open_store(), open_store()
    held = one.acquire_or_renew("n1", TTL)
    assert two.current_lease() == held
    assert two.acquire_or_renew("n2", TTL) is None
    one.close()
    two.close()
    reopened = open_store()
    assert reopened.current_lease() == held
    assert reopened.last_epoch() == 1


def test_non_positive_ttl_is_rejected(coordinator: Coordinator) -> None:
    with pytest.raises(ValueError, match="ttl"):
        coordinator.acquire_or_renew("n1", 0)


def test_publish_and_read_node_records_sorted_by_name(coordinator: Coordinator) -> None:
    assert list(coordinator.nodes()) == []
    n2 = NodeRecord("node2", "standby", "STOPPED", 0, 10.0, {"pid": None})
    n1 = NodeRecord("node1", "active", "RUNNING", 3, 11.0, {"pid": 4242, "restarts": 1})
    coordinator.publish_node(n2)
    coordinator.publish_node(n1)
    assert list(coordinator.nodes()) == [n1, n2]


def test_publish_replaces_the_nodes_record(coordinator: Coordinator) -> None:
    coordinator.publish_node(NodeRecord("node1", "active", "RUNNING", 3, 11.0, {"pid": 1}))
    newer = NodeRecord("node1", "stopped", "STOPPED", 3, 12.0)
    coordinator.publish_node(newer)
    assert list(coordinator.nodes()) == [newer]


def test_append_assigns_increasing_ids_and_keeps_fields(coordinator: Coordinator) -> None:
    stored = [coordinator.append_event(event(n)) for n in range(3)]
    assert [e.id for e in stored] == [1, 2, 3]
    assert coordinator.events() == stored
    assert stored[1] == Event(
        2, 101.0, "node1", "restart", "restart number 1.", 2, "agent:node1", {"n": 1}
    )


def test_events_after_id_and_limit(coordinator: Coordinator) -> None:
    for n in range(10):
        coordinator.append_event(event(n))
    assert [e.id for e in coordinator.events(after_id=7)] == [8, 9, 10]
    assert [e.id for e in coordinator.events(after_id=2, limit=3)] == [3, 4, 5]
    assert list(coordinator.events(after_id=10)) == []
    assert list(coordinator.events(limit=0)) == []


def test_threads_share_one_coordinator(coordinator: Coordinator) -> None:
    errors: list[BaseException] = []

    def append_many() -> None:
        try:
            for n in range(50):
                coordinator.append_event(event(n))
        except BaseException as error:  # reported to the test thread below
            errors.append(error)

    threads = [threading.Thread(target=append_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert [e.id for e in coordinator.events()] == list(range(1, 201))


def test_take_over_moves_a_valid_lease_under_a_new_epoch(
    coordinator: Coordinator, clock: FakeClock
) -> None:
    held = coordinator.acquire_or_renew("n1", TTL)
    assert held is not None and held.epoch == 1
    taken = coordinator.take_over("n2", TTL)
    assert taken == Lease.as_read("n2", 2, clock.now + TTL, clock.now)
    assert coordinator.current_lease() == taken and coordinator.last_epoch() == 2
    assert coordinator.acquire_or_renew("n1", TTL) is None  # the old holder's renewal fails
    renewed = coordinator.acquire_or_renew("n2", TTL)  # the new holder renews the same epoch
    assert renewed is not None and renewed.epoch == 2
    assert not coordinator.release("n1", 1)


def test_take_over_after_a_release_never_reuses_an_epoch(coordinator: Coordinator) -> None:
    lease = coordinator.acquire_or_renew("n1", TTL)
    assert lease is not None
    assert coordinator.release("n1", lease.epoch)
    assert coordinator.take_over("n1", TTL).epoch == lease.epoch + 1
    with pytest.raises(ValueError):
        coordinator.take_over("n1", 0)


def test_cluster_state_set_get_replace_clear(coordinator: Coordinator) -> None:
    assert coordinator.get_state("paused") is None and coordinator.cluster_state() == {}
    coordinator.set_state("paused", {"paused": True, "actor": "operator:alice"})
    coordinator.set_state("handover", {"id": "a", "target": "n2", "at": 1.5})
    assert coordinator.get_state("paused") == {"paused": True, "actor": "operator:alice"}
    coordinator.set_state("paused", {"paused": False})
    assert coordinator.cluster_state() == {
        "handover": {"id": "a", "target": "n2", "at": 1.5},
        "paused": {"paused": False},
    }
    assert coordinator.clear_state("paused")
    assert not coordinator.clear_state("paused")  # already gone
    assert coordinator.cluster_state() == {"handover": {"id": "a", "target": "n2", "at": 1.5}}


def test_clear_state_if_value_is_a_compare_and_delete(coordinator: Coordinator) -> None:
    first = {"id": "a", "target": "n2", "expires_at": 1000.25}
    coordinator.set_state("handover", first)
    newer = {"id": "b", "target": "n3", "expires_at": 2000.5}
    coordinator.set_state("handover", newer)
    assert not coordinator.clear_state("handover", if_value=first)  # never removes a newer intent
    assert coordinator.get_state("handover") == newer
    read_back = coordinator.get_state("handover")
    assert read_back is not None and coordinator.clear_state("handover", if_value=read_back)
    assert coordinator.get_state("handover") is None


def test_cluster_state_is_shared_between_processes_objects(open_store: OpenStore) -> None:
    writer, reader = open_store(), open_store()
    writer.set_state("paused", {"paused": True})
    assert reader.get_state("paused") == {"paused": True}


def test_recent_events_are_the_newest_oldest_first(coordinator: Coordinator) -> None:
    for i in range(5):
        coordinator.append_event(Event(0, float(i), "n1", "k", f"event {i}"))
    assert [e.reason for e in coordinator.recent_events(2)] == ["event 3", "event 4"]
    assert len(coordinator.recent_events(100)) == 5 and coordinator.recent_events(0) == []


def test_renew_epoch_extends_even_an_expired_lease_under_the_same_epoch(
    coordinator: Coordinator, clock: FakeClock
) -> None:
    # An agent that woke after its deadline: nobody took over, so it keeps its epoch.
    first = coordinator.acquire_or_renew("n1", TTL)
    assert first is not None
    clock.advance(TTL + 5)
    renewed = coordinator.renew_epoch("n1", first.epoch, TTL)
    assert renewed == Lease.as_read("n1", first.epoch, clock.now + TTL, clock.now)
    assert coordinator.current_lease() == renewed
    assert coordinator.acquire_or_renew("n2", TTL) is None  # valid again


def test_renew_epoch_fails_once_another_epoch_or_nothing_is_stored(
    coordinator: Coordinator, clock: FakeClock
) -> None:
    first = coordinator.acquire_or_renew("n1", TTL)
    assert first is not None
    clock.advance(TTL + 1)
    taken = coordinator.acquire_or_renew("n2", TTL)  # a takeover while n1 was frozen
    assert taken is not None and taken.epoch == first.epoch + 1
    assert coordinator.renew_epoch("n1", first.epoch, TTL) is None
    assert coordinator.renew_epoch("n2", first.epoch, TTL) is None  # the right holder, old epoch
    assert coordinator.current_lease() == taken
    assert coordinator.release("n2", taken.epoch)
    assert coordinator.renew_epoch("n2", taken.epoch, TTL) is None  # released: gone for good
    assert coordinator.current_lease() is None
