"""SqliteCoordinator on a real SQLite file, with an injected clock where time matters."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hakit.coord.base import Coordinator, Event, Lease, NodeRecord
from hakit.coord.sqlite import SCHEMA_VERSION, SqliteCoordinator, next_lease
from hakit.errors import CoordinationError, HakitError

TTL = 10.0


class FakeClock:
    """Wall-clock seconds that move only when the test says so."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def coord(tmp_path: Path, clock: FakeClock) -> Iterator[SqliteCoordinator]:
    store = SqliteCoordinator(tmp_path / "coordination.db", clock=clock)
    try:
        yield store
    finally:
        store.close()


def test_satisfies_the_coordinator_protocol(coord: SqliteCoordinator) -> None:
    as_protocol: Coordinator = coord  # checked by mypy
    assert as_protocol.last_epoch() == 0


# --- the pure decision --------------------------------------------------------


@pytest.mark.parametrize(
    ("stored", "node", "expected"),
    [
        (None, "a", Lease.as_read("a", 8, 110.0, 100.0)),  # never held: next epoch
        (
            Lease.as_read("a", 7, 105.0, 100.0),
            "a",
            Lease.as_read("a", 7, 110.0, 100.0),
        ),  # holder renews: same epoch
        (Lease.as_read("a", 7, 105.0, 100.0), "b", None),  # held by another: refused
        (
            Lease.as_read("a", 7, 100.0, 100.0),
            "b",
            Lease.as_read("b", 8, 110.0, 100.0),
        ),  # expired exactly now: free
        (
            Lease.as_read("a", 7, 99.0, 100.0),
            "a",
            Lease.as_read("a", 8, 110.0, 100.0),
        ),  # holder after expiry: new epoch
    ],
)
def test_next_lease(stored: Lease | None, node: str, expected: Lease | None) -> None:
    assert next_lease(stored, 7, node, now=100.0, ttl=10.0) == expected


# --- leader lease ---------------------------------------------------------------


def test_first_acquire_gets_epoch_one_and_expires_after_ttl(
    coord: SqliteCoordinator, clock: FakeClock
) -> None:
    assert coord.current_lease() is None
    lease = coord.acquire_or_renew("n1", TTL)
    assert lease == Lease.as_read("n1", 1, clock.now + TTL, clock.now)
    assert coord.current_lease() == lease
    assert coord.last_epoch() == 1


def test_renew_by_holder_extends_and_keeps_epoch(
    coord: SqliteCoordinator, clock: FakeClock
) -> None:
    first = coord.acquire_or_renew("n1", TTL)
    clock.advance(TTL - 1)
    renewed = coord.acquire_or_renew("n1", TTL)
    assert first is not None and renewed is not None
    assert renewed.epoch == first.epoch
    assert renewed.expires_at == clock.now + TTL > first.expires_at
    assert coord.last_epoch() == 1


def test_other_node_is_refused_while_lease_is_valid(
    coord: SqliteCoordinator, clock: FakeClock
) -> None:
    held = coord.acquire_or_renew("n1", TTL)
    clock.advance(TTL - 0.001)
    assert coord.acquire_or_renew("n2", TTL) is None
    assert coord.current_lease() == held


def test_expired_lease_is_stolen_with_a_greater_epoch(
    coord: SqliteCoordinator, clock: FakeClock
) -> None:
    old = coord.acquire_or_renew("n1", TTL)
    clock.advance(TTL)
    stolen = coord.acquire_or_renew("n2", TTL)
    assert old is not None and stolen is not None
    assert stolen.holder == "n2" and stolen.epoch == old.epoch + 1
    # The former holder is now refused.
    assert coord.acquire_or_renew("n1", TTL) is None


def test_current_lease_returns_expired_lease_as_stored(
    coord: SqliteCoordinator, clock: FakeClock
) -> None:
    held = coord.acquire_or_renew("n1", TTL)
    clock.advance(TTL * 3)
    stored = coord.current_lease()
    assert stored == held
    assert stored is not None and not stored.valid  # judged by the store when read
    assert stored.remaining == pytest.approx(-2 * TTL)


def test_holder_renewing_after_expiry_gets_a_new_epoch(
    coord: SqliteCoordinator, clock: FakeClock
) -> None:
    # Someone may have seen the lease free in between: the old token must not stay valid.
    first = coord.acquire_or_renew("n1", TTL)
    clock.advance(TTL + 1)
    again = coord.acquire_or_renew("n1", TTL)
    assert first is not None and again is not None
    assert again.holder == "n1" and again.epoch == first.epoch + 1


def test_release_only_by_holder_and_epoch(coord: SqliteCoordinator) -> None:
    held = coord.acquire_or_renew("n1", TTL)
    assert held is not None
    assert not coord.release("n2", held.epoch)
    assert not coord.release("n1", held.epoch - 1)
    assert not coord.release("n1", held.epoch + 1)
    assert coord.current_lease() == held
    assert coord.release("n1", held.epoch)
    assert coord.current_lease() is None
    assert not coord.release("n1", held.epoch)  # already released


def test_epoch_never_goes_back_after_release(coord: SqliteCoordinator) -> None:
    epochs = []
    for node in ["n1", "n2", "n1", "n1"]:
        lease = coord.acquire_or_renew(node, TTL)
        assert lease is not None
        epochs.append(lease.epoch)
        assert coord.release(node, lease.epoch)
    assert epochs == [1, 2, 3, 4]
    assert coord.last_epoch() == 4
    assert coord.current_lease() is None


def test_stale_release_does_not_drop_the_new_holders_lease(
    coord: SqliteCoordinator, clock: FakeClock
) -> None:
    old = coord.acquire_or_renew("n1", TTL)
    clock.advance(TTL)
    new = coord.acquire_or_renew("n1", TTL)  # same node, new epoch after expiry
    assert old is not None and new is not None
    assert not coord.release("n1", old.epoch)
    assert coord.current_lease() == new


def test_lease_state_is_shared_between_coordinator_objects(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "coordination.db"
    with SqliteCoordinator(path, clock=clock) as one, SqliteCoordinator(path, clock=clock) as two:
        held = one.acquire_or_renew("n1", TTL)
        assert two.current_lease() == held
        assert two.acquire_or_renew("n2", TTL) is None
    with SqliteCoordinator(path, clock=clock) as reopened:
        assert reopened.current_lease() == held
        assert reopened.last_epoch() == 1


def test_non_positive_ttl_is_rejected(coord: SqliteCoordinator) -> None:
    with pytest.raises(ValueError, match="ttl"):
        coord.acquire_or_renew("n1", 0)


# --- node records -----------------------------------------------------------------


def test_publish_and_read_node_records_sorted_by_name(coord: SqliteCoordinator) -> None:
    assert list(coord.nodes()) == []
    n2 = NodeRecord("node2", "standby", "STOPPED", 0, 10.0, {"pid": None})
    n1 = NodeRecord("node1", "active", "RUNNING", 3, 11.0, {"pid": 4242, "restarts": 1})
    coord.publish_node(n2)
    coord.publish_node(n1)
    assert list(coord.nodes()) == [n1, n2]


def test_publish_replaces_the_nodes_record(coord: SqliteCoordinator) -> None:
    coord.publish_node(NodeRecord("node1", "active", "RUNNING", 3, 11.0, {"pid": 1}))
    newer = NodeRecord("node1", "stopped", "STOPPED", 3, 12.0)
    coord.publish_node(newer)
    assert list(coord.nodes()) == [newer]


# --- event history ----------------------------------------------------------------


def _event(n: int) -> Event:
    return Event(
        0, 100.0 + n, "node1", "restart", f"restart number {n}.", 2, "agent:node1", {"n": n}
    )


def test_append_assigns_increasing_ids_and_keeps_fields(coord: SqliteCoordinator) -> None:
    stored = [coord.append_event(_event(n)) for n in range(3)]
    assert [e.id for e in stored] == [1, 2, 3]
    assert coord.events() == stored
    assert stored[1] == Event(
        2, 101.0, "node1", "restart", "restart number 1.", 2, "agent:node1", {"n": 1}
    )


def test_events_after_id_and_limit(coord: SqliteCoordinator) -> None:
    for n in range(10):
        coord.append_event(_event(n))
    assert [e.id for e in coord.events(after_id=7)] == [8, 9, 10]
    assert [e.id for e in coord.events(after_id=2, limit=3)] == [3, 4, 5]
    assert list(coord.events(after_id=10)) == []
    assert list(coord.events(limit=0)) == []


def test_event_history_is_bounded_to_the_newest(tmp_path: Path) -> None:
    with SqliteCoordinator(tmp_path / "c.db", max_events=5) as store:
        for n in range(12):
            store.append_event(_event(n))
        kept = store.events()
        assert [e.id for e in kept] == [8, 9, 10, 11, 12]
        assert [e.data["n"] for e in kept] == [7, 8, 9, 10, 11]
        # Ids keep increasing after old rows are deleted.
        assert store.append_event(_event(12)).id == 13


# --- processes and threads ------------------------------------------------------


def test_forked_child_opens_its_own_connection(tmp_path: Path) -> None:
    store = SqliteCoordinator(tmp_path / "c.db")
    try:
        held = store.acquire_or_renew("parent", 60.0)  # opens the parent's connection
        assert held is not None
        parent_conn = store._conn
        pid = os.fork()
        if pid == 0:  # child: must not touch the parent's connection
            status = 1
            try:
                store.publish_node(NodeRecord("child", "standby", "STOPPED", 0, 1.0))
                ok = (
                    store._conn is not parent_conn and store.acquire_or_renew("child", 60.0) is None
                )
                status = 0 if ok else 3
            finally:
                os._exit(status)
        _, wait_status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(wait_status) == 0
        # The parent's connection still works and sees the child's write.
        assert store._conn is parent_conn
        assert [r.node for r in store.nodes()] == ["child"]
        renewed = store.acquire_or_renew("parent", 60.0)
        assert renewed is not None and (renewed.holder, renewed.epoch) == ("parent", 1)
    finally:
        store.close()


def test_threads_share_one_coordinator(coord: SqliteCoordinator) -> None:
    errors: list[BaseException] = []

    def append_many() -> None:
        try:
            for n in range(50):
                coord.append_event(_event(n))
        except BaseException as error:  # reported to the test thread below
            errors.append(error)

    threads = [threading.Thread(target=append_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert [e.id for e in coord.events()] == list(range(1, 201))


# --- errors ---------------------------------------------------------------------


def test_unwritable_path_raises_coordination_error_with_advice(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where a directory should be")
    path = blocker / "coordination.db"
    with pytest.raises(CoordinationError) as caught:
        SqliteCoordinator(path).acquire_or_renew("n1", TTL)
    message = str(caught.value)
    assert isinstance(caught.value, HakitError)
    assert str(path) in message
    assert "acquire or renew the lease for n1" in message
    assert f"check that the directory {blocker} exists" in message
    assert isinstance(caught.value.__cause__, sqlite3.Error)


def test_file_that_is_not_a_store_raises_coordination_error(tmp_path: Path) -> None:
    path = tmp_path / "coordination.db"
    path.write_bytes(b"this is not an SQLite database, just some bytes" * 100)
    with pytest.raises(CoordinationError, match="not a hakit coordination store"):
        SqliteCoordinator(path).nodes()


def test_store_from_a_newer_hakit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "coordination.db"
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(CoordinationError, match="newer hakit"):
        SqliteCoordinator(path).last_epoch()


def test_store_uses_wal_and_a_versioned_schema(coord: SqliteCoordinator) -> None:
    coord.last_epoch()
    raw = sqlite3.connect(coord.path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        raw.close()


def test_waits_for_a_rollback_mode_writer_then_reports_the_lock(tmp_path: Path) -> None:
    # SQLite refuses the switch to WAL at once while another connection writes in
    # rollback mode; the coordinator must wait its busy timeout, then explain.
    path = tmp_path / "coordination.db"
    writer = sqlite3.connect(path, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        store = SqliteCoordinator(path, busy_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(CoordinationError, match="locked longer than the busy timeout"):
            store.last_epoch()
        assert time.monotonic() - started >= 0.3
        writer.execute("ROLLBACK")
        assert store.last_epoch() == 0  # works once the writer is gone
        store.close()
    finally:
        writer.close()


# --- forced takeover (operator's failover) -----------------------------------------------


def test_take_over_moves_a_valid_lease_under_a_new_epoch(
    coord: SqliteCoordinator, clock: FakeClock
) -> None:
    held = coord.acquire_or_renew("n1", TTL)
    assert held is not None and held.epoch == 1
    taken = coord.take_over("n2", TTL)
    assert taken == Lease.as_read("n2", 2, clock.now + TTL, clock.now)
    assert coord.current_lease() == taken and coord.last_epoch() == 2
    assert coord.acquire_or_renew("n1", TTL) is None  # the old holder's renewal fails
    renewed = coord.acquire_or_renew("n2", TTL)  # the new holder renews the same epoch
    assert renewed is not None and renewed.epoch == 2
    assert not coord.release("n1", 1)


def test_take_over_after_a_release_never_reuses_an_epoch(coord: SqliteCoordinator) -> None:
    lease = coord.acquire_or_renew("n1", TTL)
    assert lease is not None
    assert coord.release("n1", lease.epoch)
    assert coord.take_over("n1", TTL).epoch == lease.epoch + 1
    with pytest.raises(ValueError):
        coord.take_over("n1", 0)


# --- cluster state (operator intents) --------------------------------------------------------


def test_cluster_state_set_get_replace_clear(coord: SqliteCoordinator) -> None:
    assert coord.get_state("paused") is None and coord.cluster_state() == {}
    coord.set_state("paused", {"paused": True, "actor": "operator:alice"})
    coord.set_state("handover", {"id": "a", "target": "n2", "at": 1.5})
    assert coord.get_state("paused") == {"paused": True, "actor": "operator:alice"}
    coord.set_state("paused", {"paused": False})
    assert coord.cluster_state() == {
        "handover": {"id": "a", "target": "n2", "at": 1.5},
        "paused": {"paused": False},
    }
    assert coord.clear_state("paused")
    assert not coord.clear_state("paused")  # already gone
    assert coord.cluster_state() == {"handover": {"id": "a", "target": "n2", "at": 1.5}}


def test_clear_state_if_value_is_a_compare_and_delete(coord: SqliteCoordinator) -> None:
    first = {"id": "a", "target": "n2", "expires_at": 1000.25}
    coord.set_state("handover", first)
    newer = {"id": "b", "target": "n3", "expires_at": 2000.5}
    coord.set_state("handover", newer)
    assert not coord.clear_state("handover", if_value=first)  # never removes a newer intent
    assert coord.get_state("handover") == newer
    read_back = coord.get_state("handover")
    assert read_back is not None and coord.clear_state("handover", if_value=read_back)
    assert coord.get_state("handover") is None


def test_cluster_state_is_shared_between_processes_objects(tmp_path: Path) -> None:
    path = tmp_path / "coordination.db"
    with SqliteCoordinator(path) as writer, SqliteCoordinator(path) as reader:
        writer.set_state("paused", {"paused": True})
        assert reader.get_state("paused") == {"paused": True}


def test_recent_events_are_the_newest_oldest_first(coord: SqliteCoordinator) -> None:
    for i in range(5):
        coord.append_event(Event(0, float(i), "n1", "k", f"event {i}"))
    assert [e.reason for e in coord.recent_events(2)] == ["event 3", "event 4"]
    assert len(coord.recent_events(100)) == 5 and coord.recent_events(0) == []


def test_a_version_1_store_is_migrated_keeping_its_data(tmp_path: Path) -> None:
    """A store written before cluster_state existed gains the table, and keeps its lease."""
    from hakit.coord.sqlite import _SCHEMA_V1

    path = tmp_path / "coordination.db"
    raw = sqlite3.connect(path, isolation_level=None)
    for statement in _SCHEMA_V1:
        raw.execute(statement)
    raw.execute("INSERT INTO lease VALUES (1, 'n1', 4, 1e12)")
    raw.execute("UPDATE epoch_counter SET last_epoch = 4")
    raw.close()
    with SqliteCoordinator(path) as store:
        assert store.last_epoch() == 4
        store.set_state("paused", {"paused": True})
        assert store.get_state("paused") == {"paused": True}
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    finally:
        raw.close()


def test_renew_epoch_extends_even_an_expired_lease_under_the_same_epoch(
    coord: SqliteCoordinator, clock: FakeClock
) -> None:
    # An agent that woke after its deadline: nobody took over, so it keeps its epoch.
    first = coord.acquire_or_renew("n1", TTL)
    assert first is not None
    clock.advance(TTL + 5)
    renewed = coord.renew_epoch("n1", first.epoch, TTL)
    assert renewed == Lease.as_read("n1", first.epoch, clock.now + TTL, clock.now)
    assert coord.current_lease() == renewed
    assert coord.acquire_or_renew("n2", TTL) is None  # valid again


def test_renew_epoch_fails_once_another_epoch_or_nothing_is_stored(
    coord: SqliteCoordinator, clock: FakeClock
) -> None:
    first = coord.acquire_or_renew("n1", TTL)
    assert first is not None
    clock.advance(TTL + 1)
    taken = coord.acquire_or_renew("n2", TTL)  # a takeover while n1 was frozen
    assert taken is not None and taken.epoch == first.epoch + 1
    assert coord.renew_epoch("n1", first.epoch, TTL) is None
    assert coord.renew_epoch("n2", first.epoch, TTL) is None  # the right holder, old epoch
    assert coord.current_lease() == taken
    assert coord.release("n2", taken.epoch)
    assert coord.renew_epoch("n2", taken.epoch, TTL) is None  # released: gone for good
    assert coord.current_lease() is None
