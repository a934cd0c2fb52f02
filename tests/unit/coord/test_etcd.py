"""The etcd backend's own workings, against a real etcd (tests/support/etcd.py).

The contract (test_contract.py) runs against etcd too; here: what only a
server-clock, multi-host store shows: expiry by the server when the holder stops
renewing, races between writers, epochs across holders, records and state that
vanish with their etcd lease, the identity, and calls that never hang.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hakit.coord.base import Event, Lease, NodeRecord, SupportsChangeToken
from hakit.coord.etcd import EtcdCoordinator, EtcdSection
from hakit.errors import CoordinationError, NoClusterState, StoreReplacedError
from tests.support.etcd import EtcdServer, unique_prefix
from tests.support.waiting import wait_until

Maker = Callable[..., EtcdCoordinator]


@pytest.fixture
def make(etcd_server: EtcdServer) -> Iterator[Maker]:
    """Coordinators on one fresh prefix of the shared server (closed after the test)."""
    prefix = unique_prefix()
    opened: list[EtcdCoordinator] = []

    def make_one(cluster: str = "c", **section: object) -> EtcdCoordinator:
        create = bool(section.pop("create", True))
        memory_path = section.pop("memory_path", None)
        fields: dict[str, object] = {
            "endpoints": [etcd_server.endpoint],
            "prefix": prefix,
            "timeout": 5.0,
        }
        fields.update(section)
        store = EtcdCoordinator(
            EtcdSection.model_validate(fields),
            cluster=cluster,
            create=create,
            memory_path=memory_path if isinstance(memory_path, Path) else None,
        )
        opened.append(store)
        return store

    yield make_one
    for store in opened:
        store.close()


def test_a_lease_expires_on_the_server_when_the_holder_stops_renewing(make: Maker) -> None:
    holder, other = make(), make()
    lease = holder.acquire_or_renew("n1", 2.0)
    started = time.monotonic()  # after the server granted it
    assert lease is not None and lease.remaining == 2.0
    read = other.current_lease()
    assert read is not None and read.valid and 0 < read.remaining <= 2.0  # the server's TTL left
    taken = wait_until(
        lambda: other.acquire_or_renew("n2", 2.0), 5.0, "the server to expire the lease"
    )
    # Never sooner than the ttl asked; at most etcd's 500 ms revoke tick (and polling) late.
    assert 2.0 <= time.monotonic() - started < 3.0
    assert taken.epoch == lease.epoch + 1
    stale = holder.current_lease()
    assert stale is not None and stale.holder == "n2"
    assert holder.renew_epoch("n1", lease.epoch, 2.0) is None  # the old holder fences itself


def test_a_reader_sees_expiry_no_later_than_the_server(make: Maker) -> None:
    # etcd reports a lease's TTL left in whole seconds, rounded down: a reader may judge a
    # lease expired up to a second early (conservative), never late.
    holder, reader = make(), make()
    assert holder.acquire_or_renew("n1", 2.0) is not None
    wait_until(lambda: not (current := reader.current_lease()) or not current.valid, 5.0, "expiry")
    seen_expired = time.monotonic()
    wait_until(lambda: reader.acquire_or_renew("n2", 2.0), 5.0, "the server to expire it")
    assert time.monotonic() - seen_expired < 2.0  # < 1 s of rounding + the 500 ms revoke tick


def test_renewals_keep_the_lease_past_its_ttl(make: Maker) -> None:
    holder = make()
    first = holder.acquire_or_renew("n1", 1.0)
    assert first is not None
    for _ in range(6):  # 1.8 s: well past one TTL
        time.sleep(0.3)
        renewed = holder.acquire_or_renew("n1", 1.0)
        assert renewed is not None and renewed.epoch == first.epoch
    assert renewed.revision == 7
    assert make().acquire_or_renew("n2", 1.0) is None


def test_two_writers_acquiring_at_once_exactly_one_wins(make: Maker) -> None:
    stores = [make(), make()]
    for round_ in range(5):
        barrier = threading.Barrier(2)
        results: list[Lease | None] = [None, None]

        def acquire(i: int, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            results[i] = stores[i].acquire_or_renew(f"n{i}", 5.0)  # noqa: B023

        threads = [threading.Thread(target=acquire, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=20)
        winners = [lease for lease in results if lease is not None]
        assert len(winners) == 1, results
        assert winners[0].epoch == round_ + 1
        assert stores[0].release(winners[0].holder, winners[0].epoch)


def test_epochs_strictly_increase_across_holders_releases_and_takeovers(make: Maker) -> None:
    one, two = make(), make()
    seen = []
    lease = one.acquire_or_renew("n1", 5.0)
    assert lease is not None
    seen.append(lease.epoch)
    seen.append(two.take_over("n2", 5.0).epoch)
    assert one.acquire_or_renew("n1", 5.0) is None
    assert two.release("n2", seen[-1])
    again = one.acquire_or_renew("n1", 5.0)
    assert again is not None
    seen.append(again.epoch)
    assert one.release("n1", again.epoch)
    seen.append(two.take_over("n2", 5.0).epoch)
    assert seen == [1, 2, 3, 4]
    assert one.last_epoch() == two.last_epoch() == 4


def test_a_node_record_vanishes_when_its_agent_stops_publishing(make: Maker) -> None:
    publisher, reader = make(record_ttl=1.0), make()
    publisher.publish_node(NodeRecord("node1", "active", "RUNNING", 1, 5.0, {"pid": 7}))
    (record,) = reader.nodes()
    assert record.node == "node1" and record.detail == {"pid": 7}
    assert 0 <= record.age <= 1.0  # the record lease's granted TTL less what is left
    wait_until(lambda: not reader.nodes(), 5.0, "the record to vanish with its lease")


def test_a_node_record_age_grows_between_publishes(make: Maker) -> None:
    publisher = make(record_ttl=30.0)
    publisher.publish_node(NodeRecord("node1", "standby", "STOPPED", 0, 5.0))
    time.sleep(2.1)
    (record,) = publisher.nodes()
    assert 2.0 <= record.age <= 3.0  # whole seconds, rounded up
    publisher.publish_node(NodeRecord("node1", "standby", "STOPPED", 0, 6.0))
    (record,) = publisher.nodes()
    assert record.age <= 1.0 and record.updated_at == 6.0


def test_cluster_state_with_a_ttl_is_forgotten_by_the_server(make: Maker) -> None:
    store = make()
    store.set_state("router/r1", {"sees": ["n1"]}, ttl=1.0)
    store.set_state("paused", {"paused": True})
    assert store.cluster_state() == {"router/r1": {"sees": ["n1"]}, "paused": {"paused": True}}
    wait_until(lambda: store.get_state("router/r1") is None, 5.0, "the value to expire")
    assert store.cluster_state() == {"paused": {"paused": True}}


def test_clusters_sharing_a_prefix_never_see_each_other(make: Maker) -> None:
    shop, blog = make("shop"), make("blog")
    assert shop.acquire_or_renew("n1", 5.0) is not None
    shop.set_state("paused", {"paused": True})
    assert blog.current_lease() is None and blog.cluster_state() == {}
    assert blog.acquire_or_renew("n1", 5.0) is not None  # its own lease, its own epoch 1
    assert blog.last_epoch() == 1 and shop.prefix != blog.prefix


def test_a_reader_needs_an_existing_store(make: Maker) -> None:
    with pytest.raises(NoClusterState):
        make(create=False).current_lease()
    make().last_epoch()  # an agent creates it
    assert make(create=False).last_epoch() == 0


def test_keys_deleted_under_a_running_process_are_refused(
    make: Maker, etcd_server: EtcdServer
) -> None:
    store = make()
    lease = store.acquire_or_renew("n1", 5.0)
    assert lease is not None
    client = etcd_server.client()
    client.delete_prefix(store.prefix)  # the store is gone (a wiped etcd, a wrong prefix...)
    with pytest.raises(StoreReplacedError, match="replaced or went back"):
        store.acquire_or_renew("n1", 5.0)
    with pytest.raises(StoreReplacedError):
        store.current_lease()
    fresh = make()  # a process that never saw it creates a new store
    assert fresh.acquire_or_renew("n2", 5.0) is not None
    with pytest.raises(StoreReplacedError):  # another identity: still refused
        store.nodes()


def test_a_read_from_before_another_thread_made_the_store_is_read_again(
    make: Maker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh process, two threads: the second reads "no store" just before the first
    creates it and learns it. That read predates the identity now trusted: read again,
    not "the store was replaced" (a CI run once failed on this interleaving)."""
    store = make()
    transport = store._transport
    real = transport.txn
    first_done = threading.Event()
    held: list[str] = []

    def second_thread_waits(*args: Any, **kwargs: Any) -> Any:
        answer = real(*args, **kwargs)
        if threading.current_thread().name == "second" and not held:
            held.append("read")  # its first read answered: held back until the first is done
            assert first_done.wait(10)
        return answer

    monkeypatch.setattr(transport, "txn", second_thread_waits)
    errors: list[BaseException] = []

    def second() -> None:
        try:
            store.append_event(Event(0, 1.0, "n2", "restart", "second", 0, "test", {}))
        except BaseException as error:  # reported to the test thread below
            errors.append(error)

    thread = threading.Thread(target=second, name="second")
    thread.start()
    wait_until(lambda: held == ["read"], timeout=10, what="the second thread's first read")
    store.append_event(Event(0, 1.0, "n1", "restart", "first", 0, "test", {}))
    first_done.set()
    thread.join(timeout=10)
    assert errors == []
    assert sorted(e.reason for e in store.events()) == ["first", "second"]


def test_an_agents_memory_refuses_a_store_that_went_back(make: Maker, tmp_path: Path) -> None:
    memory = tmp_path / "memory" / "n1.json"
    memory.parent.mkdir()
    agent = make(memory_path=memory)
    for _ in range(3):
        lease = agent.acquire_or_renew("n1", 5.0)
        assert lease is not None and agent.release("n1", lease.epoch)
    assert agent.highest_epoch == 3
    restarted = make(memory_path=memory)
    assert restarted.last_epoch() == 3 and restarted.identity == agent.identity


def test_every_call_fails_within_the_timeout_when_etcd_does_not_answer() -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections (the backlog), never answers
    port = silent.getsockname()[1]
    try:
        store = EtcdCoordinator(
            EtcdSection(endpoints=[f"http://127.0.0.1:{port}"], timeout=0.5), cluster="c"
        )
        started = time.monotonic()
        with pytest.raises(CoordinationError, match=r"within 0\.5 s"):
            store.acquire_or_renew("n1", 3.0)
        assert time.monotonic() - started < 1.5
    finally:
        silent.close()


def test_a_dead_endpoint_is_skipped_for_the_next(make: Maker, etcd_server: EtcdServer) -> None:
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]  # bound, not listening: connections are refused
    try:
        store = make(endpoints=[f"http://127.0.0.1:{port}", etcd_server.endpoint])
        assert store.acquire_or_renew("n1", 5.0) is not None
    finally:
        dead.close()


def test_the_change_token_changes_with_writes(make: Maker) -> None:
    store = make()
    assert isinstance(store, SupportsChangeToken)
    before = store.data_version()
    assert store.data_version() == before
    store.set_state("paused", {"paused": True})
    after = store.data_version()
    assert after != before
    store.clear_state("paused")
    cleared = store.data_version()
    assert cleared != after
    assert store.data_version(wait=False) == cleared  # the watch keeps it: no request


def test_the_change_token_follows_another_connections_writes(make: Maker) -> None:
    """The watch (hakit.coord.etcd.watch): a reader's token changes when another
    connection writes, a lease expiry by the server included, with no call of its own."""
    reader, writer = make(), make()
    writer.last_epoch()  # the store exists
    before = reader.data_version()
    assert before is not None and reader.data_version(wait=False) == before
    lease = writer.acquire_or_renew("n1", 1.0)
    assert lease is not None
    after = reader.wait_change(before, 5.0)
    assert after is not None and after != before
    # Expiry: etcd deletes the alive key; nobody writes.
    expired = reader.wait_change(reader.data_version(), 5.0)
    assert expired is not None and expired != after


def test_a_closed_store_stops_its_watch(make: Maker) -> None:
    store = make()
    assert store.data_version() is not None
    store.close()
    assert store.data_version(wait=False) is None
    assert store.data_version()[0] == "read"  # type: ignore[index]


def test_lease_and_nodes_read_together_answer_as_the_two_calls(make: Maker) -> None:
    """The cluster view's read (hakit.coord.view.read_cluster): one transaction and the
    TTLs asked at once say what current_lease() and nodes() say."""
    store = make()
    assert store.lease_and_nodes() == (None, [])
    lease = store.acquire_or_renew("n1", 5.0)
    assert lease is not None
    for name in ("n1", "n2", "n3"):
        store.publish_node(NodeRecord(name, "standby", "RUNNING", 0, 1.0))
    together, records = store.lease_and_nodes()
    assert together == store.current_lease() == lease
    assert together is not None and 3 <= together.remaining <= 5
    assert [r.node for r in records] == ["n1", "n2", "n3"] == [r.node for r in store.nodes()]
    assert all(0 <= r.age <= 5 for r in records)
    assert store.release("n1", lease.epoch)
    gone, _ = store.lease_and_nodes()
    assert gone is None
