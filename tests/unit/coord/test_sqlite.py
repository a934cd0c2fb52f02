"""SqliteCoordinator's own workings on a real SQLite file: the lease rule, the bounded
history, processes, errors, WAL, locking, migrations and the change token. What every
backend must do is tested in test_contract.py."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hakit.coord.base import Lease, NodeRecord, SupportsChangeToken
from hakit.coord.sqlite import SCHEMA_VERSION, SqliteCoordinator, next_lease
from hakit.errors import CoordinationError, HakitError
from tests.unit.coord.test_contract import FakeClock, event

TTL = 10.0


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


# --- event history ----------------------------------------------------------------


def test_event_history_is_bounded_to_the_newest(tmp_path: Path) -> None:
    with SqliteCoordinator(tmp_path / "c.db", max_events=5) as store:
        for n in range(12):
            store.append_event(event(n))
        kept = store.events()
        assert [e.id for e in kept] == [8, 9, 10, 11, 12]
        assert [e.data["n"] for e in kept] == [7, 8, 9, 10, 11]
        # Ids keep increasing after old rows are deleted.
        assert store.append_event(event(12)).id == 13


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


def test_a_version_1_store_is_migrated_keeping_its_data(tmp_path: Path) -> None:
    """A store written before cluster_state existed gains the table, and keeps its lease."""
    from hakit.coord.sqlite.schema import _SCHEMA_V1

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


# --- the change token ---------------------------------------------------------------


def test_offers_a_change_token_that_moves_on_writes(tmp_path: Path) -> None:
    path = tmp_path / "coordination.db"
    with SqliteCoordinator(path) as reader, SqliteCoordinator(path) as writer:
        assert isinstance(reader, SupportsChangeToken)
        before = reader.data_version()
        assert before is not None and reader.data_version() == before
        writer.set_state("paused", {"paused": True})
        assert reader.data_version() != before
