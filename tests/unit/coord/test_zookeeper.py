"""The ZooKeeper backend's own workings, against a real server and on the server's clock.

The contract tests (test_contract.py) run this backend with the test's clock standing
in for the server's; here nothing stands in: expiry by the server's clock (short
TTLs, real waiting), a lease ending with its holder's session, races between
separate sessions, identity checks, and bounded failures.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kazoo.client import KazooClient

from hakit.coord.base import Lease
from hakit.coord.zookeeper import (
    ZooKeeperCoordinator,
    ZooKeeperSection,
    open_zookeeper,
)
from hakit.errors import CoordinationError, NoClusterState, StoreReplacedError
from tests.support.waiting import wait_until
from tests.support.zookeeper import (
    TEST_PREFIX,
    ZooKeeperServer,
    shared_server,
    start_zookeeper,
    unavailable,
)

TTL = 20.0  # long enough that only a session's end can end it within a test
SHORT = 0.6  # a TTL that runs out while the test waits


@pytest.fixture
def server() -> ZooKeeperServer:
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    return shared_server()


Open = Callable[..., ZooKeeperCoordinator]


@pytest.fixture
def open_store(server: ZooKeeperServer) -> Iterator[Open]:
    """Opens coordinators (each its own session) on one fresh cluster; closes them after."""
    root = f"{TEST_PREFIX}/{uuid.uuid4().hex}"
    opened: list[ZooKeeperCoordinator] = []

    def open_one(**options: object) -> ZooKeeperCoordinator:
        settings: dict[str, object] = {"session_timeout": 30.0, "timeout": 10.0}
        settings.update(options)
        opened.append(ZooKeeperCoordinator(server.hosts, root, **settings))  # type: ignore[arg-type]
        return opened[-1]

    try:
        yield open_one
    finally:
        for store in opened:
            store.close()


def _expire_session(server: ZooKeeperServer, store: ZooKeeperCoordinator) -> None:
    """End ``store``'s session from outside, as ZooKeeper does when it times out: another
    client joins the session and closes it."""
    client = store._client
    assert client is not None and client.client_id is not None
    ghost = KazooClient(hosts=server.hosts, client_id=client.client_id, timeout=30)
    ghost.start(timeout=10)
    ghost.stop()
    ghost.close()


def test_a_lease_expires_by_the_servers_clock(open_store: Open) -> None:
    one, two = open_store(), open_store()
    held = one.acquire_or_renew("n1", SHORT)
    assert held is not None and held.epoch == 1
    read = two.current_lease()
    assert read == held and read is not None and 0 < read.remaining <= SHORT
    assert two.acquire_or_renew("n2", SHORT) is None
    time.sleep(SHORT + 0.2)
    expired = two.current_lease()
    assert expired == held and expired is not None and expired.remaining <= -0.2
    taken = two.acquire_or_renew("n2", SHORT)
    assert taken is not None and (taken.holder, taken.epoch) == ("n2", 2)
    assert one.renew_epoch("n1", 1, SHORT) is None


def test_renew_epoch_after_time_expiry_keeps_the_epoch(open_store: Open) -> None:
    store = open_store()
    held = store.acquire_or_renew("n1", SHORT)
    assert held is not None
    time.sleep(SHORT + 0.2)
    renewed = store.renew_epoch("n1", held.epoch, SHORT)
    assert renewed is not None and renewed.epoch == held.epoch and renewed.revision == 2
    assert renewed.valid and open_store().acquire_or_renew("n2", SHORT) is None


def test_a_lease_ends_when_its_holder_closes_its_session(open_store: Open) -> None:
    holder, other = open_store(), open_store()
    held = holder.acquire_or_renew("n1", TTL)
    assert held is not None
    assert other.acquire_or_renew("n2", TTL) is None
    holder.close()  # the session ends: ZooKeeper deletes its ephemeral znode
    ended = other.current_lease()
    assert ended == held and ended is not None and not ended.valid  # long before its TTL
    taken = other.acquire_or_renew("n2", TTL)
    assert taken is not None and taken.epoch == held.epoch + 1


def test_a_lease_ends_when_its_holders_session_expires(
    server: ZooKeeperServer, open_store: Open
) -> None:
    holder, other = open_store(), open_store()
    held = holder.acquire_or_renew("n1", TTL)
    assert held is not None
    old_session = holder.session_id
    _expire_session(server, holder)
    ended = other.current_lease()
    assert ended == held and ended is not None and not ended.valid
    # The holder's client opens a new session by itself; the holder, frozen meanwhile,
    # keeps its epoch when nobody took over, bound to its new session.
    renewed = wait_until(
        lambda: _quietly(lambda: holder.renew_epoch("n1", held.epoch, TTL)),
        20,
        "the holder to renew from a new session",
        interval=0.1,
    )
    assert renewed.epoch == held.epoch and holder.session_id != old_session
    current = other.current_lease()
    assert current is not None and current.valid
    # Expired again, and this time another node takes over: the renewal fails.
    _expire_session(server, holder)
    taken = other.acquire_or_renew("n2", TTL)
    assert taken is not None and taken.epoch == held.epoch + 1
    wait_until(lambda: _quietly(lambda: holder.last_epoch()), 20, "the holder's new session", 0.1)
    assert holder.renew_epoch("n1", held.epoch, TTL) is None


def test_a_client_whose_connection_thread_died_is_replaced(open_store: Open) -> None:
    """kazoo's connection thread can die on an error of its own (seen in a chaos run under
    libfaketime: EINVAL from its retry sleep); the client then answers every call with
    ConnectionClosedError forever. The coordinator drops it and the next call opens a new
    session, as after an expiry."""
    holder = open_store()
    held = holder.acquire_or_renew("n1", TTL)
    assert held is not None
    old_session = holder.session_id
    holder._client.stop()  # type: ignore[union-attr]  # behind the coordinator's back
    with pytest.raises(CoordinationError, match="Connection has been closed"):
        holder.renew_epoch("n1", held.epoch, TTL)
    renewed = holder.renew_epoch("n1", held.epoch, TTL)  # a new client, a new session
    assert renewed is not None and renewed.epoch == held.epoch
    assert holder.session_id not in (None, old_session)


def _quietly(call: Callable[[], object]) -> object:
    try:
        return call()
    except CoordinationError:
        return None


def _race(stores: list[ZooKeeperCoordinator]) -> dict[str, object]:
    """Every store asks for the lease for its own node at once: node -> what it got."""
    barrier = threading.Barrier(len(stores))
    results: dict[str, object] = {}

    def contend(index: int, store: ZooKeeperCoordinator) -> None:
        barrier.wait(timeout=10)
        try:
            results[f"n{index}"] = store.acquire_or_renew(f"n{index}", TTL)
        except BaseException as error:  # reported by the test
            results[f"n{index}"] = error

    threads = [threading.Thread(target=contend, args=(i, s)) for i, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def test_concurrent_acquires_have_exactly_one_winner(open_store: Open) -> None:
    stores = [open_store() for _ in range(4)]  # four sessions
    epochs = []
    for round_ in range(15):
        results = _race(stores)
        winners = [(node, lease) for node, lease in results.items() if lease is not None]
        assert len(results) == len(stores) and len(winners) == 1, (round_, results)
        node, lease = winners[0]
        assert isinstance(lease, Lease) and lease.holder == node
        epochs.append(lease.epoch)
        assert stores[int(node[1:])].release(node, lease.epoch)
    assert epochs == list(range(1, 16))


def test_the_epoch_strictly_increases_across_holders_sessions_and_release(
    open_store: Open,
) -> None:
    a, b = open_store(), open_store()
    seen = []
    for store, node, step in [
        (a, "n1", "acquire"),
        (b, "n2", "take_over"),
        (b, "n2", "release"),
        (a, "n1", "acquire"),
        (a, "n1", "close"),
        (b, "n2", "acquire"),
        (b, "n2", "release"),
        (a, "n1", "take_over"),
    ]:
        if step == "acquire":
            lease = store.acquire_or_renew(node, TTL)
            assert lease is not None
            seen.append(lease.epoch)
        elif step == "take_over":
            seen.append(store.take_over(node, TTL).epoch)
        elif step == "release":
            assert store.release(node, seen[-1])
        else:
            store.close()
    assert seen == sorted(set(seen)) == [1, 2, 3, 4, 5]
    assert open_store().last_epoch() == 5


def test_node_ages_and_state_expiry_are_on_the_servers_clock(open_store: Open) -> None:
    from hakit.coord.base import NodeRecord

    store = open_store()
    store.publish_node(NodeRecord("node1", "active", "RUNNING", 1, 0.0, {"pid": 7}))
    store.set_state("handover", {"id": "a"}, ttl=0.4)
    store.set_state("paused", {"paused": True})
    assert store.cluster_state() == {"handover": {"id": "a"}, "paused": {"paused": True}}
    time.sleep(0.6)
    (record,) = store.nodes()
    assert record.detail == {"pid": 7} and 0.5 <= record.age < 5
    assert store.get_state("handover") is None
    assert store.cluster_state() == {"paused": {"paused": True}}


def test_the_event_history_is_bounded_and_ids_keep_increasing(open_store: Open) -> None:
    from hakit.coord.base import Event

    store = open_store(max_events=5, trim_every=2)
    ids = [store.append_event(Event(0, float(i), "n1", "k", f"event {i}")).id for i in range(12)]
    assert ids == sorted(set(ids)) and ids[0] == 1
    kept = store.events()
    assert 5 <= len(kept) <= 6 and [e.reason for e in kept][-1] == "event 11"
    assert [e.id for e in kept] == ids[-len(kept) :]


def test_a_lease_ttl_longer_than_the_session_is_refused(open_store: Open) -> None:
    store = open_store(session_timeout=2.0)
    with pytest.raises(CoordinationError, match="session_timeout"):
        store.acquire_or_renew("n1", 3.0)
    with pytest.raises(ValueError, match="ttl"):
        store.take_over("n1", 0)


def test_a_store_replaced_or_deleted_under_a_process_is_refused(
    server: ZooKeeperServer, open_store: Open, tmp_path: Path
) -> None:
    memory = tmp_path / "memory" / "n1.json"
    memory.parent.mkdir()
    agent = open_store(memory_path=memory)
    held = agent.acquire_or_renew("n1", TTL)
    assert held is not None and agent.identity is not None
    admin = KazooClient(hosts=server.hosts)
    admin.start(timeout=10)
    try:
        admin.delete(agent.root, recursive=True)
        with pytest.raises(StoreReplacedError, match="identity znode is gone"):
            agent.current_lease()
        fresh = open_store()  # a process that never saw a store creates a new one
        assert fresh.last_epoch() == 0 and fresh.identity != agent.identity
        with pytest.raises(StoreReplacedError, match=f"identity {fresh.identity}"):
            agent.acquire_or_renew("n1", TTL)
        # The agent restarts: its memory (on disk) still refuses the new store.
        agent.close()
        restarted = open_store(memory_path=memory)
        with pytest.raises(StoreReplacedError):
            restarted.last_epoch()
    finally:
        admin.stop()
        admin.close()


def test_opening_without_create_finds_no_store(server: ZooKeeperServer, tmp_path: Path) -> None:
    section = ZooKeeperSection(
        hosts=[server.hosts], prefix=TEST_PREFIX, cluster=f"c{uuid.uuid4().hex}"
    )
    with pytest.raises(NoClusterState, match=f"{TEST_PREFIX}/{section.cluster}"):
        open_zookeeper(
            section, state_dir=tmp_path, config=None, create=False, node=None, cluster="c"
        )
    made = open_zookeeper(
        section, state_dir=tmp_path, config=None, create=True, node="n1", cluster="c"
    )
    try:
        assert made.last_epoch() == 0
        assert (tmp_path / "memory" / "n1.json").is_file()
    finally:
        made.close()
    found = open_zookeeper(
        section, state_dir=tmp_path, config=None, create=False, node=None, cluster="c"
    )
    found.close()


def test_an_unreachable_ensemble_fails_within_the_timeout() -> None:
    from hakit.demo.cluster import free_ports

    (port,) = free_ports(1)  # nothing listens there
    store = ZooKeeperCoordinator(f"127.0.0.1:{port}", "/hakit/x", timeout=1.0)
    started = time.monotonic()
    with pytest.raises(CoordinationError, match=f"127.0.0.1:{port}"):
        store.current_lease()
    assert time.monotonic() - started < 5
    store.close()


def test_a_server_that_stops_answering_fails_calls_within_the_timeout() -> None:
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    own = start_zookeeper()
    try:
        store = ZooKeeperCoordinator(own.hosts, "/hakit/c", session_timeout=10.0, timeout=2.0)
        # A new JVM on a busy machine may be slow to answer the first calls: wait for one.
        wait_until(
            lambda: _quietly(lambda: store.acquire_or_renew("n1", 5.0)), 30, "a first lease", 0.1
        )
        own.stop()
        started = time.monotonic()
        with pytest.raises(CoordinationError):
            store.renew_epoch("n1", 1, 5.0)
        assert time.monotonic() - started < 2.0 + 3
        store.close()
    finally:
        own.stop()


def test_the_identity_and_epoch_are_not_read_again_while_unchanged(
    server: ZooKeeperServer, open_store: Open
) -> None:
    """The guard cache (hakit.coord.zookeeper.guardcache): calls skip the two reads
    while the watches say nothing changed, and see another session's change at once."""
    reader, writer = open_store(), open_store()
    assert writer.acquire_or_renew("n1", TTL) is not None
    assert reader.current_lease() is not None  # reads them, with watches
    cache = reader._guard_cache
    before = cache.hits
    for _ in range(3):
        assert reader.current_lease() is not None
        reader.cluster_state()
    assert cache.hits == before + 6
    # Another session moves the epoch: the next call sees it, though it read it from cache.
    taken = writer.take_over("n2", TTL)
    lease = reader.current_lease()
    assert lease is not None and (lease.holder, lease.epoch) == ("n2", taken.epoch)
    assert reader.highest_epoch == taken.epoch
    # The store replaced under the reader: refused at the very next call.
    admin = KazooClient(hosts=server.hosts)
    admin.start(timeout=10)
    try:
        assert reader.current_lease() is not None  # warm again
        admin.delete(reader.root, recursive=True)
        fresh = open_store()
        assert fresh.last_epoch() == 0
        with pytest.raises(StoreReplacedError):
            reader.current_lease()
    finally:
        admin.stop()
        admin.close()
