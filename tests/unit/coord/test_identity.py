"""The store's identity: a deleted, replaced or older store is refused, never recreated.

Real SQLite files throughout; an injected clock where lease times matter. The
processes-and-restarts side is in tests/integration/coord/test_store_replaced.py.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hakit.config import load_config
from hakit.coord.factory import open_coordinator
from hakit.coord.identity import LEASE_MARGIN, init_store, inspect_store, reinit_store
from hakit.coord.memory import Memory, memory_file, read_memory, write_memory
from hakit.coord.sqlite import SIDE_FILES, SqliteCoordinator, read_identity
from hakit.errors import CoordinationError, StoreReplacedError

TTL = 10.0


class FakeClock:
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
def db(tmp_path: Path) -> Path:
    return tmp_path / "coordination.db"


@pytest.fixture
def opened() -> Iterator[list[SqliteCoordinator]]:
    """Coordinators a test opens; all closed afterwards."""
    stores: list[SqliteCoordinator] = []
    yield stores
    for store in stores:
        store.close()


def _open(opened: list[SqliteCoordinator], path: Path, **kwargs: object) -> SqliteCoordinator:
    store = SqliteCoordinator(path, **kwargs)  # type: ignore[arg-type]
    opened.append(store)
    return store


def _raw_identity(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        found = read_identity(conn)
    finally:
        conn.close()
    assert found is not None
    return found.identity


def _copy(source: Path, destination: Path) -> None:
    """A consistent copy of a live store (SQLite's backup API), as a backup tool makes."""
    src, dst = sqlite3.connect(source), sqlite3.connect(destination)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()


def _epochs(store: SqliteCoordinator, clock: FakeClock, count: int) -> int:
    """Hand out ``count`` new epochs (acquire, release); the last one."""
    epoch = 0
    for _ in range(count):
        lease = store.acquire_or_renew("n1", TTL)
        assert lease is not None
        epoch = lease.epoch
        assert store.release("n1", epoch)
    return epoch


# --- the identity -----------------------------------------------------------------


def test_a_new_store_gets_one_identity_that_every_process_reads(
    db: Path, opened: list[SqliteCoordinator]
) -> None:
    first = _open(opened, db)
    first.last_epoch()
    identity = first.identity
    assert identity is not None and uuid.UUID(identity).version == 4
    second = _open(opened, db, create=False)
    assert second.identity is None  # nothing read yet
    second.nodes()
    assert second.identity == identity == _raw_identity(db)


def test_a_version_2_store_gains_an_identity_and_keeps_its_epochs(
    db: Path, opened: list[SqliteCoordinator]
) -> None:
    from hakit.coord.sqlite.schema import _SCHEMA_V1, _SCHEMA_V2

    raw = sqlite3.connect(db, isolation_level=None)
    for statement in _SCHEMA_V1 + _SCHEMA_V2:
        raw.execute(statement)
    raw.execute("UPDATE epoch_counter SET last_epoch = 7")
    raw.close()
    store = _open(opened, db, create=False)  # upgrading is not creating
    assert store.last_epoch() == 7
    assert store.identity is not None and store.identity == _raw_identity(db)
    assert store.highest_epoch == 7


# --- (a) a deleted file ---------------------------------------------------------


@pytest.mark.parametrize("call", ["acquire", "read"])
def test_a_deleted_store_is_refused_at_the_next_call_and_not_recreated(
    db: Path, opened: list[SqliteCoordinator], clock: FakeClock, call: str
) -> None:
    store = _open(opened, db, clock=clock, config="/etc/hakit.toml")
    lease = store.acquire_or_renew("n1", TTL)
    assert lease is not None
    identity = store.identity
    db.unlink()

    with pytest.raises(StoreReplacedError) as caught:
        if call == "acquire":
            store.acquire_or_renew("n1", TTL)
        else:
            store.current_lease()
    message = str(caught.value)
    assert f"the coordination store at {db} was replaced or went back in time" in message
    assert f"the file is gone; this process saw identity {identity} up to epoch 1" in message
    assert "`hakit init --reinit -c /etc/hakit.toml`" in message
    assert "epochs continue above 1" in message
    assert "reconnect by themselves" in message
    assert isinstance(caught.value, CoordinationError)
    assert not db.exists()
    # Every later call checks again, and still neither creates nor uses anything.
    with pytest.raises(StoreReplacedError):
        store.acquire_or_renew("n1", TTL)
    assert not db.exists()


def test_a_creator_refuses_to_create_beside_the_leftovers_of_a_deleted_store(
    db: Path, opened: list[SqliteCoordinator]
) -> None:
    running = _open(opened, db)
    assert running.acquire_or_renew("n1", TTL) is not None  # in WAL mode: -wal and -shm exist
    db.unlink()  # deleted under a running process: its -wal and -shm stay
    assert any(Path(f"{db}{s}").exists() for s in SIDE_FILES)
    newcomer = _open(opened, db)  # never saw an identity, may create
    with pytest.raises(CoordinationError, match="deleted while processes used it") as caught:
        newcomer.acquire_or_renew("n2", TTL)
    assert "hakit init --reinit" in str(caught.value)
    assert not db.exists()


# --- (b) replaced by another store ------------------------------------------------


def test_a_store_replaced_by_a_fresh_one_is_refused_and_left_untouched(
    tmp_path: Path, db: Path, opened: list[SqliteCoordinator], clock: FakeClock
) -> None:
    store = _open(opened, db, clock=clock)
    assert store.acquire_or_renew("n1", TTL) is not None
    remembered = store.identity
    other_path = tmp_path / "other.db"
    other = _open(opened, other_path)
    other.last_epoch()
    other.close()
    other_identity = _raw_identity(other_path)
    os.replace(other_path, db)  # a fresh store moved over the running one

    with pytest.raises(StoreReplacedError) as caught:
        store.acquire_or_renew("n1", TTL)
    assert f"identity {other_identity}, last epoch 0" in str(caught.value)
    assert f"this process saw identity {remembered} up to epoch 1" in str(caught.value)
    assert store.identity == remembered
    with pytest.raises(StoreReplacedError):
        store.current_lease()
    raw = sqlite3.connect(db)
    try:
        assert raw.execute("SELECT COUNT(*) FROM lease").fetchone()[0] == 0  # nothing granted
    finally:
        raw.close()


def test_an_empty_file_in_place_of_the_store_is_refused_and_stays_empty(
    db: Path, opened: list[SqliteCoordinator]
) -> None:
    store = _open(opened, db)
    store.last_epoch()
    db.unlink()
    db.touch()
    with pytest.raises(StoreReplacedError, match="a store without an identity"):
        store.acquire_or_renew("n1", TTL)
    assert db.stat().st_size == 0


def test_a_write_during_which_the_file_is_replaced_is_rolled_back(
    tmp_path: Path, db: Path, opened: list[SqliteCoordinator]
) -> None:
    replacement = tmp_path / "replacement.db"
    aside = tmp_path / "old.db"
    swap = {"now": False}

    def clock() -> float:  # read inside the write transaction
        if swap["now"]:
            swap["now"] = False
            os.rename(db, aside)
            os.rename(replacement, db)
        return 1_000_000.0

    store = _open(opened, db, clock=clock)
    store.last_epoch()
    _copy(db, replacement)  # the same store, so only the swap itself is refused
    swap["now"] = True
    with pytest.raises(StoreReplacedError, match="replaced while this process tried to acquire"):
        store.acquire_or_renew("n1", TTL)
    raw = sqlite3.connect(aside)
    try:
        assert raw.execute("SELECT COUNT(*) FROM lease").fetchone()[0] == 0  # rolled back
    finally:
        raw.close()
    # The copy at the path is the same store: the next call uses it.
    lease = store.acquire_or_renew("n1", TTL)
    assert lease is not None and lease.epoch == 1


# --- (c) an older copy ------------------------------------------------------------


def test_an_older_copy_of_the_store_is_refused_as_going_back_in_time(
    tmp_path: Path, db: Path, opened: list[SqliteCoordinator], clock: FakeClock
) -> None:
    store = _open(opened, db, clock=clock)
    _epochs(store, clock, 1)
    backup = tmp_path / "backup.db"
    _copy(db, backup)  # last epoch 1
    assert _epochs(store, clock, 2) == 3
    identity = store.identity
    os.replace(backup, db)  # an admin restores yesterday's backup

    with pytest.raises(StoreReplacedError) as caught:
        store.acquire_or_renew("n1", TTL)
    assert (
        f"(identity {identity}, last epoch 1; this process saw identity {identity} up to epoch 3)"
        in str(caught.value)
    )
    raw = sqlite3.connect(db)
    try:
        assert raw.execute("SELECT last_epoch FROM epoch_counter").fetchone()[0] == 1
    finally:
        raw.close()


def test_a_restored_copy_that_is_not_older_is_used_again_without_a_restart(
    tmp_path: Path, db: Path, opened: list[SqliteCoordinator], clock: FakeClock
) -> None:
    store = _open(opened, db, clock=clock)
    assert _epochs(store, clock, 2) == 2
    backup = tmp_path / "backup.db"
    _copy(db, backup)
    db.unlink()
    with pytest.raises(StoreReplacedError):
        store.current_lease()
    os.replace(backup, db)  # the lost store is back
    lease = store.acquire_or_renew("n1", TTL)
    assert lease is not None and lease.epoch == 3


# --- (d) hakit init --reinit -------------------------------------------------------


def test_after_reinit_coordinators_reconnect_and_epochs_continue_above_all_seen(
    tmp_path: Path, db: Path, opened: list[SqliteCoordinator], clock: FakeClock
) -> None:
    memories = tmp_path / "memory"
    agent = _open(opened, db, clock=clock, memory_path=memories / "n1.json")
    router = _open(opened, db, clock=clock, create=False)  # in-process memory only
    assert _epochs(agent, clock, 4) == 4
    lease = agent.acquire_or_renew("n1", TTL)
    assert lease is not None and lease.epoch == 5
    assert router.current_lease() == lease
    old_identity = agent.identity
    assert read_memory(memories / "n1.json") == Memory(str(old_identity), 5)
    db.unlink()
    for store in (agent, router):
        with pytest.raises(StoreReplacedError):
            store.current_lease()

    result = reinit_store(db, memories, lease_ttl=TTL, clock=clock)

    assert result.store.lineage == (old_identity,)
    assert result.store.last_epoch == 5
    assert result.store.leases_from == clock.now + TTL + LEASE_MARGIN
    assert any("epochs continue above 5" in line for line in result.lines())
    # Both reconnect by themselves, and adopt the new identity.
    assert agent.current_lease() is None and router.current_lease() is None
    assert agent.identity == router.identity == result.store.identity != old_identity
    assert read_memory(memories / "n1.json") == Memory(
        result.store.identity, 5, (str(old_identity),)
    )
    # The old holder cannot renew in the new store; nobody gets a lease for one TTL.
    assert agent.renew_epoch("n1", 5, TTL) is None
    assert agent.acquire_or_renew("n2", TTL) is None
    with pytest.raises(CoordinationError, match="grants no lease before"):
        agent.take_over("n2", TTL)
    clock.advance(TTL + LEASE_MARGIN)
    taken = agent.acquire_or_renew("n2", TTL)
    assert taken is not None and taken.epoch == 6
    assert router.current_lease() == taken


def test_reinit_starts_above_min_epoch_and_a_process_that_saw_more_refuses_it(
    tmp_path: Path, db: Path, opened: list[SqliteCoordinator], clock: FakeClock
) -> None:
    memories = tmp_path / "memory"
    router = _open(opened, db, clock=clock, create=False)
    agent = _open(opened, db, clock=clock, memory_path=memories / "n1.json")
    agent.last_epoch()
    writer = _open(opened, db, clock=clock)  # a process without memory hands out epoch 1..3
    assert _epochs(writer, clock, 3) == 3
    assert router.current_lease() is None and router.last_epoch() == 3  # the router saw 3
    db.unlink()
    assert read_memory(memories / "n1.json") == Memory(str(agent.identity), 0)

    reinit_store(db, memories, lease_ttl=TTL, clock=clock)  # the memories say 0
    with pytest.raises(StoreReplacedError, match="up to epoch 3"):
        router.current_lease()
    assert agent.current_lease() is None  # the agent saw no more than 0

    # The operator runs it again with --min-epoch (forced: every memory trusts the store).
    result = reinit_store(db, memories, lease_ttl=TTL, min_epoch=3, clock=clock, force=True)
    assert result.store.last_epoch == 3
    assert str(router.identity) in result.store.lineage  # through the agent's memory
    assert router.current_lease() is None and agent.current_lease() is None
    clock.advance(TTL + LEASE_MARGIN)
    lease = router.acquire_or_renew("n1", TTL)
    assert lease is not None and lease.epoch == 4


def test_reinit_moves_a_damaged_file_aside_and_never_deletes_it(
    tmp_path: Path, db: Path, opened: list[SqliteCoordinator], clock: FakeClock
) -> None:
    memories = tmp_path / "memory"
    holder = _open(opened, db, clock=clock, memory_path=memories / "n1.json")
    assert holder.acquire_or_renew("n1", TTL) is not None
    old_identity = holder.identity
    holder.close()  # the last connection: the -wal is checkpointed and removed
    db.write_bytes(b"garbage " * 1000)  # then the file is damaged in place

    result = reinit_store(db, memories, lease_ttl=TTL, clock=clock)

    assert "not a readable hakit store" in result.replaced.description
    (aside,) = result.moved_aside
    assert aside.parent == tmp_path and aside.name.startswith("coordination.db.replaced-")
    assert aside.read_bytes() == b"garbage " * 1000
    assert inspect_store(db).identity == result.store
    assert result.store.lineage == (old_identity,) and result.store.last_epoch == 1
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert not any(Path(f"{db}{s}").exists() for s in SIDE_FILES)  # a complete file, alone
    assert holder.acquire_or_renew("n1", TTL) is None  # accepted; no lease for one TTL


def test_reinit_moves_the_side_files_of_a_deleted_store_aside(
    tmp_path: Path, db: Path, opened: list[SqliteCoordinator], clock: FakeClock
) -> None:
    memories = tmp_path / "memory"
    holder = _open(opened, db, clock=clock, memory_path=memories / "n1.json")
    assert holder.acquire_or_renew("n1", TTL) is not None
    wal = Path(f"{db}-wal").read_bytes()
    db.unlink()  # deleted while in use: its -wal and -shm stay at the path

    result = reinit_store(db, memories, lease_ttl=TTL, clock=clock)

    assert not result.replaced.exists
    names = sorted(p.name for p in result.moved_aside)
    assert len(names) == 2 and names[0].startswith("coordination.db.replaced-")
    assert [n[-4:] for n in names] == ["-shm", "-wal"]
    assert (tmp_path / names[1]).read_bytes() == wal  # kept, not deleted
    # The holder reconnects to the new store, which does not have the old -wal in it.
    assert holder.current_lease() is None
    assert holder.identity == result.store.identity
    assert holder.last_epoch() == 1


def test_a_process_that_sees_the_store_replaced_moves_its_old_side_files_aside(
    tmp_path: Path, db: Path, opened: list[SqliteCoordinator], clock: FakeClock
) -> None:
    store = _open(opened, db, clock=clock)
    assert store.acquire_or_renew("n1", TTL) is not None
    old_wal = file_id_of(Path(f"{db}-wal"))
    backup = tmp_path / "backup.db"
    _copy(db, backup)
    os.replace(backup, db)  # moved over the store in use: the old -wal is at the path

    lease = store.acquire_or_renew("n1", TTL)  # the same store, same epoch: used again

    assert lease is not None and lease.epoch == 1
    stale = sorted(p.name for p in tmp_path.glob("coordination.db.stale-*"))
    assert len(stale) == 2 and stale[1].endswith("-wal")
    assert file_id_of(tmp_path / stale[1]) == old_wal
    assert file_id_of(Path(f"{db}-wal")) != old_wal  # the new file has its own


def test_a_new_process_refuses_a_file_paired_with_another_stores_side_files(
    tmp_path: Path, db: Path, opened: list[SqliteCoordinator]
) -> None:
    running = _open(opened, db)
    assert running.acquire_or_renew("n1", TTL) is not None  # its -wal and -shm are in use
    other_path = tmp_path / "other.db"
    other = _open(opened, other_path)
    other.last_epoch()
    other.close()
    other_identity = _raw_identity(other_path)
    os.replace(other_path, db)  # moved over the store in use, beside its -wal and -shm
    content = db.read_bytes()

    newcomer = _open(opened, db)  # a process started now: it never had a connection
    with pytest.raises(CoordinationError, match="belong to another store") as caught:
        newcomer.nodes()
    assert f"identity {other_identity} in the file" in str(caught.value)
    assert f"move {db}-wal and {db}-shm aside" in str(caught.value)
    assert db.read_bytes() == content  # nothing of the other -wal was written into it


def file_id_of(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino


def test_reinit_refuses_a_healthy_store_unless_forced(
    tmp_path: Path, db: Path, opened: list[SqliteCoordinator], clock: FakeClock
) -> None:
    memories = tmp_path / "memory"
    agent = _open(opened, db, clock=clock, memory_path=memories / "n1.json")
    assert agent.acquire_or_renew("n1", TTL) is not None
    with pytest.raises(CoordinationError, match=r"is healthy .* Add --force"):
        reinit_store(db, memories, lease_ttl=TTL, clock=clock)
    assert agent.acquire_or_renew("n1", TTL) is not None  # untouched
    result = reinit_store(db, memories, lease_ttl=TTL, clock=clock, force=True)
    assert len(result.moved_aside) >= 1
    assert agent.renew_epoch("n1", 1, TTL) is None  # the forced store has no lease for it
    assert agent.identity == result.store.identity


def test_reinit_pushes_leases_from_when_building_the_store_took_long(
    tmp_path: Path, db: Path
) -> None:
    times = iter([1_000_000.0, 1_000_060.0])  # a minute between the start and the install
    result = reinit_store(db, tmp_path / "memory", lease_ttl=TTL, clock=lambda: next(times))
    assert result.store.leases_from == 1_000_060.0 + TTL
    assert inspect_store(db).identity == result.store


def test_reinit_refuses_a_damaged_memory_file(tmp_path: Path, db: Path) -> None:
    memories = tmp_path / "memory"
    memories.mkdir()
    (memories / "n1.json").write_text('{"identity": "x"}')
    with pytest.raises(CoordinationError, match=r"n1.json is damaged .*--min-epoch"):
        reinit_store(db, memories, lease_ttl=TTL)
    assert not db.exists()


# --- hakit init ---------------------------------------------------------------------


def test_init_creates_a_store_with_a_new_identity_and_refuses_to_replace_it(
    tmp_path: Path, db: Path, opened: list[SqliteCoordinator]
) -> None:
    result = init_store(db, tmp_path / "memory")
    assert uuid.UUID(result.store.identity).version == 4
    assert result.store.lineage == () and result.store.leases_from == 0
    store = _open(opened, db, create=False)
    assert store.acquire_or_renew("n1", TTL) is not None
    assert store.identity == result.store.identity
    events = store.events()
    assert [e.kind for e in events] == ["store"] and result.store.identity in events[0].reason
    with pytest.raises(CoordinationError, match=r"already exists .* it is kept.*--reinit"):
        init_store(db, tmp_path / "memory")


def test_init_refuses_when_nodes_remember_a_lost_store(tmp_path: Path, db: Path) -> None:
    memories = tmp_path / "memory"
    write_memory(memories / "n1.json", Memory("11111111-1111-4111-8111-111111111111", 9))
    with pytest.raises(CoordinationError, match=r"nodes remember one .* continue above 9"):
        init_store(db, memories)
    assert not db.exists()


# --- (e) memory across restarts -----------------------------------------------------


def test_a_restarted_agent_refuses_a_missing_or_fresh_store(
    tmp_path: Path, db: Path, opened: list[SqliteCoordinator], clock: FakeClock
) -> None:
    memory = tmp_path / "memory" / "n1.json"
    first = _open(opened, db, clock=clock, memory_path=memory)  # the first agent creates it
    assert _epochs(first, clock, 2) == 2
    identity = first.identity
    first.close()  # the agent stops
    db.unlink()
    for name in SIDE_FILES:
        Path(f"{db}{name}").unlink(missing_ok=True)  # a clean loss: nothing left beside it

    restarted = _open(opened, db, clock=clock, memory_path=memory)
    with pytest.raises(StoreReplacedError, match=f"saw identity {identity} up to epoch 2"):
        restarted.acquire_or_renew("n1", TTL)
    assert not db.exists()

    fresh = _open(opened, db, clock=clock)  # a process without memory creates a fresh store
    assert fresh.acquire_or_renew("n9", TTL) is not None
    with pytest.raises(StoreReplacedError, match="last epoch 1; this process saw"):
        restarted.acquire_or_renew("n1", TTL)
    assert read_memory(memory) == Memory(str(identity), 2)  # the memory is not overwritten


def test_a_damaged_memory_file_is_an_error_not_a_blank_memory(
    tmp_path: Path, db: Path, opened: list[SqliteCoordinator]
) -> None:
    memory = tmp_path / "memory" / "n1.json"
    memory.parent.mkdir()
    memory.write_text("{not json")
    store = _open(opened, db, memory_path=memory)
    with pytest.raises(CoordinationError, match=r"store memory .* is damaged"):
        store.acquire_or_renew("n1", TTL)
    assert not db.exists()


def test_the_memory_never_goes_back(tmp_path: Path) -> None:
    path = tmp_path / "memory" / "n1.json"
    identity = "22222222-2222-4222-8222-222222222222"
    write_memory(path, Memory(identity, 7))
    assert write_memory(path, Memory(identity, 3)) == Memory(identity, 7)
    assert read_memory(path) == Memory(identity, 7)
    assert write_memory(path, Memory("other", 1)) == Memory("other", 1)  # a new store
    assert json.loads(path.read_text())["epoch"] == 1


def test_quick_data_version_does_not_use_a_replaced_file(
    tmp_path: Path, db: Path, opened: list[SqliteCoordinator]
) -> None:
    store = _open(opened, db)
    assert store.data_version() is not None
    assert store.data_version(wait=False) is not None
    db.unlink()
    assert store.data_version(wait=False) is None  # from the event loop: no answer
    with pytest.raises(StoreReplacedError):
        store.data_version()  # the waiting call says why


# --- (f) modes --------------------------------------------------------------------------


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "hakit.toml"
    path.write_text(
        """
[cluster]
state_dir = "state"

[app]
start = "true"
home = "home"
database_url = "sqlite:///app.db"

[[nodes]]
name = "n1"
port = 18001

[[nodes]]
name = "n2"
port = 18002
"""
    )
    return path


def test_state_directory_is_0700_and_store_and_memory_files_0600(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path))
    old_umask = os.umask(0o022)  # the usual umask: files would be 0644, directories 0755
    try:
        store = open_coordinator(cfg, node="n1")
        try:
            assert store.acquire_or_renew("n1", TTL) is not None
            state = cfg.cluster.state_dir
            assert stat.S_IMODE(state.stat().st_mode) == 0o700
            assert stat.S_IMODE((state / "memory").stat().st_mode) == 0o700
            for path in (
                cfg.coordination_path,
                *(Path(f"{cfg.coordination_path}{s}") for s in SIDE_FILES),
            ):
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
            memory = memory_file(state, "n1")
            assert stat.S_IMODE(memory.stat().st_mode) == 0o600
            assert read_memory(memory) == Memory(str(store.identity), 1)  # type: ignore[attr-defined]
        finally:
            store.close()
    finally:
        os.umask(old_umask)
