"""The coordination contract (hakit.coord.base), tested once against every backend.

Each backend in hakit.coord.registry.BACKENDS needs a store maker in ``MAKERS``:
a fresh store for the test (in its directory, or under its own key prefix of a
shared server), given the test's ``clock``. Tests of one backend's own workings
(files, locking, migrations, a server's expiry) stay in its own module
(test_sqlite.py, test_etcd.py).

Time. For a backend that takes an injected wall clock (SQLite) the clock is a
``FakeClock``: it moves only when the test says so, and the store decides on it.
A backend whose server decides expiry (etcd: server-side lease TTLs) is listed
in ``SERVER_TTLS`` with the lease TTL its tests use (tiny, so they run fast);
its clock is a ``ServerClock``: the same fake wall clock for what the store only
displays (``expires_at``, how long ago a lease expired), whose ``advance`` also
really waits, so that the server's judgement follows what the test means: less
than a TTL waits a little less (the lease is still valid on the server), a TTL
or more waits until the server has really expired it (``settled``, which the
store maker sets). Every contract test runs against every backend this way;
none is skipped for a server clock.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path

import pytest

from hakit.coord.base import (
    Coordinator,
    Event,
    Lease,
    NodeRecord,
    SupportsChangeToken,
    SupportsWaitChange,
)
from hakit.coord.etcd import EtcdCoordinator, EtcdSection
from hakit.coord.registry import BACKENDS
from hakit.coord.sqlite import SqliteCoordinator
from tests.support.waiting import wait_until
from tests.support.zookeeper import contract_store as _zookeeper_store

TTL = 10.0  # the lease TTL of tests on an injected clock


class FakeClock:
    """Wall-clock seconds that move only when the test says so."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ServerClock(FakeClock):
    """A ``FakeClock`` whose ``advance`` waits for the server's own expiry (module doc)."""

    MARGIN = 0.2  # "just before expiry": the server's grant time is known only this well

    def __init__(self, ttl: float) -> None:
        super().__init__()
        self.ttl = ttl
        self.settled: Callable[[], bool] = lambda: True  # no lease alive on the server

    def advance(self, seconds: float) -> None:
        super().advance(seconds)
        if seconds < self.ttl:
            time.sleep(max(0.0, seconds - self.MARGIN))
            return
        time.sleep(self.ttl)
        wait_until(self.settled, 5.0, "the server to expire the lease", interval=0.05)


StoreMaker = Callable[[Path, FakeClock, pytest.FixtureRequest], Coordinator]
OpenStore = Callable[[], Coordinator]  # another handle on the test's store


def _sqlite(directory: Path, clock: FakeClock, request: pytest.FixtureRequest) -> Coordinator:
    return SqliteCoordinator(directory / "coordination.db", clock=clock)


def _etcd(directory: Path, clock: FakeClock, request: pytest.FixtureRequest) -> Coordinator:
    server = request.getfixturevalue("etcd_server")  # tests/unit/coord/conftest.py
    # One prefix per test (its directory is unique): tests sharing the server never meet.
    prefix = "/t" + hashlib.sha1(str(directory).encode()).hexdigest()[:16]
    section = EtcdSection(endpoints=[server.endpoint], prefix=prefix, timeout=5.0)
    store = EtcdCoordinator(section, cluster="c", clock=clock)
    if isinstance(clock, ServerClock):
        clock.settled = lambda: not server.client().get(store.prefix + "leader/alive")
    return store


def _zookeeper(directory: Path, clock: FakeClock, request: pytest.FixtureRequest) -> Coordinator:
    return _zookeeper_store(
        directory, clock
    )  # a real server; the FakeClock stands in for its clock


MAKERS: dict[str, StoreMaker] = {"sqlite": _sqlite, "etcd": _etcd, "zookeeper": _zookeeper}
SERVER_TTLS: dict[str, float] = {"etcd": 1.0}  # backends whose server decides expiry


def test_every_registered_backend_has_a_store_maker() -> None:
    assert set(MAKERS) == set(BACKENDS)


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def ttl(backend: str) -> float:
    return SERVER_TTLS.get(backend, TTL)


@pytest.fixture
def clock(backend: str, ttl: float) -> FakeClock:
    return ServerClock(ttl) if backend in SERVER_TTLS else FakeClock()


@pytest.fixture
def open_store(
    request: pytest.FixtureRequest, backend: str, tmp_path: Path, clock: FakeClock
) -> Iterator[OpenStore]:
    """Opens handles on one fresh store of the backend ``backend``; closes them after."""
    make = MAKERS.get(backend)
    if make is None:
        pytest.fail(f"backend {backend!r} has no store maker in MAKERS")
    opened: list[Coordinator] = []

    def open_one() -> Coordinator:
        opened.append(make(tmp_path, clock, request))
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
    coordinator: Coordinator, clock: FakeClock, ttl: float
) -> None:
    assert coordinator.current_lease() is None
    lease = coordinator.acquire_or_renew("n1", ttl)
    assert lease == Lease.as_read("n1", 1, clock.now + ttl, clock.now)
    assert coordinator.current_lease() == lease
    assert coordinator.last_epoch() == 1


def test_renew_by_holder_extends_and_keeps_epoch(
    coordinator: Coordinator, clock: FakeClock, ttl: float
) -> None:
    first = coordinator.acquire_or_renew("n1", ttl)
    clock.advance(ttl / 2)
    renewed = coordinator.acquire_or_renew("n1", ttl)
    assert first is not None and renewed is not None
    assert renewed.epoch == first.epoch
    assert renewed.expires_at == clock.now + ttl > first.expires_at
    assert coordinator.last_epoch() == 1


def test_other_node_is_refused_while_lease_is_valid(
    coordinator: Coordinator, clock: FakeClock, ttl: float
) -> None:
    held = coordinator.acquire_or_renew("n1", ttl)
    clock.advance(ttl - 0.001)
    assert coordinator.acquire_or_renew("n2", ttl) is None
    assert coordinator.current_lease() == held


def test_expired_lease_is_stolen_with_a_greater_epoch(
    coordinator: Coordinator, clock: FakeClock, ttl: float
) -> None:
    old = coordinator.acquire_or_renew("n1", ttl)
    clock.advance(ttl)
    stolen = coordinator.acquire_or_renew("n2", ttl)
    assert old is not None and stolen is not None
    assert stolen.holder == "n2" and stolen.epoch == old.epoch + 1
    # The former holder is now refused.
    assert coordinator.acquire_or_renew("n1", ttl) is None


def test_current_lease_returns_expired_lease_as_stored(
    coordinator: Coordinator, clock: FakeClock, ttl: float
) -> None:
    held = coordinator.acquire_or_renew("n1", ttl)
    clock.advance(ttl * 3)
    stored = coordinator.current_lease()
    assert stored == held
    assert stored is not None and not stored.valid  # judged by the store when read
    assert stored.remaining == pytest.approx(-2 * ttl)


def test_holder_renewing_after_expiry_gets_a_new_epoch(
    coordinator: Coordinator, clock: FakeClock, ttl: float
) -> None:
    # Someone may have seen the lease free in between: the old token must not stay valid.
    first = coordinator.acquire_or_renew("n1", ttl)
    clock.advance(ttl + 1)
    again = coordinator.acquire_or_renew("n1", ttl)
    assert first is not None and again is not None
    assert again.holder == "n1" and again.epoch == first.epoch + 1


def test_release_only_by_holder_and_epoch(coordinator: Coordinator, ttl: float) -> None:
    held = coordinator.acquire_or_renew("n1", ttl)
    assert held is not None
    assert not coordinator.release("n2", held.epoch)
    assert not coordinator.release("n1", held.epoch - 1)
    assert not coordinator.release("n1", held.epoch + 1)
    assert coordinator.current_lease() == held
    assert coordinator.release("n1", held.epoch)
    assert coordinator.current_lease() is None
    assert not coordinator.release("n1", held.epoch)  # already released


def test_epoch_never_goes_back_after_release(coordinator: Coordinator, ttl: float) -> None:
    epochs = []
    for node in ["n1", "n2", "n1", "n1"]:
        lease = coordinator.acquire_or_renew(node, ttl)
        assert lease is not None
        epochs.append(lease.epoch)
        assert coordinator.release(node, lease.epoch)
    assert epochs == [1, 2, 3, 4]
    assert coordinator.last_epoch() == 4
    assert coordinator.current_lease() is None


def test_stale_release_does_not_drop_the_new_holders_lease(
    coordinator: Coordinator, clock: FakeClock, ttl: float
) -> None:
    old = coordinator.acquire_or_renew("n1", ttl)
    clock.advance(ttl)
    new = coordinator.acquire_or_renew("n1", ttl)  # same node, new epoch after expiry
    assert old is not None and new is not None
    assert not coordinator.release("n1", old.epoch)
    assert coordinator.current_lease() == new


def test_lease_state_is_shared_between_coordinator_objects(
    open_store: OpenStore, ttl: float
) -> None:
    one, two = open_store(), open_store()
    held = one.acquire_or_renew("n1", ttl)
    assert two.current_lease() == held
    assert two.acquire_or_renew("n2", ttl) is None
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
    coordinator: Coordinator, clock: FakeClock, ttl: float
) -> None:
    held = coordinator.acquire_or_renew("n1", ttl)
    assert held is not None and held.epoch == 1
    taken = coordinator.take_over("n2", ttl)
    assert taken == Lease.as_read("n2", 2, clock.now + ttl, clock.now)
    assert coordinator.current_lease() == taken and coordinator.last_epoch() == 2
    assert coordinator.acquire_or_renew("n1", ttl) is None  # the old holder's renewal fails
    renewed = coordinator.acquire_or_renew("n2", ttl)  # the new holder renews the same epoch
    assert renewed is not None and renewed.epoch == 2
    assert not coordinator.release("n1", 1)


def test_take_over_after_a_release_never_reuses_an_epoch(
    coordinator: Coordinator, ttl: float
) -> None:
    lease = coordinator.acquire_or_renew("n1", ttl)
    assert lease is not None
    assert coordinator.release("n1", lease.epoch)
    assert coordinator.take_over("n1", ttl).epoch == lease.epoch + 1
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
    coordinator: Coordinator, clock: FakeClock, ttl: float
) -> None:
    # An agent that woke after its deadline: nobody took over, so it keeps its epoch.
    first = coordinator.acquire_or_renew("n1", ttl)
    assert first is not None
    clock.advance(ttl + 5)
    renewed = coordinator.renew_epoch("n1", first.epoch, ttl)
    assert renewed == Lease.as_read("n1", first.epoch, clock.now + ttl, clock.now)
    assert coordinator.current_lease() == renewed
    assert coordinator.acquire_or_renew("n2", ttl) is None  # valid again


def test_renew_epoch_fails_once_another_epoch_or_nothing_is_stored(
    coordinator: Coordinator, clock: FakeClock, ttl: float
) -> None:
    first = coordinator.acquire_or_renew("n1", ttl)
    assert first is not None
    clock.advance(ttl + 1)
    taken = coordinator.acquire_or_renew("n2", ttl)  # a takeover while n1 was frozen
    assert taken is not None and taken.epoch == first.epoch + 1
    assert coordinator.renew_epoch("n1", first.epoch, ttl) is None
    assert coordinator.renew_epoch("n2", first.epoch, ttl) is None  # the right holder, old epoch
    assert coordinator.current_lease() == taken
    assert coordinator.release("n2", taken.epoch)
    assert coordinator.renew_epoch("n2", taken.epoch, ttl) is None  # released: gone for good
    assert coordinator.current_lease() is None


# --- the change token (SupportsChangeToken, SupportsWaitChange) -------------------------------

TOKEN_WAIT = 10.0  # s: a pushed change reaches a waiting reader well within this


def _next_token(reader: Coordinator, before: Hashable | None) -> Hashable | None:
    """The reader's token once it moved from ``before``: waited on for a store that pushes
    changes, read again for one that does not."""
    if isinstance(reader, SupportsWaitChange):
        return reader.wait_change(before, TOKEN_WAIT)
    assert isinstance(reader, SupportsChangeToken)
    return reader.data_version()


def _settled(reader: Coordinator) -> Hashable | None:
    """The reader's token once the watches' own bookkeeping after a change is done (a
    pushed token may move twice for one write: hakit.coord.zookeeper.watch)."""
    assert isinstance(reader, SupportsChangeToken)
    token = reader.data_version()
    if isinstance(reader, SupportsWaitChange):
        for _ in range(20):  # bounded: quiet for 0.3 s ends it
            later = reader.wait_change(token, 0.3)
            if later == token:
                break
            token = later
    return token


def test_the_change_token_moves_with_each_write_of_another_connection(
    open_store: OpenStore, ttl: float
) -> None:
    """Every backend has a token; a reader that skips reads while it is unchanged sees
    each change of the lease, the node records and the cluster state of another
    connection, and an unchanged store keeps it."""
    writer, reader = open_store(), open_store()
    assert isinstance(reader, SupportsChangeToken)
    writer.last_epoch()  # the store exists
    token = _settled(reader)
    assert token is not None and reader.data_version() == token  # nothing written
    writes: list[Callable[[], object]] = [
        lambda: writer.acquire_or_renew("n1", ttl),
        lambda: writer.publish_node(NodeRecord("n1", "active", "RUNNING", 1, 1.0)),
        lambda: writer.publish_node(NodeRecord("n2", "standby", "RUNNING", 0, 1.0)),
        lambda: writer.publish_node(NodeRecord("n2", "standby", "STOPPED", 0, 2.0)),
        lambda: writer.set_state("paused", {"paused": True}),
        lambda: writer.clear_state("paused"),
        lambda: writer.take_over("n2", ttl),
    ]
    for write in writes:
        write()
        moved = _next_token(reader, token)
        assert moved is not None and moved != token
        token = _settled(reader)


def test_the_change_token_moves_when_the_store_ends_a_lease(
    open_store: OpenStore, ttl: float
) -> None:
    """A store that pushes changes also says when it ends a lease by itself (etcd: the
    lease's keys deleted at its TTL; ZooKeeper: the holder's session closed), with no
    write by anyone: a reader woken by it never keeps a lease the store ended."""
    writer, reader = open_store(), open_store()
    if not isinstance(reader, SupportsWaitChange):
        pytest.skip("a store without pushed changes is read at every poll")
    assert writer.acquire_or_renew("n1", ttl) is not None
    token = _settled(reader)
    assert reader.current_lease() is not None
    writer.close()  # the holder goes: its session ends; an etcd lease runs out
    moved = reader.wait_change(token, ttl + TOKEN_WAIT)
    assert moved is not None and moved != token
    lease = reader.current_lease()
    assert lease is not None and not lease.valid
